"""Readers for the on-disk layouts of FER data sets, layout detection, and image decoding.

A reader turns a layout into a :class:`Listing`: one :class:`Item` per face (split,
canonical class, where its bytes are, optional face box) plus what it dropped and why.
Nothing is decoded here; :mod:`fernoise.data.cache` decodes the items in parallel with
:func:`decode_item`. Sources are read through a :class:`Tree`, so a directory, a
``.tar.gz`` and a ``.zip`` are read the same way, archives without extracting them.
"""
from __future__ import annotations

import csv
import io
import itertools
import os
import tarfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, TextIO

import numpy as np
from PIL import Image, UnidentifiedImageError

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

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm"})
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz", ".zip")
# Text-like members of an archive are kept in memory while listing it: gzip streams
# cannot seek backwards cheaply, and readers need these (CSVs, label .npy files) first.
_SMALL_MEMBER_EXTENSIONS = frozenset({".csv", ".npy", ".txt"})

LAYOUTS: dict[str, str] = {
    "affectnet": "Manually_Annotated_Images/<subdir>/<file>.jpg with training.csv and/or validation.csv",
    "affectnet2021": "train_set/ and val_set/, each with images/N.jpg and annotations/N_exp.npy",
    "fer2013-csv": "fer2013.csv (emotion,pixels,Usage) or icml_face_data.csv (emotion, Usage, pixels)",
    "folders": "<split>/<class>/<image> (splits train, val or validation, test) or <class>/<image>",
}
FORMATS: tuple[str, ...] = (*LAYOUTS, "synthetic")

SPLIT_DIRS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
FER2013_USAGE = {"training": "train", "publictest": "val", "privatetest": "test"}
FER2013_SIDE = 48
_SKIP_HINT = "(pass skip_bad=True / --skip-bad to skip bad inputs)"


def _is_hidden(rel: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


def _ext(rel: str) -> str:
    return os.path.splitext(rel)[1].lower()


def is_image_name(rel: str) -> bool:
    return _ext(rel) in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------- trees


class Tree:
    """Read-only view of a directory or archive: relative POSIX paths -> file contents.

    ``files`` maps each regular, non-hidden file to ``(size, stamp)``, the stamp being its
    modification time (or CRC in a zip): what input fingerprints are made of. ``dirs``
    holds directories, so that empty ones (an empty class folder) can be reported.
    """

    name: str
    files: dict[str, tuple[int, int]]
    dirs: set[str]

    def location(self, rel: str) -> str:
        """How a member is named in messages."""
        return f"{self.name}:{rel}"

    def read(self, rel: str) -> bytes:
        raise NotImplementedError

    def open_text(self, rel: str) -> TextIO:
        """Text of a CSV; undecodable bytes become U+FFFD so they surface as row errors with a line."""
        return io.TextIOWrapper(io.BytesIO(self.read(rel)), encoding="utf-8-sig", errors="replace", newline="")

    def payloads(self, rels: Iterable[str]) -> Iterator[tuple[str, bytes | str]]:
        """Yield ``(rel, bytes)`` for the wanted members in storage order (cheapest to read)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Tree":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def children(self, prefix: str) -> tuple[set[str], set[str]]:
        """Immediate sub-directory names and file names under ``prefix`` ('' or 'a/b/')."""
        dirs: set[str] = set()
        names: set[str] = set()
        for rel in self.files:
            if rel.startswith(prefix):
                head, sep, _ = rel[len(prefix):].partition("/")
                (dirs if sep else names).add(head)
        for rel in self.dirs:
            if rel.startswith(prefix) and len(rel) > len(prefix):
                dirs.add(rel[len(prefix):].partition("/")[0])
        return dirs, names


class DirTree(Tree):
    """A directory on disk, or one file in it (``only``); workers read files themselves."""

    def __init__(self, root: Path, only: str | None = None) -> None:
        self.root = root
        self.name = str(root)
        self.files = {}
        self.dirs = set()
        self.single_file = only is not None  # a CSV given directly: whatever its name, read it
        if only is not None:
            st = (root / only).stat()
            self.files[only] = (st.st_size, st.st_mtime_ns)
            return
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
            base = Path(dirpath).relative_to(root).as_posix()
            self.dirs.update(d if base == "." else f"{base}/{d}" for d in dirnames)
            for fname in sorted(filenames):
                if _is_hidden(fname):
                    continue
                rel = fname if base == "." else f"{base}/{fname}"
                try:
                    st = os.stat(os.path.join(dirpath, fname))
                except OSError:  # dangling link
                    continue
                self.files[rel] = (st.st_size, st.st_mtime_ns)

    def location(self, rel: str) -> str:
        return str(self.root / rel)

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def open_text(self, rel: str) -> TextIO:
        return open(self.root / rel, encoding="utf-8-sig", errors="replace", newline="")

    def payloads(self, rels: Iterable[str]) -> Iterator[tuple[str, bytes | str]]:
        for rel in rels:
            yield rel, str(self.root / rel)


def _member_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


class TarTree(Tree):
    """A tar archive (optionally compressed), read sequentially without extracting it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self.files = {}
        self.dirs = set()
        self._small: dict[str, bytes] = {}
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    rel = _member_name(member.name).rstrip("/")
                    if _is_hidden(rel):
                        continue
                    if member.isdir():
                        self.dirs.add(rel)
                    if not member.isfile():
                        continue
                    self.files[rel] = (member.size, int(member.mtime))
                    if _ext(rel) in _SMALL_MEMBER_EXTENSIONS:
                        self._small[rel] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{path}: cannot read archive: {exc}") from exc

    def read(self, rel: str) -> bytes:
        if rel in self._small:
            return self._small[rel]
        for _, data in self.payloads([rel]):
            return data  # type: ignore[return-value]
        raise DataError(f"{self.location(rel)}: no such member")

    def payloads(self, rels: Iterable[str]) -> Iterator[tuple[str, bytes | str]]:
        wanted = set(rels)
        try:
            with tarfile.open(self.path, "r:*") as tar:
                for member in tar:
                    rel = _member_name(member.name)
                    if rel in wanted and member.isfile():
                        wanted.discard(rel)
                        yield rel, tar.extractfile(member).read()
                        if not wanted:
                            return
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{self.path}: cannot read archive: {exc}") from exc


class ZipTree(Tree):
    """A zip archive; members are read on demand (zip allows random access)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{path}: cannot read archive: {exc}") from exc
        self._infos = {
            _member_name(info.filename): info
            for info in self._zip.infolist()
            if not info.is_dir() and not _is_hidden(_member_name(info.filename))
        }
        self.files = {rel: (info.file_size, info.CRC) for rel, info in self._infos.items()}
        self.dirs = {
            _member_name(info.filename).rstrip("/") for info in self._zip.infolist()
            if info.is_dir() and not _is_hidden(_member_name(info.filename).rstrip("/"))
        }

    def read(self, rel: str) -> bytes:
        try:
            return self._zip.read(self._infos[rel])
        except (zipfile.BadZipFile, OSError, KeyError) as exc:
            raise DataError(f"{self.location(rel)}: cannot read: {exc}") from exc

    def payloads(self, rels: Iterable[str]) -> Iterator[tuple[str, bytes | str]]:
        wanted = set(rels)
        for rel, info in self._infos.items():
            if rel in wanted:
                yield rel, self.read(rel)

    def close(self) -> None:
        self._zip.close()


def open_tree(path: Path) -> Tree:
    """A Tree over a directory, an archive, or a single CSV file."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        return DirTree(path)
    lower = path.name.lower()
    if lower.endswith(".zip"):
        return ZipTree(path)
    if lower.endswith(ARCHIVE_SUFFIXES):
        return TarTree(path)
    if lower.endswith(".csv"):
        return DirTree(path.parent, only=path.name)
    raise DataError(
        f"{path}: not a data set; expected a directory, a .tar.gz/.tgz/.zip archive or a .csv file"
    )


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
        if len(dirs) != 1 or any(is_image_name(n) or _ext(n) == ".csv" for n in names):
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
    csv_name = csv_name or next(n for n in sorted(names) if _ext(n) == ".csv")
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


# --------------------------------------------------------------------------- decoding

_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _scale_high_depth(img: Image.Image) -> Image.Image:
    """16/32-bit integer and float images to 8 bits, keeping their intended brightness."""
    a = np.asarray(img, dtype=np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode.startswith("I;16") or (img.mode == "I" and lo >= 0 and 255 < hi <= 65535):
        a = a / 257.0
    elif img.mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255.0
    elif lo < 0 or hi > 255:  # no known range: stretch what is there
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def to_8bit(img: Image.Image) -> Image.Image:
    """Any Pillow mode to ``L`` or ``RGB``; transparency is composited on black."""
    if img.mode in ("1", "L"):
        return img.convert("L")
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _scale_high_depth(img)
    if img.mode in ("LA", "La", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", img.size, 0)
        background.paste(img.convert("RGB"), mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def _crop_box(box: tuple[float, ...], margin: float, width: int, height: int) -> tuple[tuple[float, ...], bool]:
    """The face box grown by ``margin`` of its size per side, clipped to the image."""
    x, y, w, h = box
    x0, y0, x1, y1 = x - margin * w, y - margin * h, x + w + margin * w, y + h + margin * h
    clipped = (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))
    if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
        raise DataError(f"face box (x={x:g}, y={y:g}, w={w:g}, h={h:g}) lies outside the {width}x{height} image")
    return clipped, clipped != (x0, y0, x1, y1)


def decode_image(data: bytes, *, size: int, channels: int | None = None,
                 box: tuple[float, float, float, float] | None = None, margin: float = 0.0) -> tuple[np.ndarray, bool]:
    """Decode one image file to uint8 ``(size, size, C)``; also whether its face box was clipped.

    JPEGs are decoded at a reduced scale when that still covers ``size`` (Pillow's draft), so
    huge photos are cheap. EXIF orientation is applied after cropping, since face boxes refer
    to the stored pixels. ``channels=None`` keeps grey images (or colour ones whose channels
    agree) as one channel.
    """
    if not data:
        raise DataError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            crop, clipped = _crop_box(box, margin, width, height) if box else ((0, 0, width, height), False)
            scale = size / max(1.0, min(crop[2] - crop[0], crop[3] - crop[1]))
            if scale < 1:
                img.draft("L" if channels == 1 else None, (max(1, int(width * scale)), max(1, int(height * scale))))
            orientation = img.getexif().get(0x0112, 1)
            img.load()
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError("not an image file (or an image format Pillow cannot read)") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"image too large to decode safely: {exc}") from None
    except Exception as exc:  # Pillow raises many types for damaged files
        raise DataError(f"corrupt or truncated image: {exc}") from None
    if box:
        sx, sy = img.size[0] / width, img.size[1] / height
        img = img.crop((round(crop[0] * sx), round(crop[1] * sy), round(crop[2] * sx), round(crop[3] * sy)))
    if orientation in _EXIF_TRANSPOSE:
        img = img.transpose(_EXIF_TRANSPOSE[orientation])
    return _finish(to_8bit(img), size, channels), clipped


def parse_pixels(text: str) -> np.ndarray:
    """A FER2013 pixel string to a 48x48 uint8 image."""
    parts = text.split()
    if len(parts) != FER2013_SIDE * FER2013_SIDE:
        raise DataError(f"expected {FER2013_SIDE * FER2013_SIDE} pixel values (48x48), found {len(parts)}")
    try:
        values = np.array(parts, dtype=np.int64)
    except ValueError:
        bad = next(p for p in parts if not p.lstrip("-").isdigit())
        raise DataError(f"non-numeric pixel value {bad!r}") from None
    if values.min() < 0 or values.max() > 255:
        raise DataError(f"pixel value {int(values.max() if values.max() > 255 else values.min())} out of range 0-255")
    return values.astype(np.uint8).reshape(FER2013_SIDE, FER2013_SIDE)


def _finish(img: Image.Image, size: int, channels: int | None) -> np.ndarray:
    """Resize an L/RGB image and give it the requested (or natural) channel count."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    if img.mode == "RGB":
        arr = np.asarray(img)
        if channels == 1 or (channels is None and int(np.ptp(arr.astype(np.int16), axis=2).max()) <= 2):
            arr = np.asarray(img.convert("L"))
    else:
        arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if channels == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def decode_item(payload: bytes | str, kind: str, *, size: int, channels: int | None,
                box: tuple[float, float, float, float] | None = None, margin: float = 0.0) -> tuple[np.ndarray, bool]:
    """Decode one item: ``kind`` is 'path' (file to read), 'bytes' (file contents) or 'pixels'."""
    if kind == "pixels":
        return _finish(Image.fromarray(parse_pixels(str(payload)), "L"), size, channels), False
    if kind == "path":
        try:
            payload = Path(payload).read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read file: {exc.strerror or exc}") from None
    return decode_image(payload, size=size, channels=channels, box=box, margin=margin)  # type: ignore[arg-type]
