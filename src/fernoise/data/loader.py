"""Batches straight from the packed (memory-mapped) arrays: no Dataset, no worker processes.

The cache holds decoded uint8 faces, so a batch is one fancy-index read (indices sorted
for memmap locality) and one tensor conversion; augmentation then runs on the batch on
the training device (:mod:`fernoise.data.augment`).
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch


def num_batches(n: int, batch_size: int, *, drop_last: bool = False, world_size: int = 1) -> int:
    """Batches per epoch on each rank (the same on every rank, as DDP requires)."""
    per_rank = math.ceil(n / world_size)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def _epoch_order(labels: np.ndarray, *, shuffle: bool, balanced: bool,
                 generator: torch.Generator | None) -> np.ndarray:
    n = len(labels)
    if balanced:  # each class equally likely, with replacement; same epoch length
        counts = np.bincount(labels)
        weights = torch.from_numpy(1.0 / counts[labels])
        return torch.multinomial(weights, n, replacement=True, generator=generator).numpy()
    if shuffle:
        return torch.randperm(n, generator=generator).numpy()
    return np.arange(n)


def _shard(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's strided slice of the epoch order, padded from itself to the common length.

    The ranks' index sets are disjoint and together cover the epoch; only a rank that is one
    short repeats one of its own samples, so every rank runs the same number of steps.
    """
    per_rank = math.ceil(len(order) / world_size)
    shard = order[rank::world_size]
    return np.resize(shard if len(shard) else order, per_rank)


def iterate_batches(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, batch_size: int, *,
                    shuffle: bool = True, generator: torch.Generator | None = None, balanced: bool = False,
                    drop_last: bool = False, rank: int = 0, world_size: int = 1,
                    device: str | torch.device = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(uint8 (B, C, H, W), int64 (B,))`` batches for one epoch.

    ``images`` (N, H, W, C) and ``labels`` are the cache's arrays, or tensors already
    resident on the training device (see :func:`to_device`): then a batch is one
    ``index_select`` on the device and nothing crosses the bus. Both give the same
    batches in the same order. With DDP every rank must pass an identically seeded
    ``generator`` so that all ranks slice the same permutation.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    host_labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if len(host_labels) == 0:
        return
    order = _shard(_epoch_order(host_labels, shuffle=shuffle, balanced=balanced, generator=generator),
                   rank, world_size)
    device = torch.device(device)
    resident = isinstance(images, torch.Tensor)
    if resident:
        order_on_device = torch.from_numpy(order).to(images.device)
    for b in range(num_batches(len(host_labels), batch_size, drop_last=drop_last, world_size=world_size)):
        if resident:
            index = order_on_device[b * batch_size:(b + 1) * batch_size].sort().values
            yield images.index_select(0, index).permute(0, 3, 1, 2), labels.index_select(0, index)
            continue
        index = np.sort(order[b * batch_size:(b + 1) * batch_size])
        x = torch.from_numpy(np.ascontiguousarray(images[index])).permute(0, 3, 1, 2)
        y = torch.from_numpy(host_labels[index].astype(np.int64, copy=False))
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
            y = y.pin_memory().to(device, non_blocking=True)
        elif device.type != "cpu":
            x, y = x.to(device), y.to(device)
        yield x, y


def to_device(images: np.ndarray, labels: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy a split into device memory once (uint8 images, int64 labels) for :func:`iterate_batches`."""
    return (torch.from_numpy(np.ascontiguousarray(images)).to(device),
            torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device))


def fits_on_device(nbytes: int, device: torch.device, fraction: float = 0.25) -> bool:
    """Whether ``nbytes`` take at most ``fraction`` of the device's free memory (always true on the CPU)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= fraction * free


def class_weights(labels: np.ndarray | torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, normalised to mean 1 over the classes present (absent: 0)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]
    inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    present = counts > 0
    if present.any():
        inverse = inverse / inverse[present].mean()
    return torch.as_tensor(inverse, dtype=torch.float32)
