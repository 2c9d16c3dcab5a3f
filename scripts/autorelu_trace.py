"""Trace AutoReLU's common weight step by step, to see when dynamic noise switches on.

    python scripts/autorelu_trace.py --init 0.001 --epochs 3 [--data synthetic] [--train-limit 2000]
    python scripts/autorelu_trace.py --init 0.1 --optimizer-only 20000

Trains ResNet-18 with dynamic injection (the paper's Adam, lr 1e-4, weight decay 1e-4, batch 64
unless overridden) and prints the common weight every few steps, the fraction of steps with
noise on, the first noisy step and the number of sign changes.

``--optimizer-only N`` skips the model: since dL/dw is exactly zero, the common weight follows
Adam on a lone parameter whose gradient is zero, whatever the data; N steps of that are replayed.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from fernoise.config import TrainConfig
from fernoise.data import Augmenter, iterate_batches
from fernoise.models import build_model
from fernoise.noise import NoiseController, autorelu_weight
from fernoise.train import model_kwargs, prepare_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--init", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-limit", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimizer-only", type=int, metavar="STEPS", help="replay Adam alone for STEPS steps")
    args = parser.parse_args()
    trace = (_optimizer_only(args.init, args.lr, args.weight_decay, args.optimizer_only) if args.optimizer_only
             else _train(args))
    every = max(1, len(trace) // 12)
    negative = np.flatnonzero(trace < 0)
    first = f"step {negative[0] + 1}" if len(negative) else "never"
    print(f"{len(trace)} steps, init {args.init}, lr {args.lr:g}, weight decay {args.weight_decay:g}")
    print("common weight every", every, "steps:", " ".join(f"{w:.3g}" for w in trace[::every]))
    print(f"noise on in {np.mean(trace < 0):.1%} of steps (first: {first}), "
          f"{int((np.diff(np.sign(trace)) != 0).sum())} sign changes")


def _optimizer_only(init: float, lr: float, weight_decay: float, steps: int) -> np.ndarray:
    w = torch.nn.Parameter(torch.tensor([init]))
    optimizer = torch.optim.Adam([w], lr=lr, weight_decay=weight_decay)
    trace = []
    for _ in range(steps):
        trace.append(float(w.detach()))
        w.grad = torch.zeros_like(w)
        optimizer.step()
    return np.array(trace)


def _train(args: argparse.Namespace) -> np.ndarray:

    torch.manual_seed(args.seed)
    cfg = TrainConfig(data=args.data, method="dynamic", autorelu_init=args.init, train_limit=args.train_limit,
                      val_limit=1, device="cpu")
    data = prepare_data(cfg, progress=False)
    model = build_model(**model_kwargs(cfg, data.packed))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    noise = NoiseController(model)
    augment = Augmenter("paper", data.packed.size, data.packed.channels, data.packed.mean, data.packed.std)
    generator = torch.Generator().manual_seed(args.seed)
    trace = []
    for _ in range(args.epochs):
        noise.start_epoch()
        for images, labels in iterate_batches(data.train_images, data.train_labels, 64, generator=generator):
            noise.start_step()
            trace.append(autorelu_weight(model))
            loss = torch.nn.functional.cross_entropy(model(augment(images, generator=generator)), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return np.array(trace)


if __name__ == "__main__":
    main()
