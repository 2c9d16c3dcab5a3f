"""Sharing a model: an inference-only or float16 checkpoint, or the network as ONNX (and an ONNX Runtime session).

The model is exported in its eval form (no noise). Checkpoints are read only through
:func:`fernoise.checkpoint.load_checkpoint`, which never unpickles Python objects, and
every file is written atomically.
"""
from __future__ import annotations

import copy
import inspect
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from fernoise.checkpoint import (
    half_precision, inference_checkpoint, load_checkpoint, parse_input, model_from_checkpoint, save_checkpoint,
)
from fernoise.io import PathLike, write_bytes_atomic

__all__ = ["ExportError", "export_checkpoint", "export_onnx", "onnx_session", "DEFAULT_OPSET"]

DEFAULT_OPSET = 17


class ExportError(ValueError):
    """An export could not be written (a missing package, an exporter failure); the message says why."""


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'fernoise[onnx]'") from None
    return onnx


def onnx_session(model: nn.Module, channels: int, size: int) -> Any:
    """The model as an ONNX Runtime session on the CPU (3-4x faster than eager PyTorch at batch 1).

    A copy in eval form is exported: the caller's model keeps its mode and device.
    """
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("engine 'onnx' needs onnxruntime: pip install 'fernoise[onnx]'") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    proto = _export_proto(copy.deepcopy(model).cpu().eval(), torch.zeros(2, channels, size, size), DEFAULT_OPSET)
    return onnxruntime.InferenceSession(proto, options, providers=["CPUExecutionProvider"])


def _export_proto(model: nn.Module, example: torch.Tensor, opset: int) -> bytes:
    """Serialized ONNX of ``model`` with input ``faces`` and output ``logits``, batch dimension dynamic.

    The TorchScript exporter (``dynamo=False``) is tried first: it needs no extra package.
    Should it fail or be gone (newer torch), the torch.export-based exporter is used, which
    needs ``onnxscript``.
    """
    names = dict(input_names=["faces"], output_names=["logits"], opset_version=opset,
                 dynamic_axes={"faces": {0: "batch"}, "logits": {0: "batch"}})
    has_dynamo_flag = "dynamo" in inspect.signature(torch.onnx.export).parameters
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
            torch.onnx.export(model, (example,), buffer, **names, **({"dynamo": False} if has_dynamo_flag else {}))
        return buffer.getvalue()
    except Exception as legacy_error:  # noqa: BLE001 - any exporter failure is reported below
        if not has_dynamo_flag:
            raise ExportError(f"ONNX export failed: {legacy_error}") from None
        try:
            import onnxscript  # noqa: F401 - the dynamo exporter needs it
        except ImportError:
            raise ExportError(
                f"ONNX export failed with the TorchScript exporter ({legacy_error}); the torch.export-based "
                "exporter needs onnxscript: pip install onnxscript"
            ) from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), dynamo=True, **names)
        return program.model_proto.SerializeToString()


def export_onnx(checkpoint_path: PathLike, out: PathLike, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Write a checkpoint's model (eval form, no noise) as ONNX, atomically; returns its metadata.

    Input ``faces``: float32 ``(N, channels, size, size)`` normalised as in training; output
    ``logits`` ``(N, classes)``. Class names and the input description are stored as
    ``metadata_props`` (``fernoise.classes``, ``fernoise.input``, JSON).
    """
    onnx = _onnx()
    checkpoint = load_checkpoint(checkpoint_path)
    size, channels, mean, std = parse_input(checkpoint["input"], checkpoint_path)
    model = model_from_checkpoint(checkpoint, checkpoint_path).eval()
    proto = onnx.load_from_string(_export_proto(model, torch.zeros(2, channels, size, size), opset))
    metadata = {
        "fernoise.classes": json.dumps(list(checkpoint["classes"])),
        "fernoise.input": json.dumps({"size": size, "channels": channels, "mean": mean, "std": std}),
        "fernoise.model": json.dumps(checkpoint["model"]),
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    write_bytes_atomic(out, proto.SerializeToString())
    return metadata


def export_checkpoint(checkpoint_path: PathLike, out: PathLike, half: bool = False,
                      extra: Optional[dict[str, Any]] = None) -> tuple[int, int]:
    """Write an inference-only copy of a checkpoint (float16 weights with ``half``), atomically.

    ``extra``: entries added to the copy (plain data only, e.g. the bundled model's ``card``).
    The copy is written beside ``out``, read back and checked to rebuild the model before it
    replaces ``out``: what is checked is the file a user gets. Returns the sizes in bytes of the
    source and of the copy.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    slim = {**(half_precision if half else inference_checkpoint)(checkpoint), **(extra or {})}
    out = Path(out)
    staged = out.with_name(f".{out.name}.check.tmp")
    try:
        save_checkpoint(staged, {k: v for k, v in slim.items() if k not in ("format", "version")})
        model_from_checkpoint(load_checkpoint(staged), f"{out} (the copy of {checkpoint_path})")
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    return Path(checkpoint_path).stat().st_size, out.stat().st_size
