"""Classification metrics: confusion matrix, macro-F1 (the paper's metric), accuracy.

Everything is derived from one confusion matrix, so the one-shot scores
(:func:`classification_scores`) and the running ones (:class:`RunningF1`) cannot
disagree.

Which classes enter the macro average
-------------------------------------
``macro_f1`` is the mean F1 over the classes that occur in ``y_true`` or in
``y_pred`` -- exactly scikit-learn's default ``f1_score(y_true, y_pred,
average="macro")``. A class absent from both contributes nothing (it is neither
counted as 0 nor as 1), so evaluating on a split that lacks a class does not
drag the score down. Note that this differs from ``f1_score(...,
labels=range(num_classes), average="macro")``, which averages absent classes in
as 0. The per-class scores are reported for every class; for an absent class
they are 0 with support 0, as ``precision_recall_fscore_support(...,
labels=range(num_classes), zero_division=0)`` gives.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


def _as_labels(values: Any, num_classes: int, what: str) -> np.ndarray:
    """Integer class indices as a flat int64 numpy array, checked to lie in [0, num_classes)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{what} must be 1-D class indices, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise ValueError(f"{what} must hold integer class indices")
    array = array.astype(np.int64, copy=False)
    outside = array[(array < 0) | (array >= num_classes)]
    if outside.size:
        raise ValueError(f"{what} holds class index {int(outside[0])}, outside [0, {num_classes})")
    return array


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Counts ``(num_classes, num_classes)`` int64; rows are true classes, columns predictions."""
    true = _as_labels(y_true, num_classes, "y_true")
    pred = _as_labels(y_pred, num_classes, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {true.size} vs {pred.size}")
    counts = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _per_class(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision/recall/F1/support, 0 where undefined (sklearn's zero_division=0)."""
    cm = confusion.astype(np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        # 2tp / (2tp + fp + fn): the form sklearn uses; defined whenever the class occurs at all.
        denominator = support + predicted
        f1 = np.where(denominator > 0, 2.0 * tp / denominator, 0.0)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support.astype(np.int64),
        "present": denominator > 0,
    }


def macro_f1_from_confusion(confusion: np.ndarray) -> float:
    """Mean F1 over classes seen in labels or predictions; NaN for an empty matrix."""
    parts = _per_class(np.asarray(confusion))
    if not parts["present"].any():
        return float("nan")
    return float(parts["f1"][parts["present"]].mean())


def classification_scores(
    y_true: Any, y_pred: Any, num_classes: int, class_names: Sequence[str]
) -> dict[str, Any]:
    """All scores the evaluate command and reports need, JSON-serialisable.

    Keys: ``macro_f1``, ``macro_f1_classes`` (names averaged over), ``accuracy``,
    ``precision``/``recall``/``f1``/``support`` (dicts keyed by class name), ``confusion``
    (list of lists, rows = true class) and ``n``.
    """
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    cm = confusion_matrix(y_true, y_pred, num_classes)
    total = int(cm.sum())
    if total == 0:
        raise ValueError("no samples to score")
    parts = _per_class(cm)
    names = list(class_names)
    return {
        "macro_f1": macro_f1_from_confusion(cm),
        "macro_f1_classes": [name for name, seen in zip(names, parts["present"]) if seen],
        "accuracy": float(np.trace(cm) / total),
        "precision": {name: float(v) for name, v in zip(names, parts["precision"])},
        "recall": {name: float(v) for name, v in zip(names, parts["recall"])},
        "f1": {name: float(v) for name, v in zip(names, parts["f1"])},
        "support": {name: int(v) for name, v in zip(names, parts["support"])},
        "confusion": cm.tolist(),
        "n": total,
    }


class RunningF1:
    """Accumulates a confusion matrix on the batches' device for a running macro-F1.

    ``update`` costs one ``bincount`` on the device and no host synchronisation;
    only ``compute``/``accuracy``/``confusion`` copy the (tiny) matrix to the host.
    Out-of-range indices are counted in an extra bin on the device and reported
    there, so checking them does not force a synchronisation per batch either.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self._counts: torch.Tensor | None = None  # k*k cells + 1 bin for invalid indices

    def reset(self) -> None:
        self._counts = None

    @torch.no_grad()
    def update(self, preds: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``preds`` are class indices ``(N,)`` or logits ``(N, C)``; ``labels`` ``(N,)``."""
        if preds.ndim == 2:
            preds = preds.argmax(dim=1)
        if preds.shape != labels.shape:
            raise ValueError(f"predictions {tuple(preds.shape)} and labels {tuple(labels.shape)} differ")
        k = self.num_classes
        labels = labels.flatten().to(torch.int64)
        preds = preds.flatten().to(device=labels.device, dtype=torch.int64)
        valid = (labels >= 0) & (labels < k) & (preds >= 0) & (preds < k)
        flat = torch.where(valid, labels * k + preds, torch.full_like(labels, k * k))
        batch = torch.bincount(flat, minlength=k * k + 1)
        self._counts = batch if self._counts is None else self._counts + batch.to(self._counts.device)

    def all_reduce_(self) -> "RunningF1":
        """Sum the counts over the processes of a torch.distributed job (DDP training)."""
        if self._counts is None:
            self._counts = torch.zeros(self.num_classes**2 + 1, dtype=torch.int64)
        torch.distributed.all_reduce(self._counts)
        return self

    @property
    def confusion(self) -> np.ndarray:
        """Counts so far, rows = true class; raises if any update held an out-of-range index."""
        k = self.num_classes
        if self._counts is None:
            return np.zeros((k, k), dtype=np.int64)
        counts = self._counts.cpu().numpy().astype(np.int64)
        if counts[-1]:
            raise ValueError(f"{int(counts[-1])} predictions or labels were outside [0, {k})")
        return counts[:-1].reshape(k, k)

    def compute(self) -> float:
        """Macro-F1 so far (same definition as ``classification_scores``); NaN before any update."""
        return macro_f1_from_confusion(self.confusion)

    def accuracy(self) -> float:
        """Accuracy so far; NaN before any update."""
        cm = self.confusion
        total = cm.sum()
        return float(np.trace(cm) / total) if total else float("nan")
