"""Decoding a face: an image file's bytes (any Pillow mode, EXIF orientation, an optional face box) or
a FER2013 pixel string, to a uint8 array of the asked size and channels.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fernoise.data.classes import DataError

FER2013_SIDE = 48

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
