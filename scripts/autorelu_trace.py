"""Replay the common AutoReLU weight of ``--autorelu-grad exact`` without any model or data.

    python scripts/autorelu_trace.py --init 0.1 --steps 20000 [--lr 1e-4] [--weight-decay 1e-4]

With the exact gradient dL/dw is zero, so the common weight is Adam (coupled weight decay) on a
lone parameter whose gradient is zero, whatever the data and seed (pinned by
tests/test_noise.py::test_autorelu_weight_follows_the_optimizer_alone_whatever_the_data). This
prints that schedule: the first noisy step, the sign changes and the noisy share. Traces of real
training, in either gradient mode, come from ``fernoise trace-autorelu``.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch


def replay(init: float, lr: float, weight_decay: float, steps: int) -> np.ndarray:
    """The common weight before each of ``steps`` Adam steps with a zero loss gradient."""
    w = torch.nn.Parameter(torch.tensor([init]))
    optimizer = torch.optim.Adam([w], lr=lr, weight_decay=weight_decay)
    trace = []
    for _ in range(steps):
        trace.append(float(w.detach()))
        w.grad = torch.zeros_like(w)
        optimizer.step()
    return np.array(trace)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", type=float, default=0.01)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--steps", type=int, default=8980, help="default: 20 FER2013 epochs at batch 64")
    args = parser.parse_args()
    trace = replay(args.init, args.lr, args.weight_decay, args.steps)
    noisy = trace < 0
    first = f"step {np.argmax(noisy) + 1}" if noisy.any() else "never"
    print(f"{len(trace)} steps, init {args.init}, lr {args.lr:g}, weight decay {args.weight_decay:g}")
    print(f"noise on in {noisy.mean():.1%} of steps (first: {first}), "
          f"{int(np.count_nonzero(noisy[1:] != noisy[:-1]))} sign changes, final w {trace[-1]:.3g}")


if __name__ == "__main__":
    main()
