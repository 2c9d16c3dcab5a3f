"""Feature-level noise injection: the sign flip, CliffReLU, AutoReLU and Algorithm 1.

Hong & Jeong, "Dynamic Noise Injection for Facial Expression Recognition In-the-Wild",
CVPR 2023 workshops (ABAW), section 3.

Both methods inject the same noise, a sign flip of the feature map that leaves a
BatchNorm layer, ``x -> -x``, so that the ReLU after it passes the half of the
distribution it normally blocks. They differ in *when* the noise is on:

* **periodic** (section 3.1, Algorithm 1): :class:`PeriodicSchedule` toggles a flag
  every ``T`` epochs; while it is set, every :class:`SignFlip` negates its input.
* **dynamic** (section 3.2): the ReLU of the unit becomes an :class:`AutoReLU`,
  ``y = CliffReLU(x * w) / |w|``. For ``w > 0`` this is a ReLU (with a far-away
  cliff); for ``w < 0`` it is the ReLU of ``-x``: the sign-flip noise. Before every
  training step all AutoReLU weights are reset to their common mean
  (:func:`sync_autorelu`), so the whole network is either clean or noisy; the
  optimizer's updates of the weights decide when the sign of that mean changes.

Evaluation never sees noise: :class:`SignFlip` is the identity and :class:`AutoReLU`
uses ``|w|`` outside training mode. :class:`NoiseController` drives both from a
training loop. What exists only for speed (the flag as a device tensor for captured
graphs, shortcuts that look at the data on the CPU) is decided in :mod:`fernoise.fastpath`.

Layout, as timm's ``layers/drop.py``: functional forms, then modules, then the schedule
and the controller that drive them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Optional, get_args

import torch
from torch import nn

from fernoise import fastpath

__all__ = [
    "sign_flip",
    "cliff_relu",
    "auto_relu",
    "SignFlip",
    "CliffReLU",
    "AutoReLU",
    "AutoReLUOptions",
    "PeriodicSchedule",
    "sync_autorelu",
    "autorelu_weight",
    "set_sign_flip",
    "AutoReLUTrace",
    "NoiseController",
]

ScheduleUnit = Literal["epoch", "step"]
SyncScope = Literal["global", "layer"]
AutoReLUGrad = Literal["autograd", "exact"]

SCHEDULE_UNITS: tuple[str, ...] = get_args(ScheduleUnit)
SYNC_SCOPES: tuple[str, ...] = get_args(SyncScope)
AUTORELU_GRADS: tuple[str, ...] = get_args(AutoReLUGrad)
DEFAULT_CLIFF = 6.0
DEFAULT_AUTORELU_INIT = 0.01
DEFAULT_AUTORELU_GRAD: AutoReLUGrad = "autograd"
# Division guard: far below any |w| the training reaches by chance (the common weight moves by
# about 1e-6 per step near zero), since below it w gets no gradient from the formula.
AUTORELU_EPS = 1e-20


# --------------------------------------------------------------------------- functional forms


def sign_flip(x: torch.Tensor, sign: torch.Tensor | float, training: bool = True) -> torch.Tensor:
    """The periodic noise (section 3.1): ``sign * x`` in training, ``x`` outside it.

    ``sign`` is ``-1`` while Algorithm 1's flag is set and ``+1`` otherwise (a number, or
    the 0-d tensor that :class:`SignFlip` keeps on the model's device).
    """
    return fastpath.apply_sign(x, sign) if training else x


def cliff_relu(x: torch.Tensor, constant: float = DEFAULT_CLIFF) -> torch.Tensor:
    """Equation 1: ``x`` where ``0 < x < constant``, else ``0``.

    Above the cliff the output drops to zero (unlike ReLU6, which saturates).
    """
    return x * ((x > 0) & (x < constant)).to(x.dtype)


def auto_relu(
    x: torch.Tensor,
    w: torch.Tensor,
    constant: float = DEFAULT_CLIFF,
    training: bool = True,
    eps: float = AUTORELU_EPS,
    grad: AutoReLUGrad = DEFAULT_AUTORELU_GRAD,
) -> torch.Tensor:
    """Equation 2 with the text's ``|w|``: ``CliffReLU(x * w) / |w|``.

    ``w`` broadcasts over ``x`` (a scalar or one value per channel of dimension 1).
    In training mode a negative ``w`` gives ``ReLU(-x)`` up to the cliff at
    ``constant / |w|``: the sign-flip noise. Outside training the noise is removed
    by using ``|w|``: ``CliffReLU(x * |w|) / |w|``. ``|w|`` below ``eps`` (or below the
    smallest normal number of ``w``'s dtype) is replaced by it with ``w``'s sign (zero counts
    as positive), so no inf or NaN can arise.

    ``grad`` chooses how the backward pass is computed; the forward values agree up
    to one rounding and the gradient of ``x`` is ``sign(w)`` (1 outside training)
    inside ``0 < x * w < constant`` and 0 elsewhere in both:

    * ``"autograd"`` (default, the paper's formula as written in PyTorch):
      autograd differentiates ``x * w``, the cliff and the division. Analytically
      ``dL/dw = sum(g * x * [cliff]) / |w| - sum(g * y) * sign(w) / |w|`` is zero, but
      the two float sums do not cancel exactly; their residue, different for every
      channel and batch and scaled up by Adam, is what spreads the weights apart
      before each mean reset. Under bf16 autocast the output is fp32 (``x * w``
      promotes), as it would be in a user's own module.
    * ``"exact"``: one autograd Function with the analytic gradients, ``dL/dw``
      exactly zero; about 2% cheaper per ResNet-18 step on a CPU, deterministic, and
      keeps the input's dtype. Every weight then gets the same update (weight decay
      only), so the mean reset changes nothing.
    """
    if grad == "exact":
        return _ExactAutoReLU.apply(x, w, float(constant), bool(training), float(eps))
    if grad == "autograd":
        return _auto_relu_autograd(x, w, float(constant), bool(training), float(eps))
    raise ValueError(f"AutoReLU grad must be one of {AUTORELU_GRADS}, got {grad!r}")


def _per_channel(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel ``w`` shaped to broadcast over dimension 1 of ``x``; a scalar ``w`` as it is."""
    return w.view(1, -1, *([1] * (x.dim() - 2))) if w.dim() == 1 and x.dim() > 1 else w


def _guarded(w: torch.Tensor, eps: float) -> torch.Tensor:
    """``w`` with ``|w|`` at least ``eps`` (and a normal number of its dtype), its sign kept (zero
    counts as positive). A guarded weight gets no gradient through the formula: the guard must sit
    where training never goes (a guard at 1e-6 trapped the common weight, RESULTS.md)."""
    eps = max(eps, torch.finfo(w.dtype).tiny)
    return torch.where(w.abs() < eps, torch.where(w < 0, -eps, eps).to(w.dtype), w)


def _auto_relu_autograd(x: torch.Tensor, w: torch.Tensor, constant: float, training: bool,
                        eps: float) -> torch.Tensor:
    """The composite formula, its gradients left to autograd (rounding residue in ``dL/dw`` included)."""
    w = _per_channel(w, x)
    w = _guarded(w if training else w.abs(), eps)
    return cliff_relu(x * w, constant) / w.abs()


class _ExactAutoReLU(torch.autograd.Function):
    """``CliffReLU(x * w) / |w|`` with its analytic gradients.

    Inside the linear region ``y = x * w / |w| = x * sign(w)``, so ``dy/dx = sign(w)``
    and ``dy/dw = 0``; outside it ``y = 0``. The forward computes ``x * sign(w)`` and
    cuts it at ``constant / |w|`` (the cliff ``x * w >= constant``), without the two
    roundings of the formula. ``dL/dw`` is returned as a zero tensor, not ``None``,
    so that the optimizer still applies weight decay to ``w``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, constant: float, training: bool,
                eps: float) -> torch.Tensor:
        w = _per_channel(weight.detach(), x)
        # Sign and cliff come from w in its own precision (a tiny w must keep its sign
        # under fp16); the guard keeps |w| >= eps, and w == 0 counts as positive.
        limit = (constant / w.abs().clamp(min=eps)).to(x.dtype)
        # The sign pass is skipped (sign None) outside training and, where that is free to
        # see, while no weight is negative; the cliff pass while every value lies below it.
        flips = training and fastpath.may_be_negative(w)
        sign = torch.ones_like(w).masked_fill_(w < 0, -1.0).to(x.dtype) if flips else None
        y = x if sign is None else x * sign
        # NaN passes through, as through ReLU, so that a diverging run is noticed.
        y = y.relu() if fastpath.all_below(y, limit) else torch.where(y >= limit, 0, y).relu_()
        # A mask, not y itself: a network's own in-place ReLU may follow (torchvision
        # blocks do, after inject_noise) and would invalidate a saved output.
        ctx.save_for_backward(y > 0, sign)
        ctx.weight_shape = weight.shape
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        passed, sign = ctx.saved_tensors
        grad_x = grad * (passed if sign is None else passed * sign)
        return grad_x, grad.new_zeros(ctx.weight_shape), None, None, None


# --------------------------------------------------------------------------- modules


class SignFlip(nn.Module):
    """Injection point of the periodic method, placed right after a BatchNorm: :func:`sign_flip`.

    Its flag is one 0-d tensor, ``sign`` (+1 off, -1 on), on the model's device, set by
    :class:`NoiseController` (or :func:`set_sign_flip`, or ``active = ...``). A step
    recorded in a CUDA graph or compiled by ``torch.compile`` thus follows the schedule
    without being recorded again (:mod:`fernoise.fastpath`). ``sign`` is not persistent:
    the module leaves a model's ``state_dict`` unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("sign", torch.ones(()), persistent=False)

    @property
    def active(self) -> bool:
        """Whether the flip is on (reads the device flag: a sync on a GPU; for inspection)."""
        return bool(self.sign < 0)

    @active.setter
    def active(self, on: bool) -> None:
        self.sign.fill_(-1.0 if on else 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_flip(x, self.sign, self.training)

    def extra_repr(self) -> str:
        return f"active={self.active}"


class CliffReLU(nn.Module):
    """Module form of :func:`cliff_relu`."""

    def __init__(self, constant: float = DEFAULT_CLIFF) -> None:
        super().__init__()
        self.constant = float(constant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cliff_relu(x, self.constant)

    def extra_repr(self) -> str:
        return f"constant={self.constant}"


class AutoReLU(nn.Module):
    """ReLU replacement of the dynamic method: ``y = CliffReLU(x * w) / |w|`` (:func:`auto_relu`).

    Args:
        num_channels: size of ``w`` when ``per_channel`` (one weight per channel,
            dimension 1 of the input); ignored for a scalar ``w``.
        init: initial value of every weight. The paper requires ``0 < init < 1``.
            Adam at the paper's learning rate (1e-4) moves it by at most about 1e-4 per
            step: from the default 0.01 the common weight reaches zero within the first
            FER2013 epoch, from 0.1 it is still at 0.013 after three (RESULTS.md).
        constant: the cliff of :func:`cliff_relu`. Default 6 (the ReLU6 bound): for
            ``|w| <= 1`` the cliff sits at ``x >= 6 / |w|``, beyond six standard
            deviations of a BatchNorm output, so in its clean phase AutoReLU acts
            as the baseline's ReLU and only cuts rare outliers.
        per_channel: one weight per channel (default) or a single scalar.
        grad: ``"autograd"`` (default: the paper's formula, differentiated by
            autograd) or ``"exact"`` (analytic gradients, ``dL/dw = 0``); see
            :func:`auto_relu`.

    **What moves ``w``.** Where the cliff is not hit, ``y = x * sign(w)``, and
    beyond it ``y = 0``: the loss gradient with respect to ``w`` is zero wherever it
    exists. With ``grad="exact"`` that zero is returned, and the optimizer's weight
    decay alone drives ``w``: Adam with coupled weight decay sees the gradient
    ``wd * w`` and steps by about ``lr`` towards zero at first; its momentum carries
    the common weight across zero, so the schedule of sign changes is a fixed
    function of init, lr and weight decay. With ``grad="autograd"`` the float residue
    of the two cancelling sums is added to that gradient; Adam divides each weight's
    gradient by its own running magnitude, so a residue far smaller than ``wd * w``
    still moves each weight by up to about ``lr`` per step, differently for every
    channel, batch and seed (RESULTS.md measures both on FER2013). Plain SGD, or
    AdamW's decoupled decay, shrinks ``w`` geometrically instead and never makes it
    change sign.

    **Division guard.** ``|w|`` below ``1e-20`` (``w == 0`` included) is replaced
    by ``1e-20`` with ``w``'s sign (zero counts as positive), so no inf or NaN can
    arise. The guard is far below where the weight goes: a guarded ``w`` gets no
    gradient from the formula, so with ``grad="autograd"`` a guard at ``1e-6`` (fernoise
    before 2026-11-29) held the common weight on one side of zero for good once it came
    that close (RESULTS.md). Sign and cliff are taken from ``w`` in its own precision, so
    under bf16 or fp16 autocast a tiny ``w`` keeps its sign and the output keeps the
    input's dtype.
    """

    def __init__(
        self,
        num_channels: int = 1,
        init: float = DEFAULT_AUTORELU_INIT,
        constant: float = DEFAULT_CLIFF,
        per_channel: bool = True,
        grad: AutoReLUGrad = DEFAULT_AUTORELU_GRAD,
    ) -> None:
        super().__init__()
        if not 0.0 < init < 1.0:
            raise ValueError(f"AutoReLU init must lie in (0, 1) (paper, section 3.2.1), got {init}")
        if constant <= 0:
            raise ValueError(f"AutoReLU cliff constant must be positive, got {constant}")
        if grad not in AUTORELU_GRADS:
            raise ValueError(f"AutoReLU grad must be one of {AUTORELU_GRADS}, got {grad!r}")
        self.constant = float(constant)
        self.per_channel = bool(per_channel)
        self.grad: AutoReLUGrad = grad
        self.weight = nn.Parameter(torch.full((num_channels if per_channel else 1,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.per_channel else self.weight.reshape(())
        return auto_relu(x, w, self.constant, self.training, grad=self.grad)

    @property
    def noise_on(self) -> bool:
        """True when this unit's (mean) weight is negative, i.e. it flips signs in training."""
        return bool(self.weight.detach().mean() < 0)

    def extra_repr(self) -> str:
        return (f"channels={self.weight.numel()}, constant={self.constant}, per_channel={self.per_channel}, "
                f"grad={self.grad!r}")


@dataclass(frozen=True)
class AutoReLUOptions:
    """How every :class:`AutoReLU` of a model is built; each field as the module's argument of that name."""

    init: float = DEFAULT_AUTORELU_INIT
    constant: float = DEFAULT_CLIFF
    per_channel: bool = True
    grad: AutoReLUGrad = DEFAULT_AUTORELU_GRAD

    def make(self, num_channels: int) -> AutoReLU:
        """An AutoReLU for ``num_channels`` channels (checks the options)."""
        return AutoReLU(num_channels, init=self.init, constant=self.constant, per_channel=self.per_channel,
                        grad=self.grad)


def set_sign_flip(model: nn.Module, active: bool) -> None:
    """Switch every :class:`SignFlip` in ``model`` on or off."""
    for module in model.modules():
        if isinstance(module, SignFlip):
            module.active = bool(active)


# --------------------------------------------------------------------------- Algorithm 1


class PeriodicSchedule:
    """Algorithm 1 of the paper: when the periodic sign flip is on.

    State: ``step = 0``, ``flag = False``, interval ``T``. Each :meth:`advance`
    does ``step += 1``; the noise of that step is ``flag``; then, if
    ``step % T == T - 1``, the flag toggles. With ``T = 3`` the first eleven
    advances give off off on on on off off off on on on.

    The paper advances once per epoch (``unit="epoch"``); ``unit="step"``
    advances once per optimizer step instead.
    """

    def __init__(self, interval: int, unit: ScheduleUnit = "epoch") -> None:
        if int(interval) < 1:
            raise ValueError(f"periodic interval T must be a positive integer, got {interval!r}")
        if unit not in SCHEDULE_UNITS:
            raise ValueError(f"schedule unit must be 'epoch' or 'step', got {unit!r}")
        self.interval = int(interval)
        self.unit: ScheduleUnit = unit
        self.step = 0
        self.flag = False

    def advance(self) -> bool:
        """Move one tick forward and return whether that tick injects noise."""
        self.step += 1
        noise = self.flag
        if self.step % self.interval == self.interval - 1:
            self.flag = not self.flag
        return noise

    def state_dict(self) -> dict:
        return {"interval": self.interval, "unit": self.unit, "step": self.step, "flag": self.flag}

    def load_state_dict(self, state: dict) -> None:
        self.interval = int(state["interval"])
        self.unit = state["unit"]
        self.step = int(state["step"])
        self.flag = bool(state["flag"])

    def __repr__(self) -> str:
        return f"PeriodicSchedule(interval={self.interval}, unit={self.unit!r}, step={self.step}, flag={self.flag})"


# --------------------------------------------------------------------------- dynamic: the mean reset


def autorelu_units(model: nn.Module) -> list[AutoReLU]:
    """The AutoReLU modules of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, AutoReLU)]


def _all_weights(units: list[AutoReLU]) -> torch.Tensor:
    return torch.cat([u.weight.detach().reshape(-1) for u in units])


@torch.no_grad()
def sync_autorelu(model_or_units: nn.Module | Iterable[AutoReLU], scope: SyncScope = "global") -> Optional[torch.Tensor]:
    """Reset AutoReLU weights to their mean, without tracking gradients (section 3.2, step 2).

    ``scope="global"`` (the paper): every weight of every AutoReLU becomes the mean
    of all of them. ``scope="layer"``: each AutoReLU's weights become that layer's
    mean. Returns the global mean (a 0-d tensor), or None when there is no AutoReLU.
    """
    units = autorelu_units(model_or_units) if isinstance(model_or_units, nn.Module) else list(model_or_units)
    if not units:
        return None
    mean = _all_weights(units).mean()
    for unit in units:
        unit.weight.fill_(mean if scope == "global" else unit.weight.mean())
    return mean


def autorelu_weight(model: nn.Module) -> Optional[float]:
    """The mean AutoReLU weight of ``model`` (its common weight once synced), or None."""
    units = autorelu_units(model)
    return float(_all_weights(units).mean()) if units else None


# --------------------------------------------------------------------------- driving them in training

TRACE_COLUMNS = ("w", "w_min", "w_max", "grad_mean", "grad_absmax")


class AutoReLUTrace:
    """Per-step record of the AutoReLU weights, for seeing when dynamic noise is on.

    For every training step one row of :data:`TRACE_COLUMNS`: the common weight
    after the mean reset (noise is on when it is negative), the smallest and largest
    weight just before the reset (how far the last update spread the units apart),
    and the mean and largest magnitude of the raw loss gradient of the weights in
    that step (before weight decay; this process's own under torchrun). Rows stay on
    the weights' device until :meth:`take` (no host sync per step).
    """

    def __init__(self, units: list[AutoReLU]) -> None:
        self._numel = sum(u.weight.numel() for u in units)
        self._rows: list[torch.Tensor] = []
        self._weights: Optional[torch.Tensor] = None
        self._grads: list[torch.Tensor] = []
        self._hooks = [u.weight.register_post_accumulate_grad_hook(self._on_grad) for u in units]

    def _on_grad(self, weight: torch.Tensor) -> None:
        grad = weight.grad.detach().float()
        self._grads.append(torch.stack([grad.sum(), grad.abs().max()]))

    def _close_step(self) -> None:
        if self._weights is None:
            return
        if self._grads:
            grads = torch.stack(self._grads)
            grad = torch.stack([grads[:, 0].sum() / self._numel, grads[:, 1].max()])
        else:  # a skipped step (non-finite loss) has no gradient
            grad = torch.full((2,), float("nan"), device=self._weights.device)
        self._rows.append(torch.cat([self._weights, grad]))
        self._weights, self._grads = None, []

    def before_reset(self, weights: torch.Tensor, mean: torch.Tensor) -> None:
        """Open the row of a new step from all weights (flattened) before the reset and their mean."""
        self._close_step()
        self._weights = torch.stack([mean, weights.min(), weights.max()]).float()

    def take(self) -> list[list[float]]:
        """The rows recorded since the last call, as Python floats (one host sync)."""
        self._close_step()
        rows = torch.stack(self._rows).tolist() if self._rows else []
        self._rows = []
        return rows

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


class NoiseController:
    """Drives a model's injection points from a training loop.

    Call :meth:`start_epoch` at the start of every epoch and :meth:`start_step`
    before every training forward pass::

        noise = NoiseController(model, PeriodicSchedule(3))
        for epoch in range(epochs):
            noise.start_epoch()
            for x, y in batches:
                noise.start_step()
                loss = criterion(model(x), y)
                ...
            print(noise.epoch_noise_fraction())

    For periodic models it advances the schedule (per epoch or per step) and
    switches the :class:`SignFlip` modules; for dynamic models it resets the
    AutoReLU weights to their mean before each step. It counts, on the weights'
    device, how many steps of the epoch had noise on, without a device sync per step.
    With ``trace=True`` a dynamic model's weights are also recorded every step
    (:class:`AutoReLUTrace`, read with :meth:`take_trace`); not inside a CUDA graph.

    A step recorded in a CUDA graph (:mod:`fernoise.step`) calls the two halves of
    :meth:`start_step` itself: :meth:`advance_step` on the host before the graph, and
    :meth:`reset_autorelu`, tensor operations only, inside it.

    ``autorelu_adam``, an optimizer of the AutoReLU weights alone
    (:func:`fernoise.optim.build_autorelu_adam`), is stepped by :meth:`step_autorelu` after
    each update of the rest, and its state is part of :meth:`state_dict`.
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: Optional[PeriodicSchedule] = None,
        sync_scope: SyncScope = "global",
        trace: bool = False,
        autorelu_adam: Optional[torch.optim.Optimizer] = None,
    ) -> None:
        self.flips = [m for m in model.modules() if isinstance(m, SignFlip)]
        self.autorelus = autorelu_units(model)
        if self.flips and schedule is None:
            raise ValueError("the model has periodic injection points (SignFlip) but no PeriodicSchedule was given")
        self.schedule = schedule if self.flips else None
        self.sync_scope: SyncScope = sync_scope
        self.trace = AutoReLUTrace(self.autorelus) if trace and self.autorelus else None
        self.autorelu_adam = autorelu_adam
        self._periodic_on = False
        self._steps = 0
        self._noisy_periodic = 0  # host count (periodic)
        self._noisy_dynamic: Optional[torch.Tensor] = None  # device count (dynamic), zeroed in place

    @property
    def method(self) -> str:
        if self.flips:
            return "periodic"
        return "dynamic" if self.autorelus else "none"

    def _set_periodic(self, on: bool) -> None:
        self._periodic_on = on
        for flip in self.flips:
            flip.active = on

    def start_epoch(self) -> None:
        self._steps, self._noisy_periodic = 0, 0
        if self._noisy_dynamic is not None:
            self._noisy_dynamic.zero_()  # in place: a recorded CUDA graph keeps counting into it
        if self.schedule is not None and self.schedule.unit == "epoch":
            self._set_periodic(self.schedule.advance())

    def start_step(self) -> None:
        """Everything before one training forward pass: :meth:`advance_step`, then :meth:`reset_autorelu`."""
        self.advance_step()
        self.reset_autorelu()

    def advance_step(self) -> None:
        """The host half of a step: count it, advance a per-step schedule, count periodic noise."""
        self._steps += 1
        if self.schedule is not None and self.schedule.unit == "step":
            self._set_periodic(self.schedule.advance())
        if not self.autorelus:  # a dynamic model counts from its weights (reset_autorelu)
            self._noisy_periodic += int(self._periodic_on)

    def reset_autorelu(self) -> None:
        """The device half: reset the AutoReLU weights to their mean and count the step noisy when it
        is negative (tensor operations only, into tensors that persist: safe inside a CUDA graph)."""
        if not self.autorelus:
            return
        if self.trace is not None:
            weights = _all_weights(self.autorelus)
            self.trace.before_reset(weights, weights.mean())
        mean = sync_autorelu(self.autorelus, self.sync_scope)
        if self._noisy_dynamic is None or self._noisy_dynamic.device != mean.device:
            self._noisy_dynamic = torch.zeros((), dtype=torch.int64, device=mean.device)
        self._noisy_dynamic += (mean < 0).to(torch.int64)

    def step_autorelu(self) -> None:
        """After the run's optimizer step: update the AutoReLU weights with their own optimizer, if they have one."""
        if self.autorelu_adam is not None:
            self.autorelu_adam.step()
            self.autorelu_adam.zero_grad(set_to_none=True)

    def take_trace(self) -> list[list[float]]:
        """The :class:`AutoReLUTrace` rows since the last call (empty without ``trace``)."""
        return self.trace.take() if self.trace is not None else []

    @property
    def noise_on(self) -> bool:
        """Whether the current (last started) step injects noise."""
        if self.autorelus:
            return bool(_all_weights(self.autorelus).mean() < 0)
        return self._periodic_on

    def epoch_noise_fraction(self) -> float:
        """Fraction of this epoch's steps (so far) with noise on."""
        if self._steps == 0:
            return float(self._periodic_on)
        noisy = self._noisy_periodic + (int(self._noisy_dynamic) if self._noisy_dynamic is not None else 0)
        return noisy / self._steps

    def state_dict(self) -> dict:
        state = {"schedule": self.schedule.state_dict() if self.schedule else None, "periodic_on": self._periodic_on}
        if self.autorelu_adam is not None:
            state["autorelu_adam"] = self.autorelu_adam.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if self.schedule is not None and state.get("schedule"):
            self.schedule.load_state_dict(state["schedule"])
        if self.autorelu_adam is not None and state.get("autorelu_adam"):
            self.autorelu_adam.load_state_dict(state["autorelu_adam"])
        self._set_periodic(bool(state.get("periodic_on", False)) and self.schedule is not None)
