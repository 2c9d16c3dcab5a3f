"""Data pipeline speed on FER2013: preparing the cache, and augmented images/s to the model.

Targets (2 CPU cores): prepare the archive in under 60 s; deliver augmented batches faster
than a torchvision ImageFolder + DataLoader pipeline with equivalent transforms.

    python benchmarks/bench_data.py [--archive PATH] [--batches N] [--repeats 3]

fernoise: ``iterate_batches`` over the memory-mapped cache + ``Augmenter`` on the batch, in
the main process with 2 torch threads. Baseline: ``ImageFolder`` over the extracted JPEG
tree, per-image transforms, ``DataLoader(num_workers=2)``. Both deliver normalised float
batches of 64 at 48x48 grey; the same number of batches is timed for each (best of
--repeats, after one warm-up batch). Nothing is written into the repository: the cache
and the extracted tree live in a temporary directory.
"""
from __future__ import annotations

import argparse
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from fernoise.data import Augmenter, iterate_batches, load_data, prepare
from fernoise.data import augment as aug_consts

BATCH = 64


def find_archive() -> Path:
    repo = Path(__file__).resolve().parents[1]
    for base in (os.environ.get("FERNOISE_DATA_DIR"), str(repo.parent / "shared" / "data")):
        if base and (Path(base) / "fer2013-trainval.tar.gz").is_file():
            return Path(base) / "fer2013-trainval.tar.gz"
    raise SystemExit("fer2013-trainval.tar.gz not found: pass --archive or set FERNOISE_DATA_DIR")


def grey_loader(path: str) -> Image.Image:
    return Image.open(path).convert("L")


def torchvision_transform(preset: str, mean: float, std: float) -> transforms.Compose:
    """Per-image transforms equivalent to an Augmenter preset."""
    tail = [transforms.ToTensor(), transforms.Normalize([mean], [std])]
    if preset == "paper":
        return transforms.Compose([transforms.Resize(48), transforms.RandomHorizontalFlip(), *tail])
    k = aug_consts.STRENGTHS["fer"]
    fov = k.fov
    return transforms.Compose([
        transforms.RandomAffine(k.max_rotation_deg, translate=(0.1, 0.1), scale=(1 / fov[1], 1 / fov[0])),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(brightness=0.2, contrast=0.2),
        *tail,
        transforms.RandomErasing(k.erase_prob, scale=k.erase_area, ratio=k.erase_aspect),
    ])


def rate(make_batches: Callable[[], Iterable[object]], batches: int, repeats: int) -> float:
    """Best images/s over ``repeats`` runs of ``batches`` batches (one warm-up batch first)."""
    best = 0.0
    for _ in range(repeats):
        iterator = iter(make_batches())
        next(iterator)
        start = time.perf_counter()
        for _, _batch in zip(range(batches), iterator):
            pass
        best = max(best, batches * BATCH / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=None)
    parser.add_argument("--batches", type=int, default=150, help="batches timed per run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    archive = args.archive or find_archive()
    torch.set_num_threads(2)

    with tempfile.TemporaryDirectory(prefix="fernoise-bench-") as tmp:
        start = time.perf_counter()
        data = prepare(archive, out=Path(tmp) / "cache", progress=False, quiet=True)
        prepare_s = time.perf_counter() - start
        start = time.perf_counter()
        load_data(Path(tmp) / "cache", progress=False)
        reuse_s = time.perf_counter() - start
        train = data.splits["train"]
        print(f"{os.cpu_count()} CPU cores; {archive.name}: {len(train)} train + {len(data.splits['val'])} val images")
        print(f"prepare (decode + pack): {prepare_s:.1f} s   open existing cache: {reuse_s * 1000:.1f} ms")

        with tarfile.open(archive) as tar:
            tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        folder = Path(tmp) / "fer2013" / "train"
        generator = torch.Generator().manual_seed(0)

        for preset in ("paper", "fer"):
            aug = Augmenter(preset, 48, 1, data.mean, data.std)

            def ours() -> Iterable[torch.Tensor]:
                for x, _ in iterate_batches(train.images, train.labels, BATCH, generator=generator):
                    yield aug(x, generator=generator)

            dataset = datasets.ImageFolder(str(folder), transform=torchvision_transform(preset, data.mean[0], data.std[0]),
                                           loader=grey_loader)

            def baseline() -> Iterable[object]:
                return DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=2, persistent_workers=False)

            fast = rate(ours, args.batches, args.repeats)
            slow = rate(baseline, args.batches, args.repeats)
            print(f"{preset:5s}: fernoise {fast:9.0f} images/s   torchvision ImageFolder+DataLoader(2 workers) "
                  f"{slow:7.0f} images/s   ratio {fast / slow:5.1f}x")


if __name__ == "__main__":
    main()
