"""Reading a data set's files the same way from a directory, a ``.tar.gz`` or a ``.zip`` (archives
without extracting them): :class:`Tree` and :func:`open_tree`, and which names are images.
"""
from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path
from typing import Iterable, Iterator, TextIO

from fernoise.data.classes import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm"})
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz", ".zip")
# Text-like members of an archive are kept in memory while listing it: gzip streams
# cannot seek backwards cheaply, and readers need these (CSVs, label .npy files) first.
_SMALL_MEMBER_EXTENSIONS = frozenset({".csv", ".npy", ".txt"})


def _is_hidden(rel: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


def extension(rel: str) -> str:
    return os.path.splitext(rel)[1].lower()


def is_image_name(rel: str) -> bool:
    return extension(rel) in IMAGE_EXTENSIONS



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
                    if extension(rel) in _SMALL_MEMBER_EXTENSIONS:
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

