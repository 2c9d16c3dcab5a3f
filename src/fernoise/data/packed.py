"""The in-memory data set that training reads (PackedData, its Splits) and the statistics stored with it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

SPLITS = ("train", "val", "test")  # the split names, in this order wherever splits are listed


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, H, W, C), possibly a read-only memmap
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class PackedData:
    """A data set ready for training: see the data contract in docs/ARCHITECTURE.md."""

    classes: list[str]
    splits: dict[str, Split]
    size: int
    channels: int
    mean: list[float]
    std: list[float]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the cache directory, when loaded from one
    reused: bool = False  # True when load_data used an existing cache instead of rebuilding

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, streamed so a memmap is never loaded whole."""
    total = np.zeros(images.shape[-1])
    squares = np.zeros(images.shape[-1])
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start:start + chunk], dtype=np.float64) / 255.0
        total += block.sum(axis=(0, 1, 2))
        squares += np.square(block).sum(axis=(0, 1, 2))
    count = max(1, images.shape[0] * images.shape[1] * images.shape[2])
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return [round(float(m), 6) for m in mean], [round(float(max(s, 1e-6)), 6) for s in std]


def class_counts(splits: Mapping[str, Split], classes: list[str]) -> dict[str, dict[str, int]]:
    return {
        name: dict(zip(classes, (int(c) for c in np.bincount(split.labels, minlength=len(classes)))))
        for name, split in splits.items()
    }
