"""The optimisation of a run: optimizer, learning-rate schedule and weight average, built from its config.

``adam`` (the paper's, with coupled weight decay), ``adamw`` or ``sgd`` (optionally Nesterov); schedules
``none``, ``cosine`` (stepped per epoch) and ``onecycle`` (per step: a linear warm-up, then a linear decay
over the whole budget); ``ema``: an exponential moving average of the parameters, with BatchNorm statistics
re-estimated for it before each evaluation, which is what gets evaluated and saved.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from fernoise.config import TrainConfig
from fernoise.noise import autorelu_units


def build_optimizer(cfg: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The run's optimizer over every parameter but the AutoReLU weights that :func:`build_autorelu_adam` drives."""
    apart = {id(unit.weight) for unit in autorelu_units(model)} if cfg.autorelu_adam_lr is not None else set()
    params = [p for p in model.parameters() if id(p) not in apart]
    fused = device.type == "cuda"
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, fused=fused)
    # A captured step needs Adam's step counters on the device (capturable).
    adam = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # Adam: coupled (L2) weight decay as in the paper; it is also what moves AutoReLU's w.
    return adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused, capturable=cfg.capture)


def build_autorelu_adam(cfg: TrainConfig, model: nn.Module) -> Optional[torch.optim.Adam]:
    """With ``autorelu_adam_lr``: an Adam of the AutoReLU weights' own, the paper's optimizer (constant lr,
    the run's weight decay coupled), for a run whose optimizer would not move them through zero (SGD:
    :meth:`TrainConfig.dynamic_without_drive`). Stepped after the run's optimizer
    (:meth:`fernoise.noise.NoiseController.step_autorelu`); no schedule, so the noise keeps switching to the end."""
    weights = [unit.weight for unit in autorelu_units(model)]
    if cfg.autorelu_adam_lr is None or not weights:
        return None
    return torch.optim.Adam(weights, lr=cfg.autorelu_adam_lr, weight_decay=cfg.weight_decay)


STEPWISE_SCHEDULERS = ("onecycle",)  # stepped after every batch; the others after every epoch


def onecycle_factor(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The one-cycle multiplier of the learning rate at step ``s`` (0-based): a linear rise over
    ``warmup_steps`` to 1, then a linear fall that reaches ``1 / (total_steps - warmup_steps)``
    at the last step, so the whole budget anneals (no step is spent at zero)."""
    def factor(step: int) -> float:
        rise = (step + 1) / (warmup_steps + 1) if warmup_steps else 1.0
        return max(0.0, min(rise, (total_steps - step) / (total_steps - warmup_steps)))
    return factor


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer,
               steps_per_epoch: int) -> Optional[torch.optim.lr_scheduler.LRScheduler]:
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.scheduler == "onecycle":
        warmup = min(round(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch - 1)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, onecycle_factor(cfg.epochs * steps_per_epoch, warmup))
    return None


def ema_warmup_update(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """The exponential moving average's update after ``n`` earlier ones: ``avg += (1 - d) * (w - avg)`` with
    ``d = min(decay, (1 + n) / (10 + n))``, the warm-up of TensorFlow's ExponentialMovingAverage, so that the
    first steps' average follows the weights instead of staying near their random initial values."""
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        done = float(n)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1.0 + done) / (10.0 + done)))
    return update


def weight_average(cfg: TrainConfig, model: nn.Module) -> Optional[torch.optim.swa_utils.AveragedModel]:
    """The exponential moving average of the weights, or None when off.

    Parameters only: BatchNorm statistics averaged alongside do not fit the averaged weights (whose
    activations are smaller, as averaging weights that point in varying directions shortens them),
    which on FER2013 cut validation accuracy from 62% to 44% mid-run (RESULTS.md). The average's
    statistics are re-estimated before each evaluation instead (``bn_recalibrate``, which ``ema`` needs).
    """
    if not cfg.ema:
        return None
    from torch.optim.swa_utils import AveragedModel

    return AveragedModel(model, multi_avg_fn=ema_warmup_update(cfg.ema), use_buffers=False)


def fit_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler, optimizer: torch.optim.Optimizer,
                  epochs: int) -> None:
    """A resumed cosine schedule stretched to a new number of epochs: the learning rate of the
    next epoch is what a run of ``epochs`` epochs would use there (closed form)."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) or scheduler.T_max == epochs:
        return
    scheduler.T_max = epochs
    done = scheduler.last_epoch
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * done / epochs)) / 2
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
