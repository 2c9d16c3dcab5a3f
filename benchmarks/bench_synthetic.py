"""Rendering speed of the built-in synthetic faces, in faces per second.

Target: at least 5,000 faces/s at 48x48 on 2 CPU cores, grayscale and colour.

    python benchmarks/bench_synthetic.py [--faces 10000] [--size 48] [--repeats 5]

Each configuration is rendered once to warm up, then timed --repeats times; the
median and the best rate are reported (the median is the number to quote).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from fernoise.data.synthetic import DEFAULT_SPLIT_SIZES, make_synthetic, render_faces, sample_labels


def _rates(labels: np.ndarray, size: int, channels: int, repeats: int) -> list[float]:
    rng = np.random.default_rng(0)
    render_faces(labels[:1000], size, channels, rng)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        render_faces(labels, size, channels, rng)
        rates.append(len(labels) / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=10000)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    labels, _ = sample_labels(args.faces, np.random.default_rng(0))
    print(f"{os.cpu_count()} CPU cores, {args.faces} faces at {args.size}x{args.size}")
    for channels in (1, 3):
        rates = _rates(labels, args.size, channels, args.repeats)
        print(f"channels={channels}: median {statistics.median(rates):8.0f} faces/s   best {max(rates):8.0f} faces/s")

    start = time.perf_counter()
    make_synthetic()
    print(f"make_synthetic() with {DEFAULT_SPLIT_SIZES}: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
