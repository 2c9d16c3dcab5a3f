"""Speed only: the noise modules' shortcuts for the CPU and their graph-safe forms; no value differs.

:mod:`fernoise.noise` states the method as tensor maths. Two things about where those
tensors live belong to speed, not to the method, and are decided here, in one place:

* **The periodic flag is a device tensor.** :class:`~fernoise.noise.SignFlip` keeps its
  flag as a 0-d tensor ``sign`` (+1 or -1) on the model's device, so that a step recorded
  in a CUDA graph (:mod:`fernoise.step`) or compiled by ``torch.compile`` reads the flag at
  replay time instead of freezing a Python branch. :func:`apply_sign` multiplies by it,
  or, where the flag can be read for free, negates or passes the input through.
* **Looking at data is free only on the CPU.** The exact AutoReLU (``grad="exact"``) may
  skip its sign pass while no weight is negative and its cliff pass while every value
  lies below the cliff. Deciding that needs a look at the values: free on the CPU, a
  device sync on a GPU and impossible inside a captured graph. :func:`may_be_negative`
  and :func:`all_below` answer where answering is free and otherwise give the answer
  that skips nothing.

Each function returns bit for bit what its plain form returns (``x * sign``, the unskipped
passes); ``tests/test_noise.py`` and ``tests/test_pinned_numerics.py`` hold both paths to it.
"""
from __future__ import annotations

import torch


def host_readable(t: torch.Tensor) -> bool:
    """Whether Python may look at ``t``'s values at no cost: a CPU tensor, outside ``torch.compile`` tracing."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def apply_sign(x: torch.Tensor, sign: torch.Tensor | float) -> torch.Tensor:
    """``x * sign`` for a ``sign`` of +1 or -1 (a number or 0-d tensor): where it can be read for free,
    ``-x`` or ``x`` itself (no multiply)."""
    if not isinstance(sign, torch.Tensor):
        return -x if sign < 0 else x
    if host_readable(sign):
        return -x if sign.item() < 0 else x
    return x * sign


def may_be_negative(w: torch.Tensor) -> bool:
    """False only when ``w`` is known, for free, to hold no negative value."""
    return not host_readable(w) or bool((w < 0).any())


def all_below(y: torch.Tensor, limit: torch.Tensor) -> bool:
    """True only when every value of ``y`` is known, for free, to lie below every ``limit`` (False for NaN)."""
    return host_readable(y) and y.numel() > 0 and bool(y.max() < limit.min())
