"""The training loop: one run of one method on one data set.

``train(config, out_dir)`` reads the data, builds the model with its noise,
trains for ``config.epochs`` epochs and leaves in ``out_dir``: ``config.yaml``,
``metrics.csv`` (a row per epoch), TensorBoard events, ``checkpoints/last.pt``
and ``checkpoints/best.pt`` (best validation macro-F1) and ``summary.json``.
Checkpoints are written at the end of every epoch; ``resume=True`` continues
from ``last.pt`` and, on the CPU, reproduces the uninterrupted run exactly.

Read it from :func:`_train_locked`: everything a run holds is one :class:`_Run`,
set up by :func:`_start` and, when resuming, loaded by :func:`_resume`; then every
epoch trains (:func:`_train_epoch`), evaluates (:func:`_evaluate`), records
(:func:`_record`) and, on rank 0, writes its files (:func:`_write_epoch`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch import nn

from fernoise.batchnorm import recalibrate_on_images
from fernoise.checkpoint import CheckpointError, inference_checkpoint, load_checkpoint, model_from_checkpoint, save_checkpoint
from fernoise.config import SPEED_ONLY, TrainConfig, config_changes
from fernoise.data import (
    Augmenter, PackedData, class_weights, fits_on_device, iterate_batches, load_data, num_batches, to_device,
)
from fernoise.data.classes import DataError
from fernoise.distributed import DeviceError, Distributed, init_distributed
from fernoise.evaluate import evaluate_arrays
from fernoise.io import PathLike, RunLock, write_text_atomic
from fernoise.models import build_model
from fernoise.noise import NoiseController, PeriodicSchedule, autorelu_weight
from fernoise.runfiles import METRIC_COLUMNS, METRICS_FILE, TRACE_FILE, trace_rows_before, write_metrics, write_trace
from fernoise.epoch import EpochStats, Progress, TrainingError
from fernoise.optim import (STEPWISE_SCHEDULERS, build_autorelu_adam, build_optimizer, build_scheduler, fit_schedule,
                             weight_average)
from fernoise.step import TrainStep, resolve_precision
from fernoise.views import Views

CHECK_EVERY = 10  # steps between host syncs for the progress bar and the NaN check
LAST_PT = Path("checkpoints", "last.pt")  # complete, for resuming
BEST_PT = Path("checkpoints", "best.pt")  # inference only, the best validation macro-F1


# --------------------------------------------------------------------------- data


@dataclass
class TrainData:
    """The data set and the (possibly subset) training and validation arrays a run uses."""

    packed: PackedData
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray


def _subset(images: np.ndarray, labels: np.ndarray, limit: Optional[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random subset (for quick runs); the data seed, not the training seed, picks it."""
    if limit is None or limit >= len(labels):
        return images, labels
    keep = np.sort(np.random.default_rng(seed).permutation(len(labels))[:limit])
    return images[keep], labels[keep]


def prepare_data(cfg: TrainConfig, progress: bool = True) -> TrainData:
    packed = load_data(
        cfg.data,
        size=cfg.image_size,
        channels=cfg.channels,
        cache_dir=cfg.cache_dir,
        format=cfg.data_format,
        val_fraction=cfg.val_fraction,
        progress=progress,
    )
    if "train" not in packed.splits:  # evaluate accepts such a data set; training cannot
        raise DataError(f"{packed.meta.get('source', cfg.data)}: no training images found in the "
                        f"{packed.meta.get('format', '')} layout (it has {', '.join(packed.splits)} only)")
    train, val = packed.splits["train"], packed.splits["val"]
    train_images, train_labels = _subset(train.images, train.labels, cfg.train_limit, seed=1)
    val_images, val_labels = _subset(val.images, val.labels, cfg.val_limit, seed=2)
    return TrainData(packed, train_images, train_labels, val_images, val_labels)


def _place_data(cfg: TrainConfig, data: TrainData, device: torch.device, log: Callable[[str], None]) -> TrainData:
    """Training images in device memory when asked for, or by default on a GPU when they fit."""
    nbytes = data.train_images.nbytes
    wanted = cfg.data_on_device if cfg.data_on_device is not None else device.type == "cuda"
    if not wanted:
        return data
    if not fits_on_device(nbytes, device):
        if cfg.data_on_device:
            raise TrainingError(f"data_on_device: the {nbytes / 2**30:.1f} GiB of training images do not fit "
                                f"in a quarter of {device}'s free memory; set data_on_device: false")
        log(f"training images ({nbytes / 2**30:.1f} GiB) stay in host memory: too large for {device}")
        return data
    images, labels = to_device(data.train_images, data.train_labels, device)
    return dataclasses.replace(data, train_images=images, train_labels=labels)


# --------------------------------------------------------------------------- random streams


def _rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    state = {"loader": generator.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    generator.set_state(state["loader"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def pause_point(phase: str, epoch: int) -> None:
    """Fault injection for tests: with ``FERNOISE_PAUSE_AT=<phase>@<epoch>`` the process writes the
    file named by ``FERNOISE_PAUSE_MARKER`` and stops itself (SIGSTOP) here, to be killed at a known phase."""
    if os.environ.get("FERNOISE_PAUSE_AT") == f"{phase}@{epoch}":
        write_text_atomic(os.environ["FERNOISE_PAUSE_MARKER"], phase)  # the waiting test never reads it half-written
        os.kill(os.getpid(), signal.SIGSTOP)


# --------------------------------------------------------------------------- the run's state


@dataclass
class _Run:
    """Everything one run holds: set up once by :func:`_start`, advanced by every epoch."""

    cfg: TrainConfig
    out: Path
    ddp: Distributed
    device: torch.device
    log: Callable[[str], None]
    quiet: bool
    data: TrainData
    model: nn.Module  # the plain network that trains
    net: nn.Module  # what runs the forward: the model, or its DDP wrapper
    average: Optional[torch.optim.swa_utils.AveragedModel]  # the weight average (ema), when on
    optimizer: torch.optim.Optimizer
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler]
    noise: NoiseController
    augment: Augmenter
    generator: torch.Generator  # the order and augmentation of the training batches
    train_step: TrainStep  # one optimisation step (eager, or a replayed CUDA graph)
    channels_last: bool  # batches in NHWC, as the model (precision auto with bf16, or asked for)
    epoch: int = 0  # the last finished epoch
    best: dict[str, Any] = field(default_factory=lambda: {"val_f1": -1.0, "epoch": 0})
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics.csv
    trace: list[list[Any]] = field(default_factory=list)  # autorelu_trace.csv

    @property
    def last_path(self) -> Path:
        return self.out / LAST_PT

    @property
    def best_path(self) -> Path:
        return self.out / BEST_PT

    @property
    def num_classes(self) -> int:
        return len(self.data.packed.classes)

    @property
    def evaluated(self) -> nn.Module:
        """The network that is evaluated and saved for use: the weight average when on, else the model."""
        return self.average.module if self.average is not None else self.model


def _start(cfg: TrainConfig, out: Path, ddp: Distributed, device: torch.device, quiet: bool,
           log: Callable[[str], None]) -> _Run:
    """A new run: data, model, optimizer, noise and step (in this order, which fixes the random streams)."""
    undriven = cfg.dynamic_without_drive()
    if undriven:
        log(f"warning: dynamic method with {', '.join(undriven)}: nothing but float rounding moves the AutoReLU "
            "weights, so noise may never switch on (autorelu_trace.csv and report.md will tell)")
    torch.manual_seed(cfg.seed)
    if not ddp.is_main:
        ddp.barrier()  # rank 0 builds the cache first
    data = prepare_data(cfg, progress=not quiet)
    if ddp.is_main:
        ddp.barrier()
    packed = data.packed
    if len(data.train_labels) == 0 or len(data.val_labels) == 0:
        raise TrainingError(f"{cfg.data}: the train and val splits must both hold images")
    if cfg.capture and device.type != "cuda":
        raise DeviceError(f"capture: CUDA graphs need a CUDA device, this run is on {device.type}; set capture: false")
    if cfg.capture and ddp.enabled:
        raise TrainingError("capture: not supported under torchrun (DistributedDataParallel); set capture: false")

    precision = resolve_precision(cfg.precision, device)
    channels_last = cfg.channels_last or (cfg.precision == "auto" and precision == "bf16")
    if cfg.precision == "auto":
        log(f"precision auto: {precision}{' with channels_last' if channels_last else ''} on {device.type}")
    model = build_model(**cfg.model_kwargs(len(packed.classes), packed.channels)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = ddp.wrap(model, device)  # converts BatchNorm in place on GPUs; model stays the plain network
    average = weight_average(cfg, model)
    optimizer = build_optimizer(cfg, model, device)
    steps_per_epoch = num_batches(len(data.train_labels), cfg.batch_size // ddp.world_size, world_size=ddp.world_size)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    schedule = PeriodicSchedule(cfg.interval, cfg.interval_unit) if cfg.noise == "periodic" else None
    # The per-step AutoReLU trace cannot be recorded from inside a CUDA graph.
    noise = NoiseController(model, schedule, sync_scope=cfg.autorelu_sync, trace=not cfg.capture,
                            autorelu_adam=build_autorelu_adam(cfg, model))
    augment = Augmenter(cfg.augment, packed.size, packed.channels, packed.mean, packed.std,
                        crop=cfg.train_crop).to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    weights = class_weights(data.train_labels, len(packed.classes)).to(device) if cfg.class_weighted_loss else None
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    train_step = TrainStep(net, optimizer, criterion, noise, precision=precision, capture=cfg.capture,
                           skip_nonfinite=cfg.nonfinite == "skip", reduce=ddp.sum_ if ddp.enabled else None)
    data = _place_data(cfg, data, device, log)
    return _Run(cfg, out, ddp, device, log, quiet, data, model, net, average, optimizer, scheduler, noise, augment,
                generator, train_step, channels_last)


def _resume(run: _Run) -> None:
    """Continue ``run`` after the epoch its ``last.pt`` holds: weights, optimizer, schedules, random streams."""
    try:
        state = load_checkpoint(run.last_path, resume=True)
    except CheckpointError as exc:
        raise TrainingError(f"cannot resume: {exc}") from None
    changed = config_changes(state["config"], run.cfg, ignore=("epochs", *SPEED_ONLY))
    if changed:
        diffs = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise TrainingError(f"cannot resume {run.out} with a different configuration ({diffs})")
    classes = list(run.data.packed.classes)
    if list(state["classes"]) != classes:
        raise TrainingError(
            f"cannot resume {run.out}: its checkpoint has classes {state['classes']} but the data now has {classes}"
        )
    run.model.load_state_dict(state.get("train_state_dict", state["state_dict"]))
    if run.average is not None:
        run.average.module.load_state_dict(state["state_dict"])
        run.average.n_averaged.fill_(state["ema_updates"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scheduler is not None and state.get("scheduler"):
        run.scheduler.load_state_dict(state["scheduler"])
        fit_schedule(run.scheduler, run.optimizer, run.cfg.epochs)
    run.noise.load_state_dict(state["noise"])
    _set_rng_state(state["rng"], run.generator, run.device)
    run.epoch, run.best, run.rows = state["epoch"], state["best"], list(state["metrics"])
    if run.noise.trace is not None:
        run.trace = trace_rows_before(run.out / TRACE_FILE, run.epoch + 1)


def _checkpoint(run: _Run) -> dict[str, Any]:
    """The complete state after ``run.epoch`` (``last.pt``; ``best.pt`` is its inference part)."""
    packed, cfg = run.data.packed, run.cfg
    return {
        "model": cfg.model_kwargs(len(packed.classes), packed.channels),
        "classes": list(packed.classes),
        "input": {"size": packed.size, "channels": packed.channels, "mean": list(packed.mean), "std": list(packed.std)},
        "data": {"source": str(cfg.data), "fingerprint": packed.meta.get("fingerprint")},
        "config": cfg.to_dict(),
        "state_dict": run.evaluated.state_dict(),
        **({"train_state_dict": run.model.state_dict(), "ema_updates": int(run.average.n_averaged)}
           if run.average is not None else {}),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler else None,
        "noise": run.noise.state_dict(),
        "rng": _rng_state(run.generator, run.device),
        "epoch": run.epoch,
        "best": run.best,
        "metrics": run.rows,
    }


# --------------------------------------------------------------------------- the loop


def train(
    cfg: TrainConfig,
    out_dir: PathLike,
    *,
    resume: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    on_epoch: Optional[Callable[[dict[str, Any]], None]] = None,
) -> dict[str, Any]:
    """Train one run; return its summary (also written to ``summary.json``).

    ``on_epoch`` is called with each finished epoch's metrics row. Under torchrun every
    process calls this; only rank 0 locks and writes ``out_dir``.
    """
    out = Path(out_dir)
    ddp, device = init_distributed(cfg.device)
    try:
        if not ddp.is_main:
            return _train_locked(cfg, out, ddp, device, resume=resume, quiet=True, log=lambda _: None)
        with RunLock(out):
            return _train_locked(cfg, out, ddp, device, resume=resume, quiet=quiet, log=log, on_epoch=on_epoch)
    finally:
        ddp.close()


def _train_locked(
    cfg: TrainConfig,
    out: Path,
    ddp: Distributed,
    device: torch.device,
    *,
    resume: bool,
    quiet: bool,
    log: Callable[[str], None],
    on_epoch: Optional[Callable[[dict[str, Any]], None]] = None,
) -> dict[str, Any]:
    if (out / METRICS_FILE).exists() and not (out / LAST_PT).exists():  # last.pt is written first: copied without it
        raise TrainingError(f"{out} already holds a run but no {LAST_PT.as_posix()} to resume it from; delete that "
                            "folder to train the run again or choose another --out")
    if not resume and (out / LAST_PT).exists():
        raise TrainingError(f"{out} already holds a run; use --resume to continue it or choose another --out")
    if cfg.batch_size % ddp.world_size:
        raise TrainingError(f"batch size {cfg.batch_size} does not divide among {ddp.world_size} processes")
    started = time.perf_counter()
    run = _start(cfg, out, ddp, device, quiet, log)
    if resume and run.last_path.is_file():
        _resume(run)
        log(f"resuming {out} after epoch {run.epoch}")
    elif resume:
        log(f"{out}: no epoch had finished, starting from the beginning")

    with _tensorboard(run) as writer:
        first, looping = run.epoch + 1, time.perf_counter()
        for epoch in range(first, cfg.epochs + 1):
            row = _train_epoch(run, epoch)
            row.update(_evaluate(run, epoch) if epoch % cfg.val_every == 0 or epoch == cfg.epochs else _UNVALIDATED)
            is_best = _record(run, epoch, row)
            if ddp.is_main:
                per_epoch = (time.perf_counter() - looping) / (epoch - first + 1)  # training and evaluation
                _write_epoch(run, writer, is_best, seconds_left=per_epoch * (cfg.epochs - epoch))
                if on_epoch is not None:
                    on_epoch(run.rows[-1])

    if not ddp.is_main:
        return {}
    summary = _summarise(run)
    summary["wall_seconds"] = time.perf_counter() - started  # this invocation: data, training, evaluation
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


@contextlib.contextmanager
def _tensorboard(run: _Run) -> Iterator[Any]:
    """On rank 0: ``config.yaml`` written, and a TensorBoard writer from the first epoch to train on."""
    if not run.ddp.is_main:
        yield None
        return
    write_text_atomic(run.out / "config.yaml", run.cfg.to_yaml())
    pause_point("started", run.epoch + 1)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run.out), purge_step=run.epoch + 1)
    try:
        yield writer
    finally:
        writer.close()


# --------------------------------------------------------------------------- one epoch


def _train_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """One pass over the training data; the epoch's training metrics, learning rate and AutoReLU weight."""
    cfg, ddp = run.cfg, run.ddp
    run.net.train()
    run.noise.start_epoch()
    local_batch = cfg.batch_size // ddp.world_size
    batches = iterate_batches(
        run.data.train_images, run.data.train_labels, local_batch, shuffle=True, generator=run.generator,
        balanced=cfg.balanced_sampler, rank=ddp.rank, world_size=ddp.world_size, device=run.device,
    )
    total = num_batches(len(run.data.train_labels), local_batch, world_size=ddp.world_size)
    stats = EpochStats(total, run.num_classes, run.device, ddp)
    stepwise = cfg.scheduler in STEPWISE_SCHEDULERS
    lr = run.optimizer.param_groups[0]["lr"]
    with Progress(run.quiet, total, epoch, cfg.epochs) as progress:
        for step, (images, labels) in enumerate(batches, start=1):
            inputs = run.augment(images, generator=run.generator, train=True)
            if run.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            loss, logits = run.train_step(inputs, labels)
            if run.average is not None:
                run.average.update_parameters(run.model)
            if stepwise:
                run.scheduler.step()
            stats.add(step, loss, logits, labels, skipped=run.train_step.last_step_skipped)
            if step % CHECK_EVERY == 1 or step == total:
                progress.show(*stats.so_far(step, epoch))
            progress.update()
            if step == 2:
                pause_point("mid-epoch", epoch)
    row = stats.row(epoch)
    row["noise_on"] = run.noise.epoch_noise_fraction()
    if cfg.nonfinite == "skip":
        row["skipped_steps"] = stats.skipped
    row["lr"] = lr  # at the epoch's first step; an epochwise schedule then moves on
    if run.scheduler is not None and not stepwise:
        run.scheduler.step()
    if run.noise.autorelus:
        row["autorelu_w"] = autorelu_weight(run.model)
    run.trace += [[epoch, step, *values] for step, values in enumerate(run.noise.take_trace(), start=1)]
    return row


# The row of an epoch that ``val_every`` leaves unvalidated: NaN is never the best, and figures skip it.
_UNVALIDATED = {"val_loss": float("nan"), "val_f1": float("nan"), "val_acc": float("nan")}


def _evaluate(run: _Run, epoch: int) -> dict[str, float]:
    """Validation loss, macro-F1 and accuracy (BatchNorm statistics first re-estimated if asked for)."""
    if run.cfg.bn_recalibrate:
        _recalibrate(run, epoch)
    val = evaluate_arrays(run.evaluated, run.data.val_images, run.data.val_labels, run.num_classes, run.augment,
                          run.device, run.cfg.eval_batch_size, Views.of(run.cfg))
    return {"val_loss": val["loss"], "val_f1": val["macro_f1"], "val_acc": val["accuracy"]}


def _recalibrate(run: _Run, epoch: int) -> None:
    """BatchNorm statistics from ``cfg.bn_recalibrate`` clean training batches, drawn with a generator of
    their own (so the training stream, and resuming, are unaffected)."""
    cfg, ddp = run.cfg, run.ddp
    recalibrate_on_images(run.evaluated, run.data.train_images, run.data.train_labels, run.augment, cfg.bn_recalibrate,
                          cfg.batch_size // ddp.world_size, torch.Generator().manual_seed(cfg.seed * 100_003 + epoch),
                          rank=ddp.rank, world_size=ddp.world_size, device=run.device)


def _record(run: _Run, epoch: int, row: dict[str, Any]) -> bool:
    """Add the epoch's row (metrics.csv's column order) and mark it done; whether it is the best so far."""
    run.rows.append({k: row[k] for k in METRIC_COLUMNS + [k for k in row if k not in METRIC_COLUMNS]})
    if not all(torch.isfinite(p).all() for p in run.model.parameters()):
        raise TrainingError(
            f"non-finite weights after epoch {epoch}; checkpoints keep the state after epoch {epoch - 1}. "
            f"Lower the learning rate"
        )
    run.epoch = epoch
    is_best = row["val_f1"] > run.best["val_f1"]
    if is_best:
        run.best = {"val_f1": row["val_f1"], "epoch": epoch}
    return is_best


def _write_epoch(run: _Run, writer: Any, is_best: bool, seconds_left: float) -> None:
    """Rank 0's files of a finished epoch, in an order that a kill at any point leaves resumable."""
    row, epoch = run.rows[-1], run.epoch
    for key, value in row.items():
        if key != "epoch" and not math.isnan(value):  # NaN: not validated this epoch
            writer.add_scalar(key, value, epoch)
    writer.flush()
    pause_point("epoch-trained", epoch)
    # The trace before last.pt: a resume from last.pt must find this epoch's rows in it.
    if run.trace:
        write_trace(run.out / TRACE_FILE, run.trace)
    # best.pt first: a crash between the two writes then only repeats this epoch on resume.
    # best.pt is for use and sharing: no optimizer or other resume state (resuming reads last.pt).
    state = _checkpoint(run)
    if is_best:
        save_checkpoint(run.best_path, inference_checkpoint(state))
        pause_point("best-written", epoch)
    save_checkpoint(run.last_path, state)
    pause_point("last-written", epoch)
    write_metrics(run.out / METRICS_FILE, run.rows)
    pause_point("epoch-done", epoch)
    noise = f" noise {row['noise_on']:.2f}" if run.noise.method != "none" else ""
    val = (f"val loss {row['val_loss']:.4f}  val F1 {row['val_f1']:.4f}  acc {row['val_acc']:.4f}"
           if not math.isnan(row["val_f1"]) else "not validated")
    run.log(
        f"epoch {epoch}/{run.cfg.epochs}  train loss {row['train_loss']:.4f}  {val}{noise}  {row['seconds']:.1f}s"
        + (f"  about {_minutes(seconds_left)} left" if seconds_left > 0 else "")
    )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _summarise(run: _Run) -> dict[str, Any]:
    """summary.json: the best and final epochs, and the test score of best.pt where there is a test split."""
    cfg, rows, packed = run.cfg, run.rows, run.data.packed
    summary: dict[str, Any] = {
        "method": cfg.method,
        "seed": cfg.seed,
        "epochs": len(rows),
        "best_val_f1": run.best["val_f1"],
        "best_epoch": run.best["epoch"],
        "final_val_f1": float(rows[-1]["val_f1"]),
        "final_val_acc": float(rows[-1]["val_acc"]),
        "final_train_loss": float(rows[-1]["train_loss"]),
        "seconds": sum(float(r["seconds"]) for r in rows),
        "train_images_per_second": len(rows) * len(run.data.train_labels) / sum(float(r["seconds"]) for r in rows),
        "precision": "bf16" if run.train_step.bf16 else "fp32",
        "channels_last": run.channels_last,
        "classes": list(packed.classes),
    }
    test = packed.splits.get("test")
    if test is not None and len(test.labels) and run.best_path.is_file():
        model = model_from_checkpoint(load_checkpoint(run.best_path), run.best_path).to(run.device)
        scores = evaluate_arrays(model, test.images, test.labels, len(packed.classes), run.augment, run.device,
                                 cfg.eval_batch_size, Views.of(cfg))
        summary.update(test_f1=scores["macro_f1"], test_acc=scores["accuracy"])
    return summary
