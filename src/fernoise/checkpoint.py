"""Checkpoint format: everything needed to rebuild, use and resume a model.

A checkpoint is a plain dictionary of tensors, numbers, strings, lists and dicts,
written with :func:`torch.save` through :func:`fernoise.io.atomic_write` and read
back with ``torch.load(weights_only=True)``, which refuses any pickled Python
object, so loading a checkpoint never runs code.

Keys: ``format``/``version``; ``model`` (the keyword arguments of
:func:`fernoise.models.build_model`, noise settings included); ``classes``
(canonical names in output order); ``input`` (``size``, ``channels``, ``mean``,
``std``); ``state_dict``; provenance: ``config``, ``data``, ``epoch``, ``best``
(validation macro-F1 and its epoch), ``fernoise_version``; and, for resuming only,
:data:`RESUME_KEYS` (``optimizer``, ``scheduler``, ``noise`` schedule state, ``rng``,
``metrics``; with a weight average (``ema``), ``state_dict`` holds the averaged weights, the
ones evaluated, and ``train_state_dict`` the trained ones with ``ema_updates``, the average's count).

Training writes ``last.pt`` complete (it resumes) and ``best.pt`` as an inference
checkpoint (:func:`inference_checkpoint`: ``"kind": "inference"``, no resume keys, about
a third of the size with Adam). :func:`half_precision` stores its floating-point
weights as float16 (half again); :func:`model_from_checkpoint` loads them back into
the float32 model. Older, complete checkpoints load everywhere as before.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fernoise.io import PathLike, atomic_write
from fernoise.models import build_model
from fernoise.version import __version__

FORMAT = "fernoise-checkpoint"
VERSION = 1
RESUME_KEYS = ("optimizer", "scheduler", "noise", "rng", "metrics")
AVERAGE_KEYS = ("train_state_dict", "ema_updates")  # resuming a run with a weight average (ema) needs these too
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch colours parts of its messages


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, unsafe or not from fernoise; the message says which."""


def save_checkpoint(path: PathLike, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` atomically; the previous file survives any failure.

    ``fernoise_version`` records the fernoise that first wrote it (kept when re-saved).
    """
    payload = {"format": FORMAT, "version": VERSION, "fernoise_version": __version__, **checkpoint}
    with atomic_write(path, "wb") as handle:
        torch.save(payload, handle)


def inference_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint`` without what only resuming needs: weights, classes, input, noise and provenance."""
    dropped = RESUME_KEYS + AVERAGE_KEYS
    return {**{key: value for key, value in checkpoint.items() if key not in dropped}, "kind": "inference"}


def half_precision(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """An inference checkpoint with float16 weights (a float32 tensor that overflows float16 stays float32)."""
    weights = {}
    for name, tensor in checkpoint["state_dict"].items():
        if tensor.is_floating_point():
            half = tensor.to(torch.float16)
            if torch.equal(torch.isfinite(half), torch.isfinite(tensor)):  # nothing overflowed
                tensor = half
        weights[name] = tensor
    return {**inference_checkpoint(checkpoint), "state_dict": weights, "weights_dtype": "float16"}


def load_checkpoint(path: PathLike, *, resume: bool = False) -> dict[str, Any]:
    """Read a fernoise checkpoint safely (``weights_only=True``) onto the CPU.

    ``resume=True`` also requires the optimizer and schedule state that resuming needs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint archive (truncated or corrupt, or a plain pickle, which is never loaded)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        culprit = re.search(r"GLOBAL (\S+)", _ANSI.sub("", str(exc)))
        if culprit:
            raise CheckpointError(
                f"{path}: refused to load: it holds a Python object ({culprit.group(1)}) other than tensors and "
                "plain data, which could run code when unpickled"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint (its pickled data is corrupt)") from None
    except Exception as exc:  # torch's reader raises many types on damaged data (IndexError, KeyError, ...)
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {exc}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fernoise checkpoint (no '{FORMAT}' marker; from another program?)")
    if checkpoint.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {checkpoint['version']} is newer than this fernoise reads ({VERSION})")
    missing = [key for key in ("model", "classes", "input", "state_dict") if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    if resume:
        missing = [key for key in ("optimizer", "noise", "rng", "epoch", "best", "metrics", "config") if key not in checkpoint]
        if missing:
            raise CheckpointError(
                f"{path}: an inference-only checkpoint (no {', '.join(missing)}): it cannot resume training; "
                "resuming reads checkpoints/last.pt of the run"
            )
    return checkpoint


def model_from_checkpoint(checkpoint: dict[str, Any], source: PathLike = "checkpoint") -> nn.Module:
    """Rebuild the network a checkpoint describes and load its weights (strictly)."""
    try:
        model = build_model(**checkpoint["model"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: cannot rebuild the model {checkpoint['model']}: {exc}") from None
    problem = ""
    try:
        result = model.load_state_dict(checkpoint["state_dict"], strict=False)
    except RuntimeError as exc:  # shape mismatches
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        problem = f"{len(lines)} tensors of the wrong shape, e.g. {lines[0] if lines else exc}"
    else:
        if result.missing_keys or result.unexpected_keys:
            problem = (
                f"{len(result.missing_keys)} missing tensors (e.g. {result.missing_keys[:2]}), "
                f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]})"
            )
    if problem:
        raise CheckpointError(f"{source}: weights do not fit the model it describes: {problem}")
    return model.eval()


def parse_input(spec: Any, source: PathLike) -> tuple[int, int, list[float], list[float]]:
    """``size, channels, mean, std`` from a checkpoint's ``input`` entry, checked."""
    try:
        size, channels = int(spec["size"]), int(spec["channels"])
        mean, std = [float(v) for v in spec["mean"]], [float(v) for v in spec["std"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: malformed input description {spec!r}: {exc}") from None
    if size < 1 or channels not in (1, 3) or len(mean) not in (1, channels) or len(std) not in (1, channels) \
            or min(std) <= 0:
        raise CheckpointError(f"{source}: malformed input description {spec!r}")
    return size, channels, mean, std
