"""Packed uint8 caches: decode a data set once, then memory-map it for every run.

``prepare`` reads any supported layout (see :mod:`fernoise.data.formats`), decodes all
images on all CPU cores and writes ``images_<split>.npy`` (N, H, W, C) uint8 and
``labels_<split>.npy`` int64 plus ``meta.json``, ``summary.json``/``summary.txt`` and
``samples.png``. The directory is built beside its destination and renamed into place,
with ``meta.json`` written last, so a crash never leaves a cache that looks valid.
``load_data`` keys caches by source and options and rebuilds when the inputs change.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from fernoise.data.classes import DataError
from fernoise.data.decode import decode_item
from fernoise.data.formats import Item, Layout, Listing, find_layout, read_listing
from fernoise.data.trees import DirTree, Tree, open_tree
from fernoise.data.packed import SPLITS, PackedData, Split, channel_stats, class_counts
from fernoise.data import synthetic
from fernoise.io import OutputError, atomic_write, exclusive, write_text_atomic

CACHE_FORMAT = 1
_SERIAL_BELOW = 512  # items; a process pool costs more than it saves below this


# --------------------------------------------------------------------------- options and keys


def _options(*, size: int, format: str | None, channels: int | None, margin: float, affectnet_classes: int,
             class_map: str | Mapping[str, str] | None, val_fraction: float, split_seed: int,
             skip_bad: bool) -> dict[str, Any]:
    """Validated options, JSON-ready: they are part of the cache key and fingerprint."""
    if not isinstance(size, int) or not 8 <= size <= 4096:
        raise DataError(f"size must be an integer from 8 to 4096, got {size!r}")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1, 3 or None (automatic), got {channels!r}")
    if not 0 <= margin <= 4:
        raise DataError(f"margin must be a fraction of the face box from 0 to 4, got {margin!r}")
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
    if affectnet_classes not in (7, 8):
        raise DataError(f"affectnet_classes must be 7 or 8, got {affectnet_classes!r}")
    if class_map is not None and not isinstance(class_map, str):
        class_map = {str(k): str(v) for k, v in sorted(class_map.items())}
    return {
        "format": format, "size": size, "channels": channels, "margin": float(margin),
        "affectnet_classes": affectnet_classes, "class_map": class_map,
        "val_fraction": float(val_fraction), "split_seed": int(split_seed), "skip_bad": bool(skip_bad),
    }


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _inputs(path: Path, tree: Tree | None, layout: Layout | None) -> list[Any]:
    """What the cache depends on: the file's stat for an archive or CSV, else the layout's files."""
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    assert tree is not None and layout is not None
    if layout.format == "fer2013-csv":
        _, names = tree.children(layout.root)
        used = [f"{layout.root}{n}" for n in sorted(names) if n.lower().endswith(".csv")]
    else:
        used = [rel for rel in tree.files if rel.startswith(layout.root)]
    return [[rel, *tree.files[rel]] for rel in sorted(used)]


def fingerprint(path: Path, options: Mapping[str, Any], tree: Tree | None = None, layout: Layout | None = None) -> str:
    return _digest({"cache_format": CACHE_FORMAT, "inputs": _inputs(path, tree, layout), "options": dict(options)})


def default_cache_dir() -> Path:
    return Path(os.environ.get("FERNOISE_CACHE") or "~/.cache/fernoise").expanduser()


def cache_key(path: Path, options: Mapping[str, Any]) -> str:
    """Directory name of a source's cache: readable stem plus a hash of its path and options."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.name)[:60] or "data"
    return f"{stem}-{options['size']}px-{_digest({'source': str(path), 'options': dict(options)})}"


# --------------------------------------------------------------------------- reading a cache


def open_cache(directory: str | os.PathLike[str]) -> PackedData:
    """Memory-map a prepared cache; DataError when it is missing, damaged or of another version."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{directory}: not a fernoise data cache (meta.json unreadable: {exc})") from None
    if meta.get("cache_format") != CACHE_FORMAT:
        raise DataError(f"{directory}: cache format {meta.get('cache_format')!r} is not {CACHE_FORMAT}; prepare it again")
    splits = {}
    size, channels = meta["size"], meta["channels"]
    for name, n in meta["splits"].items():
        try:
            images = np.load(directory / f"images_{name}.npy", mmap_mode="r")
            labels = np.load(directory / f"labels_{name}.npy")
        except (OSError, ValueError) as exc:
            raise DataError(f"{directory}: damaged cache ({name} split: {exc}); prepare it again") from None
        if images.shape != (n, size, size, channels) or labels.shape != (n,) or images.dtype != np.uint8:
            raise DataError(f"{directory}: damaged cache ({name} split has shape {images.shape}); prepare it again")
        splits[name] = Split(images, labels.astype(np.int64, copy=False))
    return PackedData(meta["classes"], splits, size, channels, meta["mean"], meta["std"], meta, path=directory)


# --------------------------------------------------------------------------- decoding


def _decode_task(task: tuple[int, str, Any, Any], size: int, channels: int | None,
                 margin: float) -> tuple[int, np.ndarray | None, bool, str | None]:
    index, kind, payload, box = task
    try:
        image, clipped = decode_item(payload, kind, size=size, channels=channels, box=box, margin=margin)
    except DataError as exc:
        return index, None, False, str(exc)
    except Exception as exc:  # e.g. MemoryError on an absurd image: report, do not kill the pool
        return index, None, False, f"cannot decode: {type(exc).__name__}: {exc}"
    return index, image, clipped, None


def _tasks(tree: Tree, items: list[Item]) -> Iterator[tuple[int, str, Any, Any]]:
    """Decode tasks in the order the source is cheapest to read (archive order for tar)."""
    by_member: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        if item.pixels is not None:
            yield index, "pixels", item.pixels, None
        else:
            by_member.setdefault(item.member, []).append(index)  # type: ignore[arg-type]
    for member, payload in tree.payloads(by_member):
        kind = "path" if isinstance(payload, str) else "bytes"
        for index in by_member[member]:
            yield index, kind, payload, items[index].box


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def _mapper(workers: int, n: int) -> Iterator[Any]:
    """``imap``-like callable: a process pool for big jobs, plain ``map`` for small ones."""
    if workers <= 1 or n < _SERIAL_BELOW:
        yield lambda fn, tasks, chunksize: map(fn, tasks)
        return
    # forkserver/spawn: forking a process that may hold torch or tqdm threads is unsafe. The
    # fork server imports this module (and so torch, via fernoise) once for all pools.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload([__name__])
    with ctx.Pool(workers) as pool:
        yield pool.imap


class _Output:
    """Per-split image arrays written straight into .npy files, so caches may exceed RAM.

    With automatic channels the arrays start grey and are widened to RGB (once) at the
    first colour image.
    """

    def __init__(self, directory: Path, counts: Mapping[str, int], size: int, channels: int | None) -> None:
        self.directory, self.size, self.counts = directory, size, dict(counts)
        self.auto, self.channels = channels is None, channels or 1
        self.arrays = {split: self._open(split, n, self.channels) for split, n in counts.items()}
        self.filled = dict.fromkeys(counts, 0)
        self.labels: dict[str, list[int]] = {split: [] for split in counts}

    def _open(self, split: str, n: int, channels: int, suffix: str = "") -> np.memmap:
        path = self.directory / f"images_{split}.npy{suffix}"
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, self.size, self.size, channels))

    def _widen(self) -> None:
        for split, old in self.arrays.items():
            new = self._open(split, self.counts[split], 3, ".rgb")
            new[: self.filled[split]] = old[: self.filled[split]]
            new.flush()
            os.replace(self.directory / f"images_{split}.npy.rgb", self.directory / f"images_{split}.npy")
            self.arrays[split] = new
        self.channels = 3

    def add(self, split: str, image: np.ndarray, label: int) -> None:
        if self.auto and image.shape[2] == 3 and self.channels == 1:
            self._widen()
        self.arrays[split][self.filled[split]] = image  # a grey image broadcasts into RGB
        self.filled[split] += 1
        self.labels[split].append(label)

    def finish(self) -> dict[str, Split]:
        """Flush, trim skipped slots, and return the splits (memmaps of the files) that have images."""
        splits = {}
        for split, array in self.arrays.items():
            n, path = self.filled[split], self.directory / f"images_{split}.npy"
            array.flush()
            if n == 0:
                path.unlink()
                continue
            if n < self.counts[split]:
                _save_array(path, np.asarray(array[:n]))
            splits[split] = Split(np.load(path, mmap_mode="r"), np.asarray(self.labels[split], dtype=np.int64))
        self.arrays = {}
        return splits


def _carve_val(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], str]:
    """Move a stratified ``fraction`` of train to val (same items for the same seed)."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        if item.split == "train":
            by_class.setdefault(item.label, []).append(index)
    moved: set[int] = set()
    for label in sorted(by_class):
        members = by_class[label]
        n_val = min(len(members) - 1, max(1, round(fraction * len(members)))) if len(members) > 1 else 0
        moved.update(int(i) for i in rng.choice(members, size=n_val, replace=False))
    carved = [dataclasses.replace(item, split="val") if i in moved else item for i, item in enumerate(items)]
    note = (f"no val split in the source: carved a stratified val split of {len(moved)} images "
            f"(val_fraction={fraction}, split_seed={seed}) from train")
    return carved, note


def _decode_all(tree: Tree, listing: Listing, out_dir: Path, *, size: int, channels: int | None, margin: float,
                skip_bad: bool, workers: int, progress: bool) -> tuple[dict[str, Split], int]:
    """Decode every item into the output arrays; returns the splits and the clipped-box count."""
    items = listing.items
    counts = {s: sum(1 for it in items if it.split == s) for s in SPLITS}
    output = _Output(out_dir, {s: n for s, n in counts.items() if n}, size, channels)
    label_index = {name: i for i, name in enumerate(listing.classes)}
    errors: list[tuple[str, str]] = []
    clipped = 0
    worker = functools.partial(_decode_task, size=size, channels=channels, margin=margin)
    chunksize = max(1, min(256, len(items) // (max(1, workers) * 8)))
    with _mapper(workers, len(items)) as imap, tqdm(total=len(items), desc="decoding", unit="img",
                                                    disable=not progress, file=sys.stderr) as bar:
        for index, image, was_clipped, error in imap(worker, _tasks(tree, items), chunksize):
            item = items[index]
            if error is not None:
                errors.append((item.ref, error))
            else:
                clipped += was_clipped
                output.add(item.split, image, label_index[item.label])
            bar.update(1)
    if errors and not skip_bad:
        shown = "\n".join(f"  {ref}: {reason}" for ref, reason in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise DataError(f"{len(errors)} image(s) could not be decoded:\n{shown}{more}\n"
                        f"(pass skip_bad=True / --skip-bad to skip bad inputs)")
    listing.skipped.extend(errors)
    splits = output.finish()
    if not splits:
        raise DataError(f"{tree.name}: no readable images")
    return splits, clipped


# --------------------------------------------------------------------------- writing a cache


def _sample_grid(split: Split, classes: list[str], per_class: int = 8, tile: int = 64) -> Image.Image:
    """A row of sample faces per class, labelled, to eyeball labels and crops."""
    label_width = 110
    grid = Image.new("RGB", (label_width + per_class * tile, max(1, len(classes)) * tile), "white")
    draw = ImageDraw.Draw(grid)
    rng = np.random.default_rng(0)
    for row, name in enumerate(classes):
        members = np.flatnonzero(split.labels == row)
        draw.text((6, row * tile + tile // 2 - 6), f"{name} ({len(members)})", fill="black")
        chosen = np.sort(rng.choice(members, size=min(per_class, len(members)), replace=False)) if len(members) else []
        for col, index in enumerate(chosen):
            face = np.asarray(split.images[index])
            face_img = Image.fromarray(face[:, :, 0] if face.shape[2] == 1 else face).convert("RGB")
            grid.paste(face_img.resize((tile, tile), Image.Resampling.BILINEAR), (label_width + col * tile, row * tile))
    return grid


def summary_text(meta: Mapping[str, Any]) -> str:
    """Human-readable per-split per-class counts and everything left out."""
    classes = meta["classes"]
    width = max(8, *(len(c) + 1 for c in classes))
    lines = [f"{meta['source']} ({meta['format']}): {meta['size']}x{meta['size']}, {meta['channels']} channel(s)",
             "split".ljust(7) + "".join(c.rjust(width) for c in classes) + "total".rjust(9)]
    for split, counts in meta["class_counts"].items():
        lines.append(split.ljust(7) + "".join(str(counts[c]).rjust(width) for c in classes)
                     + str(sum(counts.values())).rjust(9))
    lines.append(f"skipped: {len(meta['skipped'])}")
    lines.extend(f"  {entry['item']}: {entry['reason']}" for entry in meta["skipped"][:50])
    if len(meta["skipped"]) > 50:
        lines.append(f"  ... {len(meta['skipped']) - 50} more in summary.json")
    lines.extend(f"dropped {n}: {reason}" for reason, n in meta["dropped"].items())
    if meta.get("clipped_boxes"):
        lines.append(f"face boxes clipped to the image: {meta['clipped_boxes']}")
    if meta["ignored"]:
        lines.append(f"ignored {len(meta['ignored'])} non-image file(s), e.g. {meta['ignored'][0]}")
    lines.extend(f"note: {note}" for note in meta["notes"])
    return "\n".join(lines) + "\n"


def _save_array(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as handle:
        np.save(handle, array)


def _write_cache(directory: Path, data: PackedData) -> None:
    """Write everything but the images (already in place), ``meta.json`` last."""
    for name, split in data.splits.items():
        if not (directory / f"images_{name}.npy").exists():
            _save_array(directory / f"images_{name}.npy", np.ascontiguousarray(split.images, dtype=np.uint8))
        _save_array(directory / f"labels_{name}.npy", split.labels.astype(np.int64))
    grid = _sample_grid(data.splits["train" if "train" in data.splits else next(iter(data.splits))], data.classes)
    with atomic_write(directory / "samples.png") as handle:
        grid.save(handle, "PNG")
    summary = {k: data.meta[k] for k in ("source", "format", "classes", "size", "channels", "class_counts",
                                          "skipped", "dropped", "clipped_boxes", "ignored", "notes")}
    write_text_atomic(directory / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(directory / "summary.txt", summary_text(data.meta))
    write_text_atomic(directory / "meta.json", json.dumps(data.meta, indent=2) + "\n")


def _check_destination(out: Path) -> None:
    """Refuse to replace a directory that is not a fernoise cache (it may hold user files)."""
    if out.is_dir() and any(out.iterdir()) and not (out / "meta.json").is_file():
        raise OutputError(f"{out} exists and is not a fernoise data cache; choose an empty or new directory")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory")


def _publish(tmp: Path, out: Path) -> None:
    """Swap the finished ``tmp`` directory into ``out``; the old cache is removed only after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _building(out: Path) -> Iterator[Path]:
    """A temporary directory beside ``out`` that becomes ``out`` only if the body succeeds."""
    _check_destination(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
        tmp.mkdir()  # not mkdtemp: the cache should get the usual (umask) permissions
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from exc
    try:
        yield tmp
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _build(path: Path, tree: Tree, layout: Layout, options: Mapping[str, Any], fp: str, out: Path, *,
           workers: int | None, progress: bool, quiet: bool) -> PackedData:
    listing = read_listing(tree, layout, affectnet_classes=options["affectnet_classes"],
                           class_map=options["class_map"], skip_bad=options["skip_bad"])
    items = listing.items
    source_splits = [name for name in SPLITS if any(item.split == name for item in items)]
    if "train" in source_splits and "val" not in source_splits:
        items, note = _carve_val(items, options["val_fraction"], options["split_seed"])
        listing.items = items
        listing.notes.append(note)
    with _building(out) as tmp:
        splits, clipped = _decode_all(
            tree, listing, tmp, size=options["size"], channels=options["channels"], margin=options["margin"],
            skip_bad=options["skip_bad"], workers=workers or _default_workers(), progress=progress,
        )
        for name in SPLITS:
            if any(item.split == name for item in items) and name not in splits:
                listing.notes.append(f"the {name} split has no readable images and was left out")
        channels = next(iter(splits.values())).images.shape[3]
        stats_split = "train" if "train" in splits else next(iter(splits))
        mean, std = channel_stats(splits[stats_split].images)
        counts = class_counts(splits, listing.classes)
        empty = [c for c, n in counts.get("train", {}).items() if n == 0]
        if empty:
            listing.notes.append(f"no training images for: {', '.join(empty)}")
        meta = {
            "cache_format": CACHE_FORMAT, "source": str(path), "format": layout.format,
            "classes": listing.classes, "size": options["size"], "channels": int(channels),
            "mean": mean, "std": std, "fingerprint": fp, "options": dict(options),
            "splits": {name: len(split) for name, split in splits.items()},
            "source_splits": source_splits, "stats_split": stats_split,
            "class_counts": counts,
            "skipped": [{"item": ref, "reason": reason} for ref, reason in listing.skipped],
            "dropped": listing.dropped, "clipped_boxes": clipped, "ignored": listing.ignored,
            "notes": listing.notes, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        data = PackedData(listing.classes, splits, options["size"], int(channels), mean, std, meta)
        _write_cache(tmp, data)
    if not quiet:
        print(summary_text(meta), end="", file=sys.stderr)
    return open_cache(out)


def _open_source(source: str | os.PathLike[str]) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    return path.resolve()


def prepare(source: str | os.PathLike[str], *, size: int = 48, out: str | os.PathLike[str],
            format: str | None = None, channels: int | None = None, margin: float = 0.0,
            affectnet_classes: int = 7, class_map: str | Mapping[str, str] | None = None,
            val_fraction: float = 0.1, split_seed: int = 0, skip_bad: bool = False,
            workers: int | None = None, progress: bool = True, quiet: bool = False) -> PackedData:
    """Decode ``source`` once into a packed cache at ``out`` (replacing an older cache there)."""
    options = _options(size=size, format=format, channels=channels, margin=margin,
                       affectnet_classes=affectnet_classes, class_map=class_map, val_fraction=val_fraction,
                       split_seed=split_seed, skip_bad=skip_bad)
    if str(source) == "synthetic" or format == "synthetic":
        return _prepare_synthetic(options, Path(out), quiet=quiet)
    path = _open_source(source)
    with open_tree(path) as tree:
        layout = find_layout(tree, format)
        fp = fingerprint(path, options, tree, layout)
        return _build(path, tree, layout, options, fp, Path(out), workers=workers, progress=progress, quiet=quiet)


def _synthetic(options: Mapping[str, Any]) -> PackedData:
    return synthetic.make_synthetic(size=options["size"], channels=options["channels"] or 1, seed=options["split_seed"])


def _prepare_synthetic(options: Mapping[str, Any], out: Path, *, quiet: bool) -> PackedData:
    """The synthetic set written as a cache, for tools that want files rather than arrays."""
    data = _synthetic(options)
    meta = {
        "skipped": [], "dropped": {}, "clipped_boxes": 0, "ignored": [], "notes": [], **data.meta,
        "cache_format": CACHE_FORMAT, "classes": data.classes, "size": data.size, "channels": data.channels,
        "mean": [float(m) for m in data.mean], "std": [float(s) for s in data.std], "options": dict(options),
        "splits": {name: len(split) for name, split in data.splits.items()},
        "class_counts": class_counts(data.splits, data.classes),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with _building(out) as tmp:
        _write_cache(tmp, dataclasses.replace(data, meta=meta))
    if not quiet:
        print(summary_text(meta), end="", file=sys.stderr)
    return open_cache(out)


def _current(out: Path, fp: str) -> PackedData | None:
    """The cache in ``out`` if it exists and matches fingerprint ``fp``."""
    if (out / "meta.json").is_file():
        with contextlib.suppress(DataError):
            data = open_cache(out)
            if data.meta.get("fingerprint") == fp:
                data.reused = True
                return data
    return None


def load_data(source: str | os.PathLike[str], *, size: int = 48, cache_dir: str | os.PathLike[str] | None = None,
              format: str | None = None, channels: int | None = None, margin: float = 0.0,
              affectnet_classes: int = 7, class_map: str | Mapping[str, str] | None = None,
              val_fraction: float = 0.1, split_seed: int = 0, skip_bad: bool = False,
              workers: int | None = None, progress: bool = True, quiet: bool = False) -> PackedData:
    """``source`` as PackedData: generated (``synthetic``), a prepared cache, or cached on first use.

    Caches live in ``cache_dir`` (default ``$FERNOISE_CACHE`` or ``~/.cache/fernoise``) under a
    key of the source path and options, and are rebuilt when the input fingerprint changes.
    """
    options = _options(size=size, format=format, channels=channels, margin=margin,
                       affectnet_classes=affectnet_classes, class_map=class_map, val_fraction=val_fraction,
                       split_seed=split_seed, skip_bad=skip_bad)
    if str(source) == "synthetic" or format == "synthetic":
        return _synthetic(options)
    path = _open_source(source)
    if path.is_dir() and (path / "meta.json").is_file():
        data = open_cache(path)
        data.reused = True
        return data
    out = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out = out / cache_key(path, options)
    with contextlib.ExitStack() as stack:
        tree = layout = None
        if not path.is_file():  # archives and CSVs are fingerprinted by their own stat: no listing needed
            tree = stack.enter_context(DirTree(path))
            layout = find_layout(tree, format)
        fp = fingerprint(path, options, tree, layout)
        cached = _current(out, fp)
        if cached is not None:
            return cached
        # One build at a time across processes (reproduce --jobs, torchrun); whoever waited
        # finds the finished cache.
        out.parent.mkdir(parents=True, exist_ok=True)
        stack.enter_context(exclusive(out.with_name(f".{out.name}.lock")))
        cached = _current(out, fp)
        if cached is not None:
            return cached
        if tree is None:
            tree = stack.enter_context(open_tree(path))
            layout = find_layout(tree, format)
        return _build(path, tree, layout, options, fp, out, workers=workers, progress=progress, quiet=quiet)
