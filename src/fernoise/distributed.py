"""Devices and processes: the training device, and DistributedDataParallel under torchrun.

``torchrun --nproc_per_node=N -m fernoise train ...`` starts N processes with
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set; each trains on its shard of every
batch (``batch_size / N`` images), gradients are averaged by DDP, and only rank 0
writes files. NCCL is used on GPUs (with BatchNorm synchronised across ranks, so
batch statistics are those of the global batch), gloo on CPUs (where PyTorch has no
synchronised BatchNorm: each rank normalises with its own shard's statistics).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


class DeviceError(RuntimeError):
    """The requested device or process group cannot be used."""


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks, in place."""
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DDP around ``model`` (BatchNorm synchronised on GPUs); ``model`` itself when alone."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            from fernoise.inject import convert_sync_batchnorm

            model = convert_sync_batchnorm(model)
            return DistributedDataParallel(model, device_ids=[device.index])
        return DistributedDataParallel(model)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the torchrun process group when ``WORLD_SIZE > 1``; return it and this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(), resolve_device(device_name)
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if device_name == "cuda" and not use_cuda:
        raise DeviceError("--device cuda was asked for but no CUDA device is available")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size()), device
