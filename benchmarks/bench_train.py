"""End-to-end training throughput: fernoise vs the naive pipeline vs the model-only bound.

    python benchmarks/bench_train.py [--data PATH_OR_ARCHIVE] [--images 4096] [--device cpu|cuda]

* naive: torchvision ``ImageFolder`` + ``DataLoader`` (flip augmentation, decoding JPEGs
  every epoch) feeding a plain fp32 eager train step;
* model only: the same train step on random tensors already on the device (the bound
  for any input pipeline);
* fernoise: ``fernoise.train.train`` on the packed cache (batch augmentation on the
  device, images in device memory on a GPU), images/s of the second epoch's training
  phase; eager fp32, channels_last, bf16 autocast, and on a GPU the captured step
  (CUDA graph) with and without bf16 + channels_last.

ResNet-18 (ImageNet stem), batch 64, Adam, 48x48 grey faces, as in issue 5's anchors.
Prints images/s and the ratios to the naive pipeline.
"""
from __future__ import annotations

import argparse
import csv
import os
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torchvision import transforms

from fernoise.config import TrainConfig
from fernoise.models import build_model
from fernoise.train import train

DEFAULT_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013-trainval.tar.gz"


def _extract_subset(archive: Path, out: Path, limit: int) -> Path:
    """The first ``limit`` training JPEGs of the archive, as an ImageFolder tree."""
    taken = 0
    with tarfile.open(archive) as tar:
        for member in tar:
            if taken >= limit:
                break
            parts = Path(member.name).parts
            if member.isfile() and len(parts) >= 3 and parts[-3] == "train":
                target = out / parts[-2] / parts[-1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
                taken += 1
    return out


def _step_fn(device: torch.device):
    torch.manual_seed(0)
    model = build_model("resnet18", 7, in_channels=1).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4, weight_decay=1e-4)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def naive(folder: Path, device: torch.device, workers: int) -> float:
    tf = transforms.Compose([transforms.Grayscale(), transforms.Resize(48), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize([0.5], [0.25])])
    loader = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(str(folder), tf), batch_size=64,
                                         shuffle=True, num_workers=workers, drop_last=True)
    step = _step_fn(device)
    seen, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == 2:  # after warm-up
            _sync(device)
            start, seen = time.perf_counter(), 0
        step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
        seen += len(y)
    _sync(device)
    return seen / (time.perf_counter() - start)


def model_only(device: torch.device, steps: int) -> float:
    step = _step_fn(device)
    x = torch.randn(64, 1, 48, 48, device=device)
    y = torch.randint(0, 7, (64,), device=device)
    for _ in range(3):
        step(x, y)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    _sync(device)
    return steps * 64 / (time.perf_counter() - start)


def fernoise_epoch(data: str, images: int, device: torch.device, cache: Path, out: Path, **options) -> float:
    """Images/s of fernoise's second training epoch (the first includes warm-up and graph recording)."""
    cfg = TrainConfig(data=data, epochs=2, train_limit=images, val_limit=64, device=device.type,
                      cache_dir=str(cache), **options)
    train(cfg, out, quiet=True, log=lambda _: None)
    with open(out / "metrics.csv", newline="") as handle:
        row = list(csv.DictReader(handle))[-1]
    return images / float(row["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_ARCHIVE), help="FER2013 archive (folder tree inside)")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = _extract_subset(Path(args.data), tmp / "folder", args.images)
        results = {
            "naive ImageFolder + DataLoader": naive(folder, device, args.workers),
            "model only (random tensors)": model_only(device, max(10, args.images // 256)),
            "fernoise train (cache + batch augmentation)": fernoise_epoch(
                args.data, args.images, device, tmp / "cache", tmp / "run"),
            "fernoise train, channels_last": fernoise_epoch(
                args.data, args.images, device, tmp / "cache", tmp / "run-cl", channels_last=True),
            "fernoise train, bf16 autocast": fernoise_epoch(
                args.data, args.images, device, tmp / "cache", tmp / "run-bf16", precision="bf16"),
        }
        if device.type == "cuda":
            results["fernoise train, captured step (CUDA graph)"] = fernoise_epoch(
                args.data, args.images, device, tmp / "cache", tmp / "run-graph", capture=True)
            results["fernoise train, captured + bf16 + channels_last"] = fernoise_epoch(
                args.data, args.images, device, tmp / "cache", tmp / "run-fast", capture=True, precision="bf16",
                channels_last=True)
    base = results["naive ImageFolder + DataLoader"]
    print(f"device {device}, threads {torch.get_num_threads()}, workers {args.workers}, {args.images} images, "
          f"ResNet-18 batch 64 48x48, torch {torch.__version__}")
    print(f"{'pipeline':<46} {'images/s':>9} {'vs naive':>9}")
    for name, rate in results.items():
        print(f"{name:<46} {rate:9.0f} {rate / base:9.2f}")


if __name__ == "__main__":
    main()
