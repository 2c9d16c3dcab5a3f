"""The paper's comparison: every method for every seed, then Table 1 and the figures.

Runs live in ``OUT/<method>-seed<seed>/``. A run whose ``summary.json`` exists
with the same configuration is reused; one that stopped part-way is resumed from
its ``last.pt``; a run directory holding a different configuration is an error
rather than being overwritten.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from fernoise.config import METHODS, PAPER_METHODS, ConfigError, TrainConfig, resolve_config
from fernoise.io import PathLike
from fernoise.train import TrainingError, train

def run_name(method: str, seed: int) -> str:
    return f"{method}-seed{seed}"


def _finished(run_dir: Path, cfg: TrainConfig) -> bool:
    if not (run_dir / "summary.json").is_file():
        return False
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    if saved != cfg.to_dict():
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
) -> Path:
    """Train (or reuse) every method x seed and write the report; return ``report.md``'s path."""
    from fernoise.reports import load_runs, write_report

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    out = Path(out)
    run_dirs = []
    for seed in range(seeds):
        for method in methods:
            cfg = resolve_config(config_file, **{**(overrides or {}), "data": data, "method": method, "seed": seed})
            run_dir = out / run_name(method, seed)
            run_dirs.append(run_dir)
            if _finished(run_dir, cfg):
                log(f"[{run_dir.name}] finished earlier, reused")
                continue
            resume = (run_dir / "checkpoints" / "last.pt").is_file()
            log(f"[{run_dir.name}] {'resuming' if resume else 'training'}")
            train(cfg, run_dir, resume=resume, quiet=quiet, log=lambda msg, name=run_dir.name: log(f"[{name}] {msg}"))
    runs = load_runs(run_dirs)
    command = command or "fernoise " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    cfg0 = resolve_config(config_file, **{**(overrides or {}), "data": data})
    description = (
        f"{data}: image size {cfg0.image_size}, augment {cfg0.augment}, {cfg0.epochs} epochs, batch {cfg0.batch_size}, "
        f"{cfg0.optimizer} lr {cfg0.lr:g} weight decay {cfg0.weight_decay:g}, periodic interval T={cfg0.interval} "
        f"{cfg0.interval_unit}s, {seeds} seed(s)"
    )
    return write_report(runs, out, command=command, data_description=description)
