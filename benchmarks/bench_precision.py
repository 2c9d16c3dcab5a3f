"""bf16 against fp32 on this machine: training speed per network shape, and what it does to accuracy.

    python benchmarks/bench_precision.py                       # speed: images/s of a train step, per shape
    python benchmarks/bench_precision.py --accuracy --data ../shared/data/fer2013-trainval.tar.gz

Speed: one SGD train step (forward, loss, backward, update) of fernoise's ResNet-18 on random
48x48 grey batches, for each stem and width below, in fp32, fp32 channels_last and bf16 autocast
with channels_last; prints images/s and the ratio to fp32 (the named baseline). bf16 pays where the
CPU multiplies bf16 natively (AMX) and most where the feature maps are large.

Accuracy (``--accuracy``): the fast recipe's preset, shortened (``--epochs``, ``--train-limit``),
trained with fp32 and with bf16 for two seeds each; prints each run's final PublicTest accuracy and
macro-F1, the bf16 - fp32 difference per seed and the seed-to-seed difference it is to be read
against. Prints the CPU first (model name, AVX-512, AVX512-BF16, AMX).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from fernoise.config import preset_path, resolve_config
from fernoise.models import build_model
from fernoise.train import train

SHAPES = (("imagenet", 64), ("half", 32), ("half", 64), ("small", 16))


def cpu_description() -> str:
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = {
        "AVX-512": getattr(torch.cpu, "_is_avx512_supported", lambda: False)(),
        "AVX512-BF16": getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)(),
        "AMX": getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)(),
    }
    return f"{name}, {torch.get_num_threads()} threads; " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items())


def images_per_second(stem: str, width: int, mode: str, batch: int, seconds: float) -> float:
    torch.manual_seed(0)
    model = build_model(in_channels=1, stem=stem, width=width)
    x, y = torch.randn(batch, 1, 48, 48), torch.randint(0, 7, (batch,))
    if mode != "fp32":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps * batch / (time.perf_counter() - start)


def speed(batch: int, seconds: float) -> None:
    print("| stem, width | fp32 | fp32 channels_last | bf16 channels_last |\n|---|---|---|---|")
    for stem, width in SHAPES:
        rates = [images_per_second(stem, width, mode, batch, seconds) for mode in ("fp32", "fp32-cl", "bf16")]
        cells = [f"{rates[0]:.0f}"] + [f"{r:.0f} ({r / rates[0]:.2f}x)" for r in rates[1:]]
        print(f"| {stem}, {width} | " + " | ".join(cells) + " |", flush=True)


def accuracy(data: str, epochs: int, train_limit: int) -> None:
    results: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (0, 1):
            for precision in ("fp32", "bf16"):
                cfg = resolve_config(preset_path("fer2013-fast"), data=data, seed=seed, precision=precision,
                                     epochs=epochs, warmup_epochs=min(1.0, epochs / 4), train_limit=train_limit)
                summary = train(cfg, Path(tmp) / f"{precision}-{seed}", quiet=True, log=lambda _: None)
                results[precision, seed] = summary
                print(json.dumps({"precision": precision, "seed": seed, "acc": round(summary["final_val_acc"], 4),
                                  "f1": round(summary["final_val_f1"], 4),
                                  "images_per_s": round(summary["train_images_per_second"])}), flush=True)
    for key in ("final_val_acc", "final_val_f1"):
        per_seed = [results["bf16", s][key] - results["fp32", s][key] for s in (0, 1)]
        seeds = results["fp32", 1][key] - results["fp32", 0][key]
        print(f"{key}: bf16 - fp32 per seed {per_seed[0]:+.4f} {per_seed[1]:+.4f}; fp32 seed 1 - seed 0 {seeds:+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per measurement")
    parser.add_argument("--accuracy", action="store_true", help="train fp32 and bf16 runs instead of timing steps")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" /
                                              "fer2013-trainval.tar.gz"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-limit", type=int, default=8192)
    args = parser.parse_args()
    print(cpu_description(), flush=True)
    if args.accuracy:
        accuracy(args.data, args.epochs, args.train_limit)
    else:
        speed(args.batch, args.seconds)


if __name__ == "__main__":
    main()
