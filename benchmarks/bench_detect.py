"""Face detection: recall and false positives of each detector on real and composited photos, and speed.

Faces come from real photos that ship in packages: matplotlib's ``grace_hopper.jpg`` and
scikit-image's ``astronaut`` (frontal portraits) and ``camera`` (a man turned to his camcorder,
grey). Their face boxes were drawn by hand (:data:`FACES`). Face-free real images from
scikit-image (coffee, a cat, a rocket, textures, coins, a retina, ...) are the backgrounds and
the negatives. Every composite is 640x480 unless said otherwise; the head and shoulders are
pasted with a feathered elliptical edge, so the ground-truth box is known:

==============  ==============================================================================
condition       what
==============  ==============================================================================
real photos     the three portraits as they ship
plain           a face 80-160 px high on a background
mouth covered   a skin-coloured, shaded hand-like blob with finger gaps over mouth and chin
eyes covered    a dark bar over the eyes
half covered    a skin-coloured blob over one side of the face, eye to chin (hands over a face)
rotated         the face turned in the image plane by -30, -20, 20 or 30 degrees
turned          a perspective squeeze of one side of the face (an approximation of a face
                turned ~30 degrees away; a 2-D photo cannot be truly turned)
blur            plain, then a Gaussian blur (sigma 2.5)
low light       plain, darkened to 20% brightness with sensor-like noise
whole image     the face filling the image (box grown by 10%) at 48, 120, 300 and 600 px
small (30 px)   eight faces 28-32 px high in a 1600x1200 background (a group photo)
no face         14 face-free real images as shipped and 10 640x480 backgrounds
==============  ==============================================================================

A detection matches a ground-truth face at IoU >= 0.5 (each face at most once); every other
detection is a false positive. Time: median milliseconds per 640x480 composite (detection only).

    python benchmarks/bench_detect.py [--detectors yunet haar] [--threads 2] [--save DIR]

Needs scikit-image (benchmark only); ``--save DIR`` writes each photo with the boxes drawn.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import skimage.data
from matplotlib import cbook
from PIL import Image

from fernoise.detect import Box, make_detector

# Hand-drawn face boxes (x, y, w, h): brow line or hairline to chin, cheek to cheek.
FACES: dict[str, Box] = {"grace_hopper": (182, 118, 172, 216), "astronaut": (177, 60, 92, 118),
                         "camera": (192, 110, 62, 86)}
NEGATIVES = ("coffee", "chelsea", "rocket", "hubble_deep_field", "brick", "grass", "gravel", "moon", "coins",
             "retina", "clock", "horse", "page", "text")
BACKGROUNDS = ("coffee", "chelsea", "rocket", "hubble_deep_field", "brick", "grass", "gravel", "moon", "coins",
               "retina")
IOU_MATCH = 0.5


@dataclass
class Photo:
    condition: str
    image: np.ndarray  # RGB uint8
    faces: list[Box]


def rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        return np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def face_photos() -> dict[str, np.ndarray]:
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as img:
        grace = np.asarray(img.convert("RGB"))
    return {"grace_hopper": grace, "astronaut": skimage.data.astronaut(), "camera": rgb(skimage.data.camera())}


def background(name: str, width: int, height: int) -> np.ndarray:
    return cv2.resize(rgb(getattr(skimage.data, name)()), (width, height), interpolation=cv2.INTER_AREA)


def head_patch(photo: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray, Box]:
    """Head and shoulders around ``box``, a feathered elliptical alpha for it, and the box in the patch."""
    x, y, w, h = box
    x0, y0 = max(0, round(x - 0.55 * w)), max(0, round(y - 0.45 * h))
    x1, y1 = min(photo.shape[1], round(x + 1.55 * w)), min(photo.shape[0], round(y + 1.6 * h))
    patch = photo[y0:y1, x0:x1]
    alpha = np.zeros(patch.shape[:2], np.float32)
    cv2.ellipse(alpha, (patch.shape[1] // 2, patch.shape[0] // 2), (patch.shape[1] // 2 - 2, patch.shape[0] // 2 - 2),
                0, 0, 360, 1.0, -1)
    return patch, cv2.GaussianBlur(alpha, (0, 0), max(1.0, 0.03 * w)), (x - x0, y - y0, w, h)


def place(canvas: np.ndarray, photo: np.ndarray, box: Box, height: float, centre: tuple[float, float],
          angle: float = 0.0, squeeze: float = 0.0, flip: bool = False) -> Box:
    """Paste the head of ``photo`` so its face is ``height`` px high and centred at ``centre``; return its box.

    ``angle`` turns it in the image plane (degrees), ``squeeze`` narrows one side by that fraction
    (an approximate turn away), ``flip`` mirrors it.
    """
    patch, alpha, (fx, fy, fw, fh) = head_patch(photo, box)
    if flip:
        patch, alpha, fx = patch[:, ::-1], alpha[:, ::-1], patch.shape[1] - fx - fw
    scale = height / fh
    size = (max(1, round(patch.shape[1] * scale)), max(1, round(patch.shape[0] * scale)))
    patch = cv2.resize(np.ascontiguousarray(patch), size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    alpha = cv2.resize(np.ascontiguousarray(alpha), size, interpolation=cv2.INTER_LINEAR)
    fx, fy, fw, fh = fx * scale, fy * scale, fw * scale, fh * scale
    corners = np.float32([[fx, fy], [fx + fw, fy], [fx + fw, fy + fh], [fx, fy + fh]])
    turned = corners.copy()
    turned[1:3, 0] -= squeeze * fw  # the right side comes closer to the left ...
    turned[1, 1] += 0.5 * squeeze * fh  # ... and shrinks vertically, as a side turned away
    turned[2, 1] -= 0.5 * squeeze * fh
    cx, cy = fx + fw / 2, fy + fh / 2
    rotation = np.vstack([cv2.getRotationMatrix2D((cx, cy), angle, 1.0), [0, 0, 1]])
    shift = np.array([[1, 0, centre[0] - cx], [0, 1, centre[1] - cy], [0, 0, 1]])
    matrix = shift @ rotation @ cv2.getPerspectiveTransform(corners, turned)
    dsize = (canvas.shape[1], canvas.shape[0])
    warped = cv2.warpPerspective(patch, matrix, dsize, flags=cv2.INTER_LINEAR)
    weight = cv2.warpPerspective(alpha, matrix, dsize, flags=cv2.INTER_LINEAR)[..., None]
    canvas[:] = np.clip(canvas * (1 - weight) + warped * weight, 0, 255).astype(np.uint8)
    moved = cv2.perspectiveTransform(corners[None], matrix)[0]
    if angle:  # a detector's box for a tilted face is upright and face-sized, not the tilted box's hull
        mx, my = moved.mean(0)
        return round(mx - fw / 2), round(my - fh / 2), round(fw), round(fh)
    (x0, y0), (x1, y1) = moved.min(0), moved.max(0)
    return round(x0), round(y0), round(x1 - x0), round(y1 - y0)


def skin_colour(photo: np.ndarray, box: Box) -> np.ndarray:
    x, y, w, h = box
    return np.median(photo[y + int(0.55 * h):y + int(0.7 * h), x + int(0.3 * w):x + int(0.7 * w)].reshape(-1, 3), 0)


def cover(canvas: np.ndarray, box: Box, part: str, colour: np.ndarray, rng: np.random.Generator) -> None:
    """Cover ``part`` (mouth, eyes, half) of the face in ``box``: a shaded skin blob, or a dark bar for eyes."""
    x, y, w, h = box
    mask = np.zeros(canvas.shape[:2], np.float32)
    if part == "eyes":
        cv2.rectangle(mask, (round(x - 0.05 * w), round(y + 0.25 * h)), (round(x + 1.05 * w), round(y + 0.5 * h)), 1.0, -1)
        colour = rng.uniform(10, 50, 3)
    elif part == "mouth":
        cv2.ellipse(mask, (round(x + 0.5 * w), round(y + 0.82 * h)), (round(0.5 * w), round(0.24 * h)),
                    float(rng.uniform(-15, 15)), 0, 360, 1.0, -1)
    else:  # one side, from the eye down past the chin
        side = x + (0.1 * w if rng.random() < 0.5 else 0.9 * w)
        cv2.ellipse(mask, (round(side), round(y + 0.65 * h)), (round(0.32 * w), round(0.5 * h)), 0, 0, 360, 1.0, -1)
    layer = np.empty(canvas.shape, np.float32)
    layer[:] = colour * rng.uniform(0.85, 1.1)
    if part != "eyes":  # shading from top to bottom and three finger gaps, so it reads as a hand
        ys = np.linspace(1.1, 0.8, canvas.shape[0], dtype=np.float32)[:, None, None]
        layer *= ys
        for i in range(1, 4):
            gx = round(x + w * (0.15 + 0.22 * i) if part == "mouth" else x + w * 0.25 * i)
            cv2.line(layer, (gx, round(y + 0.3 * h)), (gx + round(0.05 * w), round(y + 1.2 * h)), (colour * 0.6).tolist(),
                     max(1, round(0.02 * w)))
    mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, 0.02 * w))[..., None]
    canvas[:] = np.clip(canvas * (1 - mask) + layer * mask, 0, 255).astype(np.uint8)


def build_photos(seed: int = 0) -> list[Photo]:
    rng = np.random.default_rng(seed)
    sources = face_photos()
    names = list(FACES)
    photos = [Photo("real photos", sources[n], [FACES[n]]) for n in names]

    def composite(k: int, j: int, **transform: float) -> tuple[np.ndarray, Box, str]:
        """The ``k``-th face (identities in turn, mirrored every other time) on the ``k + j``-th background."""
        name = names[k % len(names)]
        canvas = background(BACKGROUNDS[(k + j) % len(BACKGROUNDS)], 640, 480)
        height = float(rng.uniform(80, 160))
        centre = (float(rng.uniform(140, 500)), float(rng.uniform(150, 330)))
        box = place(canvas, sources[name], FACES[name], height, centre, flip=bool(k % 2), **transform)
        return canvas, box, name

    for k in range(12):
        for j, condition in enumerate(("plain", "mouth covered", "eyes covered", "half covered", "blur", "low light")):
            canvas, box, name = composite(k, j)
            if condition.endswith("covered"):
                cover(canvas, box, condition.split()[0], skin_colour(sources[name], FACES[name]), rng)
            elif condition == "blur":
                canvas = cv2.GaussianBlur(canvas, (0, 0), 2.5)
            elif condition == "low light":
                canvas = np.clip(canvas * 0.2 + rng.normal(0, 3, canvas.shape), 0, 255).astype(np.uint8)
            photos.append(Photo(condition, canvas, [box]))
        canvas, box, _ = composite(k, 6, angle=(-30, -20, 20, 30)[k % 4])
        photos.append(Photo("rotated", canvas, [box]))
        canvas, box, _ = composite(k, 7, squeeze=0.25)
        photos.append(Photo("turned", canvas, [box]))
    for k, (name, side) in enumerate((n, s) for n in names for s in (48, 120, 300, 600)):
        x, y, w, h = FACES[name]
        m = 0.1 * max(w, h)
        crop = sources[name][max(0, round(y - m)):round(y + h + m), max(0, round(x - m)):round(x + w + m)]
        scale = side / crop.shape[0]
        image = cv2.resize(crop, (round(crop.shape[1] * scale), side), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        box = (round((x - max(0, x - m)) * scale), round((y - max(0, y - m)) * scale), round(w * scale), round(h * scale))
        photos.append(Photo("whole image", image, [box]))
    for k in range(3):
        canvas = background(BACKGROUNDS[(k + 4) % len(BACKGROUNDS)], 1600, 1200)
        boxes = [place(canvas, sources[names[(k + i) % 3]], FACES[names[(k + i) % 3]], float(rng.uniform(28, 32)),
                       (200 + 400 * (i % 4) + float(rng.uniform(-60, 60)), 350 + 500 * (i // 4) + float(rng.uniform(-80, 80))),
                       flip=bool(i % 2)) for i in range(8)]
        photos.append(Photo("small (30 px)", canvas, boxes))
    photos += [Photo("no face", rgb(getattr(skimage.data, n)()), []) for n in NEGATIVES]
    photos += [Photo("no face", background(n, 640, 480), []) for n in BACKGROUNDS]
    return photos


def iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def match(found: list[Box], truth: list[Box]) -> tuple[int, int]:
    """(faces found, false positives): each true face takes its best unused detection at IoU >= 0.5."""
    unused, hits = list(found), 0
    for face in truth:
        best = max(unused, key=lambda b: iou(b, face), default=None)
        if best is not None and iou(best, face) >= IOU_MATCH:
            unused.remove(best)
            hits += 1
    return hits, len(unused)


def timed_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def draw(photo: Photo, found: list[Box]) -> np.ndarray:
    canvas = cv2.cvtColor(photo.image, cv2.COLOR_RGB2BGR)
    for x, y, w, h in photo.faces:
        cv2.rectangle(canvas, (x, y), (x + w, y + h), (255, 255, 255), 1)
    for x, y, w, h in found:
        cv2.rectangle(canvas, (x, y), (x + w, y + h), (0, 220, 0), 2)
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", nargs="+", default=["yunet", "haar"])
    parser.add_argument("--threads", type=int, default=2, help="OpenCV threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per 640x480 photo (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", metavar="DIR", help="write each photo with true (white) and found (green) boxes")
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    photos = build_photos(args.seed)
    conditions = list(dict.fromkeys(p.condition for p in photos))
    results: dict[str, dict[str, list[int]]] = {}
    speed: dict[str, float] = {}
    for name in args.detectors:
        detector = make_detector(name)
        tally = results[name] = {c: [0, 0, 0, 0] for c in conditions}  # photos, faces, found, false positives
        times = []
        for i, photo in enumerate(photos):
            image = Image.fromarray(photo.image)
            found = [d.box for d in detector(image)]
            hits, false = match(found, photo.faces)
            row = tally[photo.condition]
            row[0] += 1
            row[1] += len(photo.faces)
            row[2] += hits
            row[3] += false
            if photo.image.shape[:2] == (480, 640) and photo.faces:
                times.append(timed_ms(lambda: detector(image), args.repeats))
            if args.save:
                os.makedirs(args.save, exist_ok=True)
                cv2.imwrite(str(Path(args.save) / f"{name}-{i:03d}-{photo.condition.split()[0]}.jpg"), draw(photo, found))
        speed[name] = statistics.median(times)
    head = "| condition | photos | faces | " + " | ".join(f"recall {n} | FP {n}" for n in args.detectors) + " |"
    print(head)
    print("|" + "---|" * (3 + 2 * len(args.detectors)))
    totals = {n: [0, 0, 0, 0] for n in args.detectors}
    for c in conditions:
        first = results[args.detectors[0]][c]
        cells = []
        for n in args.detectors:
            photos_n, faces, hits, false = results[n][c]
            totals[n] = [t + v for t, v in zip(totals[n], results[n][c])]
            cells += [f"{hits / faces:.2f} ({hits}/{faces})" if faces else "-", str(false)]
        print(f"| {c} | {first[0]} | {first[1]} | " + " | ".join(cells) + " |")
    cells = []
    for n in args.detectors:
        photos_n, faces, hits, false = totals[n]
        cells += [f"{hits / faces:.2f} ({hits}/{faces})", f"{false} ({20 * false / photos_n:.2f} per 20 photos)"]
    print(f"| all | {totals[args.detectors[0]][0]} | {totals[args.detectors[0]][1]} | " + " | ".join(cells) + " |")
    print("| ms per 640x480 photo (median) | | | " + " | ".join(f"{speed[n]:.1f} | " for n in args.detectors) + "|")


if __name__ == "__main__":
    main()
