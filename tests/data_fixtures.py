"""Tiny on-disk data sets in every supported layout, built inside a test's tmp_path.

Each face is a flat grey image whose value encodes its class (``class_value``), so a
test can check after decoding that every image kept its label.
"""
from __future__ import annotations

import csv
import io
import tarfile
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

FOLDER_CLASSES = ("angry", "happy", "neutral", "sad")  # folder names, deliberately not canonical order


def class_value(index: int) -> int:
    """Grey value that encodes class ``index`` (of the canonical label order)."""
    return 20 + 30 * index


def image_bytes(img: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **save)
    return buffer.getvalue()


def grey(value: int, size: int = 16) -> Image.Image:
    return Image.new("L", (size, size), value)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _value(name: str) -> int:
    from fernoise.data import CANONICAL_CLASSES, DataError, canonical_name

    try:
        return class_value(CANONICAL_CLASSES.index(canonical_name(name)))
    except DataError:  # unknown names, for tests of that error
        return 250


def make_folders(root: Path, splits: Sequence[str] | None = ("train", "val"),
                 classes: Sequence[str] = FOLDER_CLASSES, per_class: int = 3,
                 values: dict[str, int] | None = None) -> Path:
    """``root/<split>/<class>/i.png`` (or ``root/<class>/i.png`` with ``splits=None``)."""
    for split in splits or [None]:
        for name in classes:
            value = values[name] if values else _value(name)
            base = root / split / name if split else root / name
            for i in range(per_class):
                write(base / f"{i}.png", image_bytes(grey(value)))
    return root


FER_LABEL_TO_CANONICAL = ("anger", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def pixels_for(emotion: int) -> str:
    from fernoise.data import CANONICAL_CLASSES

    value = class_value(CANONICAL_CLASSES.index(FER_LABEL_TO_CANONICAL[emotion]))
    return " ".join([str(value)] * 2304)


def make_fer2013_csv(path: Path, rows: Iterable[tuple[int, str]] | None = None, *, icml: bool = False,
                     per_class: int = 2) -> Path:
    """fer2013.csv (emotion,pixels,Usage) or icml_face_data.csv (emotion, Usage, pixels)."""
    if rows is None:
        rows = [(e, u) for u in ("Training", "Training", "PublicTest", "PrivateTest") for e in range(7)
                for _ in range(per_class)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        if icml:
            handle.write("emotion, Usage, pixels\n")
            for emotion, usage in rows:
                handle.write(f"{emotion}, {usage}, {pixels_for(emotion)}\n")
        else:
            writer = csv.writer(handle)
            writer.writerow(["emotion", "pixels", "Usage"])
            for emotion, usage in rows:
                writer.writerow([emotion, pixels_for(emotion), usage])
    return path


AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                    "facial_landmarks", "expression", "valence", "arousal"]


def affectnet_photo(value: int, box: tuple[int, int, int, int], size: int = 64) -> bytes:
    """A dark photo with a face box of grey ``value``: a correct crop is uniformly ``value``."""
    arr = np.full((size, size), 5, dtype=np.uint8)
    x, y, w, h = box
    arr[max(0, y):y + h, max(0, x):x + w] = value
    return image_bytes(Image.fromarray(arr), "PNG")


def make_affectnet(root: Path, *, val_header: bool = True, codes: Sequence[int] = tuple(range(11)),
                   per_code: int = 2) -> Path:
    """AffectNet as released, with every code in ``codes`` and one box partly outside its image."""
    box = (16, 16, 32, 32)
    rows: dict[str, list[list[str]]] = {"training.csv": [], "validation.csv": []}
    for csv_name in rows:
        for code in codes:
            for i in range(per_code):
                rel = f"{code}/{csv_name[0]}{i}.png"
                value = class_value(min(code, 7))
                write(root / "Manually_Annotated_Images" / rel, affectnet_photo(value, box))
                rows[csv_name].append([rel, *map(str, box), "1.0;2.0", str(code), "0.1", "-0.2"])
    # a box sticking out of the right and bottom edges: clipped to the image and counted
    write(root / "Manually_Annotated_Images" / "edge/e.png", affectnet_photo(class_value(1), (40, 40, 40, 40)))
    rows["training.csv"].append(["edge/e.png", "40", "40", "40", "40", "", "1", "0", "0"])
    for csv_name, body in rows.items():
        with open(root / csv_name, "w", newline="") as handle:
            writer = csv.writer(handle)
            if csv_name == "training.csv" or val_header:
                writer.writerow(AFFECTNET_HEADER)
            writer.writerows(body)
    return root


def make_affectnet2021(root: Path, codes: Sequence[int] = tuple(range(8)), per_code: int = 2) -> Path:
    """train_set/ and val_set/ with images/N.jpg and annotations/N_exp.npy (string labels, as released)."""
    n = 0
    for set_dir in ("train_set", "val_set"):
        for code in codes:
            for _ in range(per_code):
                write(root / set_dir / "images" / f"{n}.jpg", image_bytes(grey(class_value(code)), "JPEG", quality=95))
                buffer = io.BytesIO()
                np.save(buffer, np.array(str(code)))
                write(root / set_dir / "annotations" / f"{n}_exp.npy", buffer.getvalue())
                n += 1
    return root


def tar_directory(source: Path, archive: Path, arcname: str) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=arcname)
    return archive


def zip_directory(source: Path, archive: Path, arcname: str) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                zf.write(path, f"{arcname}/{path.relative_to(source).as_posix()}")
    return archive


def labels_match_values(data, split: str = "train") -> bool:
    """Every decoded face's grey value is the one its label encodes."""
    from fernoise.data import CANONICAL_CLASSES

    s = data.splits[split]
    expected = np.array([class_value(CANONICAL_CLASSES.index(data.classes[k])) for k in s.labels])
    centre = np.asarray(s.images)[:, s.images.shape[1] // 2, s.images.shape[2] // 2, 0].astype(int)
    return bool(np.all(np.abs(centre - expected) <= 2))
