"""Evaluation: scores of a model on arrays, and of a checkpoint on any data set.

Across data sets, classes are matched by canonical name: a sample whose class
the model does not know is left out and counted (``excluded``), never scored
silently as wrong or right.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from fernoise.checkpoint import load_checkpoint, model_from_checkpoint
from fernoise.data import Augmenter, iterate_batches, load_data
from fernoise.distributed import resolve_device
from fernoise.io import PathLike, write_text_atomic
from fernoise.metrics import classification_scores


@torch.no_grad()
def predict_arrays(
    model: nn.Module,
    images: np.ndarray,
    augment: Augmenter,
    device: torch.device,
    batch_size: int = 256,
    tta_flip: bool = False,
) -> torch.Tensor:
    """Logits (on the CPU) for uint8 (N, H, W, C) images, in order, in eval mode.

    ``augment`` resizes and converts grey/colour to the model's channels, so images of
    another data set can be scored as they are.
    """
    model.eval()
    outputs = []
    dummy = np.zeros(len(images), dtype=np.int64)
    for batch, _ in iterate_batches(images, dummy, batch_size, shuffle=False, device=device):
        inputs = augment(batch, train=False)
        logits = model(inputs)
        if tta_flip:
            logits = (logits.softmax(1) + model(inputs.flip(3)).softmax(1)).log()
        outputs.append(logits.float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0, 0)


def evaluate_arrays(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    augment: Augmenter,
    device: torch.device,
    batch_size: int = 256,
    tta_flip: bool = False,
    class_names: Optional[list[str]] = None,
) -> dict[str, Any]:
    """Loss, macro-F1, accuracy and per-class scores of ``model`` on labelled arrays."""
    logits = predict_arrays(model, images, augment, device, batch_size, tta_flip)
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    loss = float(nn.functional.cross_entropy(logits, targets)) if len(targets) else float("nan")
    names = class_names or [str(i) for i in range(num_classes)]
    scores = classification_scores(targets.numpy(), logits.argmax(1).numpy(), num_classes, names)
    scores["loss"] = loss
    return scores


def evaluate_checkpoint(
    checkpoint_path: PathLike,
    data: str,
    *,
    split: str = "val",
    data_format: Optional[str] = None,
    cache_dir: Optional[str] = None,
    device: str = "auto",
    batch_size: int = 256,
    tta_flip: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a checkpoint on a split of any data set, matching classes by name."""
    checkpoint = load_checkpoint(checkpoint_path)
    model_classes = list(checkpoint["classes"])
    spec = checkpoint["input"]
    packed = load_data(data, size=spec["size"], format=data_format, cache_dir=cache_dir, progress=progress)
    if split not in packed.splits:
        raise ValueError(f"{data}: no '{split}' split (it has {', '.join(sorted(packed.splits))})")
    images, labels = packed.splits[split].images, np.asarray(packed.splits[split].labels)
    to_model = {i: model_classes.index(name) for i, name in enumerate(packed.classes) if name in model_classes}
    known = np.isin(labels, list(to_model))
    excluded = {
        name: int((labels == i).sum()) for i, name in enumerate(packed.classes) if i not in to_model and (labels == i).any()
    }
    if not known.any():
        raise ValueError(f"{data}: none of its classes ({', '.join(packed.classes)}) is known to the model ({', '.join(model_classes)})")
    mapped = np.vectorize(to_model.get)(labels[known]).astype(np.int64)
    images = images[np.flatnonzero(known)] if not known.all() else images

    torch_device = resolve_device(device)
    model = model_from_checkpoint(checkpoint, checkpoint_path).to(torch_device)
    augment = Augmenter("none", spec["size"], spec["channels"], spec["mean"], spec["std"]).to(torch_device)
    scores = evaluate_arrays(
        model, images, mapped, len(model_classes), augment, torch_device, batch_size, tta_flip,
        class_names=model_classes,
    )
    scores.update(
        checkpoint=str(checkpoint_path),
        data=str(data),
        split=split,
        classes=model_classes,
        excluded=excluded,
        excluded_total=int(sum(excluded.values())),
    )
    return scores


def format_scores(scores: dict[str, Any]) -> str:
    """A readable report: headline scores, per-class table and confusion matrix."""
    names = scores["classes"]
    width = max(9, *(len(n) for n in names)) + 1
    lines = [
        f"{scores['data']} [{scores['split']}]  n={scores['n']}  macro-F1 {scores['macro_f1']:.4f}  "
        f"accuracy {scores['accuracy']:.4f}  loss {scores['loss']:.4f}",
    ]
    if scores["excluded_total"]:
        detail = ", ".join(f"{k}: {v}" for k, v in scores["excluded"].items())
        lines.append(f"left out {scores['excluded_total']} samples of classes the model does not know ({detail})")
    lines.append(f"{'class':<{width}} precision  recall     f1  support")
    for name in names:
        lines.append(
            f"{name:<{width}} {scores['precision'][name]:9.4f} {scores['recall'][name]:7.4f} "
            f"{scores['f1'][name]:6.4f} {scores['support'][name]:8d}"
        )
    lines.append("confusion matrix (rows: true, columns: predicted)")
    lines.append(" " * width + " ".join(f"{n[:7]:>7}" for n in names))
    for name, row in zip(names, scores["confusion"]):
        lines.append(f"{name:<{width}}" + " ".join(f"{v:7d}" for v in row))
    return "\n".join(lines)


def write_evaluation(scores: dict[str, Any], json_path: Optional[PathLike], confusion_png: Optional[PathLike]) -> None:
    if json_path:
        write_text_atomic(json_path, json.dumps(scores, indent=2) + "\n")
    if confusion_png:
        from fernoise.reports import plot_confusion

        plot_confusion(
            np.asarray(scores["confusion"]), scores["classes"], Path(confusion_png),
            title=f"{Path(scores['checkpoint']).name} on {scores['data']} [{scores['split']}]",
        )
