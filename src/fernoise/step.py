"""One training step, eager or replayed from a CUDA graph, in fp32 or bf16.

At the paper's batch size (64) a ResNet-18 step on a GPU is a few hundred small
kernels, and launching them from Python costs more than running them. With
``capture=True`` the whole step (AutoReLU synchronisation, forward, loss, backward
and optimizer update) is recorded once into a CUDA graph and then replayed with a
single launch per batch, following the whole-network capture recipe of the
PyTorch CUDA-graph notes:

1. the first :data:`WARMUP_STEPS` full batches train eagerly on a side stream (so
   that the optimizer state and cuDNN workspaces exist before recording);
2. the next full batch is recorded (recording runs nothing) and replayed;
3. every later full batch is copied into the static input buffers and replayed.

Noise stays live inside the graph: :class:`~fernoise.noise.SignFlip` multiplies by
a device tensor that the schedule refills (:mod:`fernoise.fastpath`), and the device
half of :meth:`~fernoise.noise.NoiseController.start_step` (the AutoReLU weight reset
and its noisy-step count) is part of the graph; the host half runs before it. A batch of another shape (the last, smaller one) runs eagerly, and a
change of the learning rate (a scheduler) records the graph again.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from torch import nn

from fernoise.noise import NoiseController

WARMUP_STEPS = 3


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast pays on ``device``: a CUDA GPU with bf16, or a CPU with AMX tiles.

    AVX512-BF16 alone is not enough: on a 2-core Intel Xeon with it but without AMX, bf16 trained
    ResNet-18 slower than fp32 (181 vs 208 images/s at 48x48, 75 vs 89 with the half stem;
    benchmarks/bench_precision.py), as the earlier AMD AVX-512 machines did.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return device.type == "cpu" and amx is not None and bool(amx())


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16``: ``auto`` becomes bf16 where :func:`native_bf16` holds, else fp32."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


class TrainStep:
    """``step(inputs, labels) -> (loss, logits)``: one optimisation step on an augmented batch.

    ``net`` is what runs the forward (the model, or its DDP wrapper); ``controller``
    drives the noise. The returned tensors are detached and stay on the device (no
    host sync); with ``capture`` they are the graph's static outputs, valid until the
    next call. ``skip_nonfinite`` checks the loss before the update and skips the
    update when it is not finite (a device sync per step; under DDP ``reduce``, an
    in-place sum over ranks, makes every rank skip together); the caller sees a
    non-finite loss either way.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: nn.Module,
        controller: NoiseController,
        *,
        precision: str = "fp32",
        capture: bool = False,
        skip_nonfinite: bool = False,
        reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> None:
        self.net, self.optimizer, self.criterion, self.controller = net, optimizer, criterion, controller
        self.bf16 = precision == "bf16"
        self.capture = capture
        self.skip_nonfinite = skip_nonfinite
        self.reduce = reduce
        self.last_step_skipped = False
        self._full_shape: Optional[torch.Size] = None
        self._warm = 0
        self._graph: Optional[torch.cuda.CUDAGraph] = None
        self._stream: Optional[torch.cuda.Stream] = None
        self._graph_lrs: list[float] = []
        self._static: dict[str, torch.Tensor] = {}

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def _forward_backward(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.controller.reset_autorelu()  # the device half of the noise step: recorded with the rest
        with self._autocast(inputs.device):
            logits = self.net(inputs)
        loss = self.criterion(logits.float(), labels)
        self.last_step_skipped = self.skip_nonfinite and not self._all_finite(loss)
        if not self.last_step_skipped:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.controller.step_autorelu()
        return loss.detach(), logits.detach()

    def _all_finite(self, loss: torch.Tensor) -> bool:
        bad = (~torch.isfinite(loss.detach())).to(torch.float32).reshape(1)
        if self.reduce is not None:
            self.reduce(bad)
        return not bool(bad)

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.controller.advance_step()  # the host half of the noise step
        if self._full_shape is None:
            self._full_shape = inputs.shape
        if not self.capture or inputs.shape != self._full_shape:
            return self._forward_backward(inputs, labels)
        if self._warm < WARMUP_STEPS:
            return self._warmup(inputs, labels)
        return self._replay(inputs, labels)

    def _side_stream(self, device: torch.device) -> torch.cuda.Stream:
        # One stream for warm-up and recording, so that per-stream library handles
        # (cuBLAS workspaces) exist before recording starts.
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        return self._stream

    def _warmup(self, inputs: torch.Tensor, labels: torch.Tensor):
        side = self._side_stream(inputs.device)
        side.wait_stream(torch.cuda.current_stream(inputs.device))
        with torch.cuda.stream(side):
            out = self._forward_backward(inputs, labels)
        torch.cuda.current_stream(inputs.device).wait_stream(side)
        self._warm += 1
        return out

    def _replay(self, inputs: torch.Tensor, labels: torch.Tensor):
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        if self._graph is None or lrs != self._graph_lrs:
            self._record(inputs, labels, lrs)
        self._static["inputs"].copy_(inputs)
        self._static["labels"].copy_(labels)
        self._graph.replay()
        return self._static["loss"], self._static["logits"]

    def _record(self, inputs: torch.Tensor, labels: torch.Tensor, lrs: list[float]) -> None:
        self._graph = None  # frees the previous graph's memory before recording anew
        torch.cuda.synchronize(inputs.device)
        static_inputs, static_labels = inputs.clone(), labels.clone()
        graph = torch.cuda.CUDAGraph()
        # Gradients are allocated inside the graph's memory pool and stay there.
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph, stream=self._side_stream(inputs.device)):
            loss, logits = self._forward_backward(static_inputs, static_labels)
        self._static = {"inputs": static_inputs, "labels": static_labels, "loss": loss, "logits": logits}
        self._graph, self._graph_lrs = graph, lrs
