"""Wall time of the paper's grid (methods x seeds x epochs): one run after another vs several at once.

    python benchmarks/bench_grid.py [--data synthetic|PATH] [--jobs 2] [--seeds 1] [--epochs 2]
                                    [--train-limit 2000] [--config PRESET] [--fast]

Runs ``fernoise.reproduce`` twice into fresh directories, first with ``jobs=1`` (the
baseline: sequential, as a plain loop would) and then with ``--jobs`` concurrent runs,
and prints both wall times and their ratio. ``--fast`` adds the fast path to the
second grid only (``precision bf16``, and on a GPU ``capture`` and ``channels_last``),
so the ratio is fernoise's best against the sequential eager grid. Data preparation
is done once before timing.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from fernoise.config import PAPER_METHODS, TrainConfig, preset_path
from fernoise.reproduce import reproduce
from fernoise.train import prepare_data


def _grid(out: Path, args: argparse.Namespace, jobs: int, extra: dict) -> float:
    overrides = {"epochs": args.epochs, "train_limit": args.train_limit, "cache_dir": args.cache_dir, **extra}
    start = time.perf_counter()
    config = preset_path(args.config) if args.config else None
    reproduce(out, data=args.data, methods=PAPER_METHODS, seeds=args.seeds, config_file=config,
              overrides=overrides, quiet=True, log=lambda _: None, command="bench_grid", jobs=jobs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--config", default=None, help="config file or preset (default: fernoise's defaults)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=2000)
    parser.add_argument("--fast", action="store_true", help="second grid with bf16 (+ capture, channels_last on a GPU)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        args.cache_dir = str(tmp / "cache")
        prepare_data(TrainConfig(data=args.data, cache_dir=args.cache_dir), progress=False)
        fast = {"precision": "bf16"} if args.fast else {}
        if args.fast and torch.cuda.is_available():
            fast.update(capture=True, channels_last=True)
        sequential = _grid(tmp / "sequential", args, 1, {})
        concurrent = _grid(tmp / "concurrent", args, args.jobs, fast)
    runs = len(PAPER_METHODS) * args.seeds
    print(f"grid: {len(PAPER_METHODS)} methods x {args.seeds} seed(s) x {args.epochs} epoch(s) on {args.data} "
          f"({args.train_limit} training images), device {'cuda' if torch.cuda.is_available() else 'cpu'}, "
          f"torch {torch.__version__}")
    print(f"{'grid':<44} {'seconds':>9} {'vs sequential':>14}")
    print(f"{'sequential (jobs 1, eager fp32)':<44} {sequential:9.1f} {1.0:14.2f}")
    label = f"jobs {args.jobs}" + (", " + ", ".join(f"{k} {v}" for k, v in fast.items()) if fast else "")
    print(f"{label:<44} {concurrent:9.1f} {sequential / concurrent:14.2f}")
    print(f"per run: {sequential / runs:.1f} s sequential, {concurrent / runs:.1f} s in the second grid")


if __name__ == "__main__":
    main()
