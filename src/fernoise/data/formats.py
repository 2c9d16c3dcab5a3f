"""Readers for the on-disk layouts of FER data sets, and layout detection.

A reader turns a layout into a :class:`Listing`: one :class:`Item` per face (split,
canonical class, where its bytes are, optional face box) plus what it dropped and why.
Nothing is decoded here; :mod:`fernoise.data.cache` decodes the items in parallel with
:func:`fernoise.data.decode.decode_item`. Sources are read through a
:class:`~fernoise.data.trees.Tree`, so a directory, a ``.tar.gz`` and a ``.zip`` are
read the same way, archives without extracting them.
"""
from __future__ import annotations

import csv
import io
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from fernoise.data.classes import (
    AFFECTNET_CODES,
    AFFECTNET_NON_EXPRESSION,
    CLASS_MAPS,
    FER2013_CODES,
    DataError,
    canonical_name,
    ordered_classes,
    resolve_class_map,
)
from fernoise.data.trees import Tree, extension, is_image_name, open_tree

LAYOUTS: dict[str, str] = {
    "affectnet": "Manually_Annotated_Images/<subdir>/<file>.jpg with training.csv and/or validation.csv",
    "affectnet2021": "train_set/ and val_set/, each with images/N.jpg and annotations/N_exp.npy",
    "fer2013-csv": "fer2013.csv (emotion,pixels,Usage) or icml_face_data.csv (emotion, Usage, pixels)",
    "folders": "<split>/<class>/<image> (splits train, val or validation, test) or <class>/<image>",
}
FORMATS: tuple[str, ...] = (*LAYOUTS, "synthetic")

SPLIT_DIRS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
FER2013_USAGE = {"training": "train", "publictest": "val", "privatetest": "test"}
_SKIP_HINT = "(pass skip_bad=True / --skip-bad to skip bad inputs)"


# --------------------------------------------------------------------------- listings


@dataclass(frozen=True)
class Item:
    """One face to decode: from a tree member (``member``) or a FER2013 pixel string (``pixels``)."""

    split: str
    label: str
    ref: str
    member: str | None = None
    pixels: str | None = None
    box: tuple[float, float, float, float] | None = None  # x, y, width, height in source pixels


@dataclass
class Listing:
    """What a reader found: items, the label space, and everything it left out."""

    format: str
    classes: list[str]
    items: list[Item] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def bad(self, ref: str, reason: str, skip_bad: bool) -> None:
        """Record a bad input, or raise when bad inputs are not to be skipped."""
        if not skip_bad:
            raise DataError(f"{ref}: {reason} {_SKIP_HINT}")
        self.skipped.append((ref, reason))

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


@dataclass(frozen=True)
class ReadOptions:
    affectnet_classes: int = 7
    class_map: Mapping[str, str] | None = None  # folder name -> canonical class
    skip_bad: bool = False


@dataclass(frozen=True)
class Layout:
    format: str
    root: str  # prefix inside the tree: '' or 'dir/'


# --------------------------------------------------------------------------- detection


def _affectnet_csv_dir(tree: Tree, root: str) -> str | None:
    for csv_dir in (root, f"{root}Manually_Annotated_file_lists/"):
        _, names = tree.children(csv_dir)
        if names & {"training.csv", "validation.csv"}:
            return csv_dir
    return None


def _matches(fmt: str, tree: Tree, root: str) -> bool:
    dirs, names = tree.children(root)
    if fmt == "affectnet":
        return "Manually_Annotated_Images" in dirs and _affectnet_csv_dir(tree, root) is not None
    if fmt == "affectnet2021":
        return any("images" in tree.children(f"{root}{d}/")[0] for d in dirs & {"train_set", "val_set"})
    if fmt == "fer2013-csv":
        return bool(names & {"fer2013.csv", "icml_face_data.csv"}) or getattr(tree, "single_file", False)
    if fmt == "folders":
        if any(d.lower() in SPLIT_DIRS for d in dirs):
            return True
        return any(any(map(is_image_name, tree.children(f"{root}{d}/")[1])) for d in dirs)
    raise DataError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")


def find_layout(tree: Tree, format: str | None = None) -> Layout:
    """The layout of ``tree``, descending through single wrapping folders (e.g. ``fer2013/``)."""
    if format is not None and format not in LAYOUTS:
        raise DataError(f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
    candidates = [format] if format else list(LAYOUTS)
    root = ""
    for _ in range(8):
        for fmt in candidates:
            if _matches(fmt, tree, root):
                return Layout(fmt, root)
        dirs, names = tree.children(root)
        if len(dirs) != 1 or any(is_image_name(n) or extension(n) == ".csv" for n in names):
            break
        root = f"{root}{next(iter(dirs))}/"
    looked_for = "\n".join(f"  {fmt}: {LAYOUTS[fmt]}" for fmt in candidates)
    what = f"the {format} layout" if format else "a known data set layout"
    raise DataError(f"{tree.name}: not {what}; looked for:\n{looked_for}")


def detect_format(source: str | os.PathLike[str]) -> str:
    """The format name of ``source`` ('synthetic' for the built-in data set)."""
    if str(source) == "synthetic":
        return "synthetic"
    with open_tree(Path(source).expanduser()) as tree:
        return find_layout(tree).format


# --------------------------------------------------------------------------- readers


def _affectnet_label(code: int, opts: ReadOptions, listing: Listing) -> str | None:
    """Canonical class for an AffectNet code, or None when the code is dropped (and counted)."""
    if code in AFFECTNET_NON_EXPRESSION:
        listing.drop(f"AffectNet code {code} ({AFFECTNET_NON_EXPRESSION[code]})")
        return None
    if code == 7 and opts.affectnet_classes == 7:
        listing.drop("AffectNet code 7 (Contempt; pass affectnet_classes=8 to keep it)")
        return None
    return AFFECTNET_CODES[code]


def _affectnet_space(opts: ReadOptions) -> list[str]:
    return [AFFECTNET_CODES[c] for c in range(opts.affectnet_classes)]


_AFFECTNET_COLUMNS = (
    "subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
    "facial_landmarks", "expression", "valence", "arousal",
)
_AFFECTNET_REQUIRED = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression")


def read_affectnet(tree: Tree, root: str, opts: ReadOptions) -> Listing:
    """AffectNet as released: face boxes and codes in training.csv / validation.csv."""
    listing = Listing("affectnet", ordered_classes(_affectnet_space(opts)))
    csv_dir = _affectnet_csv_dir(tree, root) or root
    images = f"{root}Manually_Annotated_Images/"
    for csv_name, split in (("training.csv", "train"), ("validation.csv", "val")):
        rel = f"{csv_dir}{csv_name}"
        if rel not in tree.files:
            continue
        where = tree.location(rel)
        with tree.open_text(rel) as handle:
            reader = csv.reader(handle)
            first = next(reader, None)
            if first is None:
                raise DataError(f"{where}: empty CSV file")
            if {c.strip().lower() for c in first} & {c.lower() for c in _AFFECTNET_COLUMNS}:
                names = [c.strip() for c in first]
                missing = [c for c in _AFFECTNET_REQUIRED if c not in names]
                if missing:
                    raise DataError(f"{where}: missing column(s) {', '.join(missing)}; found: {', '.join(names)}")
                rows: Iterable[list[str]] = reader
            else:  # some copies of validation.csv have no header line
                names = list(_AFFECTNET_COLUMNS)
                listing.notes.append(f"{where} has no header line; assumed the standard AffectNet columns")
                rows = itertools.chain([first], reader)
            col = {name: names.index(name) for name in _AFFECTNET_REQUIRED}
            for row in rows:
                ref = f"{where}:{reader.line_num}"
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) < len(names):
                    listing.bad(ref, f"expected {len(names)} fields, found {len(row)}", opts.skip_bad)
                    continue
                try:
                    code = int(row[col["expression"]])
                except ValueError:
                    listing.bad(ref, f"expression {row[col['expression']]!r} is not an integer", opts.skip_bad)
                    continue
                if not 0 <= code <= 10:
                    listing.bad(ref, f"expression code {code} out of range 0-10", opts.skip_bad)
                    continue
                label = _affectnet_label(code, opts, listing)
                if label is None:
                    continue
                try:
                    box = tuple(float(row[col[c]]) for c in ("face_x", "face_y", "face_width", "face_height"))
                except ValueError:
                    listing.bad(ref, "face box is not numeric", opts.skip_bad)
                    continue
                if box[2] <= 0 or box[3] <= 0:
                    listing.bad(ref, f"face box {box} has no area", opts.skip_bad)
                    continue
                sub = row[col["subDirectory_filePath"]].strip().replace("\\", "/")
                member = next((m for m in (f"{images}{sub}", f"{root}{sub}") if m in tree.files), None)
                if member is None:
                    listing.bad(ref, f"image file not found: {tree.location(images + sub)}", opts.skip_bad)
                    continue
                listing.items.append(Item(split, label, f"{ref} ({tree.location(member)})", member=member, box=box))  # type: ignore[arg-type]
    return listing


def _npy_code(data: bytes) -> int:
    """The integer in a 0-d AffectNet-2021 annotation array (stored as a string or a number)."""
    value = float(np.load(io.BytesIO(data), allow_pickle=False).item())
    if value != int(value):
        raise ValueError(f"{value} is not an integer")
    return int(value)


def read_affectnet2021(tree: Tree, root: str, opts: ReadOptions) -> Listing:
    """AffectNet's 2021 release: pre-cropped images with one N_exp.npy label file each."""
    listing = Listing("affectnet2021", ordered_classes(_affectnet_space(opts)))
    for set_dir, split in (("train_set", "train"), ("val_set", "val")):
        prefix = f"{root}{set_dir}/images/"
        for member in sorted(m for m in tree.files if m.startswith(prefix)):
            ref = tree.location(member)
            if not is_image_name(member):
                listing.ignored.append(ref)
                continue
            stem = os.path.splitext(member[len(prefix):])[0]
            annotation = f"{root}{set_dir}/annotations/{stem}_exp.npy"
            if annotation not in tree.files:
                listing.bad(ref, f"missing annotation file {tree.location(annotation)}", opts.skip_bad)
                continue
            try:
                code = _npy_code(tree.read(annotation))
            except (ValueError, TypeError, OSError) as exc:
                listing.bad(tree.location(annotation), f"unreadable expression label: {exc}", opts.skip_bad)
                continue
            if not 0 <= code <= 7:
                listing.bad(tree.location(annotation), f"expression code {code} out of range 0-7", opts.skip_bad)
                continue
            label = _affectnet_label(code, opts, listing)
            if label is not None:
                listing.items.append(Item(split, label, ref, member=member))
    return listing


def read_fer2013_csv(tree: Tree, root: str, opts: ReadOptions) -> Listing:
    """FER2013 as a CSV of 48x48 pixel strings (Kaggle's fer2013.csv or icml_face_data.csv)."""
    listing = Listing("fer2013-csv", ordered_classes(FER2013_CODES.values()))
    _, names = tree.children(root)
    csv_name = next((n for n in ("fer2013.csv", "icml_face_data.csv") if n in names), None)
    csv_name = csv_name or next(n for n in sorted(names) if extension(n) == ".csv")
    rel = f"{root}{csv_name}"
    where = tree.location(rel)
    with tree.open_text(rel) as handle:
        reader = csv.reader(handle)
        header = [c.strip().lower() for c in next(reader, [])]
        missing = [c for c in ("emotion", "pixels") if c not in header]
        if missing:
            raise DataError(f"{where}:1: missing column(s) {', '.join(missing)}; found: {', '.join(header) or 'nothing'}")
        i_emotion, i_pixels = header.index("emotion"), header.index("pixels")
        i_usage = header.index("usage") if "usage" in header else None
        if i_usage is None:
            listing.notes.append(f"{where} has no Usage column; all rows are training data")
        for row in reader:
            ref = f"{where}:{reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                listing.bad(ref, f"expected {len(header)} fields, found {len(row)}", opts.skip_bad)
                continue
            try:
                code = int(row[i_emotion])
            except ValueError:
                listing.bad(ref, f"emotion {row[i_emotion]!r} is not an integer", opts.skip_bad)
                continue
            if code not in FER2013_CODES:
                listing.bad(ref, f"emotion label {code} out of range 0-6", opts.skip_bad)
                continue
            split = "train"
            if i_usage is not None:
                split = FER2013_USAGE.get(row[i_usage].strip().lower(), "")
                if not split:
                    listing.bad(ref, f"unknown Usage {row[i_usage]!r} (expected Training, PublicTest, PrivateTest)", opts.skip_bad)
                    continue
            listing.items.append(Item(split, FER2013_CODES[code], ref, pixels=row[i_pixels]))
    return listing


def _folder_class(name: str, where: str, class_map: Mapping[str, str] | None) -> str:
    if class_map and name in class_map:
        return class_map[name]
    if name.isdigit():
        named = "; ".join(
            f"class_map={key!r}: " + ", ".join(f"{k} {v}" for k, v in mapping.items())
            for key, mapping in CLASS_MAPS.items()
        )
        raise DataError(f"{where}: numbered class folder {name!r} needs a class_map ({named})")
    try:
        return canonical_name(name)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None


def read_folders(tree: Tree, root: str, opts: ReadOptions) -> Listing:
    """``<split>/<class>/*`` or, without splits (CK+ style), ``<class>/*`` image folders."""
    listing = Listing("folders", [])
    dirs, names = tree.children(root)
    split_dirs: dict[str, str] = {}
    for d in sorted(dirs):
        split = SPLIT_DIRS.get(d.lower())
        if split is None:
            continue
        if split in split_dirs.values():
            other = next(k for k, v in split_dirs.items() if v == split)
            raise DataError(f"{tree.location(root + d)}: both {other!r} and {d!r} name the {split} split")
        split_dirs[d] = split
    if split_dirs:
        for extra in sorted(dirs - set(split_dirs)) + sorted(names):
            listing.ignored.append(tree.location(root + extra))
        roots = [(f"{root}{d}/", split) for d, split in split_dirs.items()]
    else:
        listing.ignored.extend(tree.location(root + n) for n in sorted(names))
        roots = [(root, "train")]
    for split_root, split in roots:
        class_dirs, loose = tree.children(split_root)
        if split_dirs:
            listing.ignored.extend(tree.location(split_root + n) for n in sorted(loose))
        if not class_dirs:
            listing.bad(tree.location(split_root), f"empty {split} split (no class folders)", opts.skip_bad)
            continue
        for class_dir in sorted(class_dirs):
            prefix = f"{split_root}{class_dir}/"
            label = _folder_class(class_dir, tree.location(prefix), opts.class_map)
            members = sorted(m for m in tree.files if m.startswith(prefix))
            images = [m for m in members if is_image_name(m)]
            listing.ignored.extend(tree.location(m) for m in members if not is_image_name(m))
            if not images:
                listing.bad(tree.location(prefix), "empty class folder (no image files)", opts.skip_bad)
                continue
            listing.items.extend(Item(split, label, tree.location(m), member=m) for m in images)
    listing.classes = ordered_classes(item.label for item in listing.items)
    return listing


_READERS = {
    "affectnet": read_affectnet,
    "affectnet2021": read_affectnet2021,
    "fer2013-csv": read_fer2013_csv,
    "folders": read_folders,
}


def read_listing(tree: Tree, layout: Layout, *, affectnet_classes: int = 7,
                 class_map: str | Mapping[str, str] | None = None, skip_bad: bool = False) -> Listing:
    """Run the reader for ``layout`` and check that some split came out of it.

    Any split will do (a data set of test images only can be evaluated); training
    checks for its train split itself.
    """
    if affectnet_classes not in (7, 8):
        raise DataError(f"affectnet_classes must be 7 or 8, got {affectnet_classes}")
    opts = ReadOptions(affectnet_classes, resolve_class_map(class_map), skip_bad)
    listing = _READERS[layout.format](tree, layout.root, opts)
    if not listing.items:
        raise DataError(f"{tree.location(layout.root) if layout.root else tree.name}: "
                        f"no images found in the {layout.format} layout")
    return listing


