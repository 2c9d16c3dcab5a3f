"""Trace AutoReLU's common weight step by step, to see when dynamic noise switches on.

    python scripts/autorelu_trace.py --init 0.001 --epochs 3 [--data synthetic] [--train-limit 2000]

Trains ResNet-18 with dynamic injection (the paper's Adam, lr 1e-4, weight decay 1e-4, batch 64
unless overridden) and prints the common weight every few steps, the fraction of steps with
noise on and the number of sign changes.
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
    args = parser.parse_args()

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
    trace = np.array(trace)
    every = max(1, len(trace) // 12)
    print(f"{len(trace)} steps, init {args.init}, lr {args.lr:g}, weight decay {args.weight_decay:g}")
    print("common weight every", every, "steps:", " ".join(f"{w:.3g}" for w in trace[::every]))
    print(f"noise on in {np.mean(trace < 0):.1%} of steps, {int((np.diff(np.sign(trace)) != 0).sum())} sign changes")


if __name__ == "__main__":
    main()
