"""Forward+backward time of ResNet-18 with each kind of noise, as a ratio to no noise.

Target (issue 2): at most 3% overhead on the CPU and on a GPU.

    python benchmarks/noise_overhead.py [--device cpu|cuda] [--stem imagenet|small] [--repeats 30]

The variants are timed round-robin (one step of each in turn) so that drifts of
the machine's speed hit all of them alike; the median of the per-round ratios is reported.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from fernoise.models import build_model
from fernoise.noise import NoiseController, PeriodicSchedule, set_sign_flip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--stem", default="imagenet", choices=["imagenet", "small"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    device = torch.device(args.device)

    variants = {}
    for label, noise, flip in [("none", "none", False), ("periodic off", "periodic", False),
                               ("periodic on", "periodic", True), ("dynamic", "dynamic", False)]:
        torch.manual_seed(0)
        model = build_model("resnet18", 7, noise=noise, stem=args.stem, in_channels=1).to(device).train()
        set_sign_flip(model, flip)
        controller = NoiseController(model, PeriodicSchedule(3) if noise == "periodic" else None)
        if noise == "periodic":
            controller.start_step = lambda: None  # keep the forced on/off state
        variants[label] = (model, controller, torch.optim.Adam(model.parameters(), 1e-4, weight_decay=1e-4))

    x = torch.randn(args.batch_size, 1, args.size, args.size, device=device)
    y = torch.randint(0, 7, (args.batch_size,), device=device)

    def step(model, controller, optimizer) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        controller.start_step()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    times = {label: [] for label in variants}
    for i in range(args.repeats + 3):
        for label, parts in variants.items():
            elapsed = step(*parts)
            if i >= 3:  # warm-up
                times[label].append(elapsed)
    # Ratios are taken within each round (one step of every variant), so that the
    # machine's drifts cancel; the median and quartiles of those ratios are shown.
    print(f"device {device}, stem {args.stem}, batch {args.batch_size}, {args.size}x{args.size}, "
          f"threads {torch.get_num_threads()}, {args.repeats} rounds")
    print(f"{'variant':<14} {'median ms':>10} {'ratio':>7} {'quartiles':>15}")
    for label, values in times.items():
        ratios = [v / b for v, b in zip(values, times["none"])]
        q1, median, q3 = statistics.quantiles(ratios, n=4)
        print(f"{label:<14} {statistics.median(values) * 1e3:10.2f} {median:7.3f} {q1:7.3f}-{q3:.3f}")


if __name__ == "__main__":
    main()
