"""The paper's comparison: every method for every seed, then Table 1 and the figures.

Runs live in ``OUT/<method>-seed<seed>/``. A run whose ``summary.json`` exists
with the same configuration is reused; one that stopped part-way is resumed from
its ``last.pt``; a run directory holding a different configuration is an error
rather than being overwritten. With ``final_tta_zoom``, each run's final weights are
scored once more, with more test-time views than its per-epoch validation used, into
``final-evaluation.json`` (right after the run, while its checkpoint is on this machine);
with ``final_bn_recalibrate`` also with BatchNorm statistics re-estimated on clean batches
first, into ``final-evaluation-bnrecal.json``: what is left of a noisy method's difference
once the statistics of its noisy steps are gone.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from fernoise.checkpoint import load_checkpoint
from fernoise.config import METHODS, PAPER_METHODS, SPEED_ONLY, ConfigError, TrainConfig, config_changes, resolve_config
from fernoise.evaluate import score_checkpoint, write_evaluation
from fernoise.io import PathLike
from fernoise.reports import describe_runs, format_duration, write_report
from fernoise.runfiles import FINAL_BN_EVALUATION_FILE, FINAL_EVALUATION_FILE
from fernoise.runs import load_runs
from fernoise.train import TrainingError, prepare_data, train
from fernoise.views import Views


@dataclass(frozen=True)
class FinalScoring:
    """How :func:`score_final_model` scores each final model again: the run's flip and shift views plus
    ``zoom``; with ``bn_recalibrate`` a second time with BatchNorm re-estimated on that many clean batches."""

    zoom: float = 0.0
    bn_recalibrate: int = 0

    @classmethod
    def asked(cls, zoom: Optional[float], bn_recalibrate: int) -> Optional[FinalScoring]:
        """From ``reproduce``'s options: None when neither asks for a second scoring."""
        if zoom is not None and not 0 <= zoom < 1:
            raise ConfigError(f"--final-tta-zoom must be in [0, 1), got {zoom}")
        if bn_recalibrate < 0:
            raise ConfigError(f"--final-bn-recalibrate must be a number of batches >= 0, got {bn_recalibrate}")
        return cls(zoom or 0.0, bn_recalibrate) if zoom is not None or bn_recalibrate else None


def run_name(method: str, seed: int) -> str:
    return f"{method}-seed{seed}"


def _finished(run_dir: Path, cfg: TrainConfig) -> bool:
    if not (run_dir / "summary.json").is_file():
        return False
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    if config_changes(saved, cfg, ignore=SPEED_ONLY):
        raise TrainingError(
            f"{run_dir} holds a finished run with another configuration; remove it or choose another --out"
        )
    return True


def reproduce(
    out: PathLike,
    *,
    data: str = "synthetic",
    methods: Sequence[str] = PAPER_METHODS,
    seeds: int = 3,
    config_file: Optional[PathLike] = None,
    overrides: Optional[dict[str, Any]] = None,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    command: Optional[str] = None,
    jobs: int = 1,
    final_tta_zoom: Optional[float] = None,
    final_bn_recalibrate: int = 0,
) -> Path:
    """Train (or reuse) every method x seed and write the report; return ``report.md``'s path.

    ``final_tta_zoom``: after each run, :func:`score_final_model` with zoomed views of this fraction
    (0: the run's own flip and shift views only); None: no second scoring. ``final_bn_recalibrate``:
    also score it with BatchNorm re-estimated on this many clean batches (with it, the zoom defaults to 0).

    ``jobs > 1`` trains that many runs at once, each in its own process: on a GPU the
    runs share it (a small model at batch 64 leaves most of an H100 idle), on the CPU
    the cores are split between them. Every run is seeded on its own, so the results
    do not depend on ``jobs`` (on the CPU up to rounding, as the thread count changes).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    final = FinalScoring.asked(final_tta_zoom, final_bn_recalibrate)
    out = Path(out)
    run_dirs, todo = [], []
    for seed in range(seeds):
        for method in methods:
            cfg = resolve_config(config_file, **{**(overrides or {}), "data": data, "method": method, "seed": seed})
            run_dir = out / run_name(method, seed)
            run_dirs.append(run_dir)
            if _finished(run_dir, cfg):
                log(f"[{run_dir.name}] finished earlier, reused")
                if final is not None:
                    score_final_model(cfg, run_dir, final, quiet, log)
            else:
                todo.append((cfg, run_dir))
    if jobs == 1 or len(todo) <= 1:
        clock = _GridClock(todo, log)
        for cfg, run_dir in todo:
            ensure_run(cfg, run_dir, quiet, log, on_epoch=clock.epoch_done, final=final)
    else:
        # Decode the data once here rather than in every worker at the same moment.
        prepare_data(todo[0][0], progress=not quiet)
        _train_concurrently(todo, jobs, quiet, log, final)
    runs = load_runs(run_dirs)
    command = command or "fernoise " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return write_report(runs, out, command=command, data_description=describe_runs(runs))


def ensure_run(cfg: TrainConfig, run_dir: Path, quiet: bool, log: Callable[[str], None],
               on_epoch: Optional[Callable[[dict[str, Any]], None]] = None,
               final: Optional[FinalScoring] = None) -> None:
    """Reuse the finished run in ``run_dir``, resume it from ``last.pt``, or train it from the start;
    then, with ``final``, :func:`score_final_model`."""
    if not _finished(run_dir, cfg):
        resume = (run_dir / "checkpoints" / "last.pt").is_file()
        log(f"[{run_dir.name}] {'resuming' if resume else 'training'}")
        train(cfg, run_dir, resume=resume, quiet=quiet, log=lambda msg: log(f"[{run_dir.name}] {msg}"),
              on_epoch=on_epoch)
    if final is not None:
        score_final_model(cfg, run_dir, final, quiet, log)


def score_final_model(cfg: TrainConfig, run_dir: Path, final: FinalScoring, quiet: bool,
                      log: Callable[[str], None]) -> None:
    """Score a finished run's final weights (``checkpoints/last.pt``) on its whole validation split with
    the run's flip and shift views plus zoomed ones (``final.zoom``), BatchNorm re-estimated as the run's
    own validation did, into ``final-evaluation.json``; with ``final.bn_recalibrate`` (and a run that
    did not re-estimate already) again with BatchNorm re-estimated on that many clean train batches,
    into ``final-evaluation-bnrecal.json``.

    A file that already holds these views and re-estimation is kept; a run whose checkpoint is not on
    this machine (its small files came from another) is named in the log and left unscored.
    """
    views = replace(Views.of(cfg), zoom=final.zoom)
    wanted = {FINAL_EVALUATION_FILE: cfg.bn_recalibrate}
    if final.bn_recalibrate and not cfg.bn_recalibrate:
        wanted[FINAL_BN_EVALUATION_FILE] = final.bn_recalibrate
    todo = {name: batches for name, batches in wanted.items() if not _scored(run_dir / name, views, batches)}
    if not todo:
        return
    checkpoint_path = run_dir / "checkpoints" / "last.pt"
    if not checkpoint_path.is_file():
        log(f"[{run_dir.name}] {checkpoint_path} is not here: its final model is not scored")
        return
    checkpoint, packed = load_checkpoint(checkpoint_path), prepare_data(cfg, progress=not quiet).packed
    for name, batches in todo.items():
        scores = score_checkpoint(checkpoint, checkpoint_path, packed, cfg.data, "val", device=cfg.device,
                                  batch_size=cfg.eval_batch_size, views=views, bn_recalibrate=batches)
        write_evaluation(scores, run_dir / name, None)
        how = views.words() + (f", BatchNorm re-estimated on {batches} batches" if batches else "")
        log(f"[{run_dir.name}] final model ({how}): accuracy {scores['accuracy']:.4f}, "
            f"macro-F1 {scores['macro_f1']:.4f} -> {run_dir / name}")


def _scored(path: Path, views: Views, batches: int) -> bool:
    """Whether ``path`` already holds a scoring with these views and BatchNorm re-estimation (files
    from before ``bn_recalibrate`` was recorded were scored as their run's validation was)."""
    try:
        scores = json.loads(path.read_text(encoding="utf-8"))
        return scores.get("views") == views.record() and scores.get("bn_recalibrate", batches) == batches
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False  # absent or unreadable: scored (again)


class _GridClock:
    """After every epoch, how much of the grid is done and about how long the rest will take."""

    def __init__(self, todo: Sequence[tuple[TrainConfig, Path]], log: Callable[[str], None]) -> None:
        self.log = log
        self.left = sum(cfg.epochs - _epochs_done(run_dir) for cfg, run_dir in todo)
        self.total, self.done = self.left, 0
        self.start = time.monotonic()

    def epoch_done(self, row: dict[str, Any]) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.start
        rest = elapsed / self.done * (self.total - self.done)
        self.log(f"[grid] {self.done}/{self.total} epochs in {format_duration(elapsed)}, "
                 f"about {format_duration(rest)} left")


def _epochs_done(run_dir: Path) -> int:
    try:
        with open(run_dir / "metrics.csv", newline="") as handle:
            return sum(1 for _ in handle) - 1
    except FileNotFoundError:
        return 0



def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _worker(cfg_dict: dict[str, Any], run_dir: str, gpu: Optional[int], final: Optional[FinalScoring]) -> None:
    import torch

    if gpu is not None:
        torch.cuda.set_device(gpu)
    ensure_run(TrainConfig(**cfg_dict), Path(run_dir), True, lambda msg: print(msg, flush=True), final=final)


def _gpus_for(configs: Sequence[TrainConfig]) -> list[Optional[int]]:
    """The GPU each run trains on, the runs spread over the GPUs in turn; None for a run on the CPU."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    on_cuda = [gpus > 0 and cfg.device != "cpu" for cfg in configs]
    return [sum(on_cuda[:i]) % gpus if cuda else None for i, cuda in enumerate(on_cuda)]


def _stop_workers(workers: Sequence[Any], run_dirs: Sequence[Path]) -> None:
    """Terminate these worker processes (only them: the caller may have children of its own) and
    remove the temporary files of the writes they were killed in (``.last.pt.*.tmp``)."""
    for process in workers:
        process.terminate()
    for process in workers:
        process.join(timeout=30)
    for run_dir in run_dirs:
        for leftover in run_dir.rglob(".*.tmp"):
            leftover.unlink(missing_ok=True)


def _train_concurrently(todo: list[tuple[TrainConfig, Path]], jobs: int, quiet: bool,
                        log: Callable[[str], None], final: Optional[FinalScoring] = None) -> None:
    """Train the runs in ``jobs`` worker processes; a failed run does not stop the others."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    gpu_of = _gpus_for([cfg for cfg, _ in todo])
    gpus = len({gpu for gpu in gpu_of if gpu is not None})
    threads = max(1, (os.cpu_count() or 1) // jobs)
    log(f"training {len(todo)} runs, {jobs} at a time ({threads} CPU thread(s) each"
        f"{f', on {gpus} GPU(s)' if gpus else ''})")
    failures = []
    # spawn: CUDA cannot be used in forked children, and it keeps the workers independent of the parent.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init, initargs=(threads,)) as pool:
        futures = {
            pool.submit(_worker, cfg.to_dict(), str(run_dir), gpu, final): run_dir
            for (cfg, run_dir), gpu in zip(todo, gpu_of)
        }
        progress = None
        if not quiet:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(futures), desc="runs", unit="run", dynamic_ncols=True)
        try:
            for future in as_completed(futures):
                if future.exception() is not None:
                    failures.append(f"{futures[future].name}: {future.exception()}")
                    log(f"[{futures[future].name}] failed: {future.exception()}")
                if progress is not None:
                    progress.update()
        except BaseException:
            # Ctrl-C or SIGTERM: stop the workers now rather than waiting for their runs to end;
            # each run's last.pt (written atomically) is where the next reproduce resumes. The pool
            # names its processes only in a private attribute (Python 3.14 adds terminate_workers).
            workers = list((pool._processes or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            _stop_workers(workers, [run_dir for _, run_dir in todo])
            raise
        finally:
            if progress is not None:
                progress.close()
    if failures:
        raise TrainingError(f"{len(failures)} of {len(todo)} runs failed (the others finished): " + "; ".join(failures))
