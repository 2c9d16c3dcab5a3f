"""An epoch's running numbers (loss, macro-F1, images/s, skipped steps) and its progress bar.

Kept on the device between host syncs: the loss of every step stays there and is read, and checked
for NaN/inf, only when the progress bar refreshes. :class:`TrainingError` lives here because these
checks are where a run first finds that it cannot go on; :mod:`fernoise.train` raises it too.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from fernoise.distributed import Distributed
from fernoise.metrics import RunningF1


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, bad resume); the message says where and what to do."""


class EpochStats:
    """Loss, running macro-F1 and skipped steps of one epoch, kept on the device.

    Per-step loss x batch size stays on the device: no host sync per step. Losses are
    checked for NaN/inf when the progress bar refreshes (every :data:`CHECK_EVERY` steps).
    """

    def __init__(self, total: int, num_classes: int, device: torch.device, ddp: Distributed) -> None:
        self.ddp = ddp
        self.weighted_losses = torch.zeros(total, dtype=torch.float64, device=device)
        self.running = RunningF1(num_classes)
        self.seen, self.skipped = 0, 0
        self.start = time.perf_counter()

    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, skipped: bool) -> None:
        if skipped:
            self.skipped += 1
            return
        self.weighted_losses[step - 1] = loss * len(labels)
        self.seen += len(labels)
        self.running.update(logits.argmax(1), labels)

    def so_far(self, step: int, epoch: int) -> tuple[float, float, float]:
        """Mean loss, macro-F1 and images per second up to ``step`` (raises at a non-finite loss)."""
        loss_sum = _checked_loss_sum(self.weighted_losses[:step], epoch, self.ddp)
        return loss_sum / max(self.seen, 1), self.running.compute(), self.seen / (time.perf_counter() - self.start)

    def row(self, epoch: int) -> dict[str, Any]:
        """The epoch's train loss and macro-F1 over all ranks, and its seconds."""
        loss_sum, seen = float(self.weighted_losses.sum()), self.seen
        if self.ddp.enabled:
            loss_sum, seen = (float(v) for v in self.ddp.sum_(torch.tensor([loss_sum, seen], dtype=torch.float64)))
            self.running.all_reduce_()
        if seen == 0:
            raise TrainingError(f"every training step of epoch {epoch} had a non-finite loss; nothing was learned")
        return {"epoch": epoch, "train_loss": loss_sum / seen, "train_f1": self.running.compute(),
                "seconds": time.perf_counter() - self.start}


def _checked_loss_sum(weighted_losses: torch.Tensor, epoch: int, ddp: Distributed) -> float:
    """This rank's loss sum so far; raises at the first non-finite step (on every rank alike)."""
    bad = ~torch.isfinite(weighted_losses)
    loss_sum, bad_steps = torch.stack([weighted_losses.masked_fill(bad, 0).sum(), bad.sum().to(torch.float64)]).tolist()
    if ddp.enabled:  # every rank must take the same branch below
        bad_steps = float(ddp.sum_(torch.tensor([bad_steps], dtype=torch.float64, device=weighted_losses.device)))
    if bad_steps:
        if bad.any():
            first = int(bad.nonzero()[0])
            what = f"({float(weighted_losses[first])}) at epoch {epoch}, step {first + 1}"
        else:
            what = f"at epoch {epoch}, in another process"
        raise TrainingError(
            f"non-finite training loss {what}; "
            f"checkpoints/last.pt keeps the state after epoch {epoch - 1}. "
            f"Lower the learning rate, or set nonfinite: skip to skip such steps"
        )
    return loss_sum


class Progress:
    """tqdm bar per epoch (loss, running F1, images/s), or nothing when quiet."""

    def __init__(self, quiet: bool, total: int, epoch: int, epochs: int) -> None:
        self.bar = None
        if not quiet:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False, dynamic_ncols=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def show(self, loss: float, f1: float, images_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", f1=f"{f1:.3f}", img_s=f"{images_per_s:.0f}", refresh=False)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update()
