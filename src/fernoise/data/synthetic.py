"""Built-in procedural face data set: seven expressions, no files, no downloads.

Faces are implicit shapes (ellipses, curves, boxes) evaluated as approximate signed
distances on a pixel grid for a whole batch at once; a one-pixel linear ramp on the
distance gives the anti-aliased coverage of each shape. Expressions are drawn from
per-class prototypes of brow, eye and mouth parameters, blended with neutral by a
random intensity and jittered, so that classes overlap (weak expressions look
neutral, fear and surprise differ subtly). Identity, pose, lighting, blur, sensor
noise, occluders and background clutter vary per face, and labels follow an
AffectNet-like imbalance with a little label noise.
"""
from __future__ import annotations

import hashlib
import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
import numpy as np

from fernoise.data.packed import SPLITS, PackedData, Split, channel_stats, class_counts

SYNTHETIC_CLASSES: list[str] = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]

# AffectNet-like class frequencies in SYNTHETIC_CLASSES order, normalised to sum to 1.
_FREQUENCIES = np.array([0.22, 0.35, 0.09, 0.08, 0.04, 0.03, 0.09])
CLASS_PRIOR: np.ndarray = _FREQUENCIES / _FREQUENCIES.sum()

# Fraction of labels resampled uniformly over all classes (so ~6/7 of them change).
LABEL_NOISE = 0.03

# Small enough that rendering all splits takes about two seconds on two CPU cores and
# a CPU training epoch stays short, large enough for the rarest class (disgust, ~3%)
# to have ~45 val and test faces.
DEFAULT_SPLIT_SIZES: dict[str, int] = {"train": 6000, "val": 1500, "test": 1500}

# Bump when the renderer changes so cached copies and fingerprints do not mix versions.
GENERATOR_VERSION = 1

# Faces per rendering step. Small steps keep the temporaries cache-resident (measured:
# larger ones are slower at 48x48) and give the worker threads many pieces to share.
_CHUNK = 32
_WORKERS = min(8, os.cpu_count() or 1)

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# Expression prototypes per class, in SYNTHETIC_CLASSES order. Face coordinates:
# u to the right, v downwards, the face ellipse spans about [-0.75, 0.75] x [-0.92, 0.92].
_PROTOTYPES: dict[str, tuple[float, ...]] = {
    #                 neutral happy   sad  surprise  fear  disgust anger
    "brow_raise":   (0.0, -0.01, 0.0, -0.10, -0.07, 0.04, 0.05),  # + lowers the brows
    "brow_slant":   (0.0, 0.0, 0.07, 0.0, 0.06, -0.03, -0.09),    # + raises the inner ends
    "brow_arch":    (0.02, 0.03, 0.0, 0.06, 0.0, 0.0, 0.0),       # + raises the middle
    "eye_open":     (0.06, 0.04, 0.05, 0.105, 0.10, 0.032, 0.04),   # eye half-height
    "mouth_curve":  (0.0, -0.13, 0.09, 0.0, 0.03, 0.05, 0.02),    # + pulls the corners down
    "mouth_width":  (1.0, 1.25, 0.9, 0.6, 1.2, 1.0, 0.85),
    "open_up":      (0.0, 0.01, 0.0, 0.07, 0.025, 0.035, 0.0),
    "open_lo":      (0.0, 0.08, 0.0, 0.17, 0.06, 0.02, 0.01),
    "lip_raise":    (0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.0),         # disgust: M-shaped upper lip
    "wrinkle":      (0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.3),          # nose-bridge wrinkles
}
_JITTER: dict[str, float] = {
    "brow_raise": 0.02, "brow_slant": 0.025, "brow_arch": 0.02, "eye_open": 0.012,
    "mouth_curve": 0.03, "mouth_width": 0.1, "open_up": 0.015, "open_lo": 0.02,
    "lip_raise": 0.01, "wrinkle": 0.15,
}
_TEETH_PROB = np.array([0.0, 0.7, 0.0, 0.1, 0.6, 0.5, 0.3])
_OCCLUDED_FRACTION = 0.12  # split evenly between sunglasses, a hand, and an object


def sample_labels(n: int, rng: np.random.Generator, noise: float = LABEL_NOISE) -> tuple[np.ndarray, np.ndarray]:
    """Clean labels with the class prior's exact quotas, and the observed (noisy) labels.

    Quotas instead of i.i.d. draws keep every class present in small splits and the
    per-class counts stable across seeds.
    """
    quota = np.floor(CLASS_PRIOR * n).astype(np.int64)
    remainder = CLASS_PRIOR * n - quota
    quota[np.argsort(-remainder, kind="stable")[: n - quota.sum()]] += 1
    clean = rng.permutation(np.repeat(np.arange(len(SYNTHETIC_CLASSES), dtype=np.int64), quota))
    observed = clean.copy()
    resampled = rng.random(n) < noise
    observed[resampled] = rng.integers(0, len(SYNTHETIC_CLASSES), int(resampled.sum()))
    return clean, observed


def _uniform(rng: np.random.Generator, n: int, low: float, high: float, shape: tuple[int, ...] = (1, 1)) -> np.ndarray:
    """``n`` float32 draws of ``shape``; the default (1, 1) broadcasts a per-face scalar over pixel grids."""
    return rng.uniform(low, high, (n, *shape)).astype(np.float32)


def _per_face(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(-1, 1, 1)


def _expression(labels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Brow, eye and mouth parameters: each class's prototype blended with neutral, jittered."""
    n = len(labels)
    # Expression intensity: weak expressions drift towards neutral, which makes classes overlap.
    intensity = rng.uniform(0.45, 1.15, n)
    p: dict[str, np.ndarray] = {}
    for name, proto in _PROTOTYPES.items():
        table = np.asarray(proto)
        value = table[0] + intensity * (table[labels] - table[0]) + rng.normal(0.0, _JITTER[name], n)
        p[name] = _per_face(value)
    # Smiles range from closed to wide open.
    p["open_lo"] *= _per_face(np.where(labels == 1, rng.uniform(0.0, 1.5, n), 1.0))
    for name in ("open_up", "open_lo", "lip_raise", "wrinkle"):
        np.maximum(p[name], 0.0, out=p[name])
    np.maximum(p["eye_open"], 0.012, out=p["eye_open"])
    np.maximum(p["mouth_width"], 0.4, out=p["mouth_width"])
    p["teeth"] = _per_face(rng.random(n) < _TEETH_PROB[labels])
    return p


# Identity (where the features sit, how big) and pose ranges: name -> (low, high) of a uniform draw.
_IDENTITY = {"face_w": (0.66, 0.80), "eye_x": (0.27, 0.34), "eye_y": (-0.15, -0.07), "eye_w": (0.13, 0.16),
             "brow_gap": (0.13, 0.17), "brow_thick": (0.025, 0.045), "nose_y": (0.20, 0.27),
             "mouth_y": (0.45, 0.54), "mouth_w": (0.24, 0.30), "hairline": (-0.75, -0.45),
             "hair_length": (-0.4, 0.6)}


def _identity_and_pose(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Identity, then pose: in-plane roll, horizontal squash for yaw, scale (face units -> image units), shift."""
    p = {name: _uniform(rng, n, low, high) for name, (low, high) in _IDENTITY.items()}
    p["roll"] = _per_face(np.clip(rng.normal(0.0, 0.17, n), -0.5, 0.5))
    for name, low, high in (("squash", 0.82, 1.0), ("scale", 0.92, 1.12), ("tx", -0.09, 0.09), ("ty", -0.07, 0.09)):
        p[name] = _uniform(rng, n, low, high)
    return p


def _colours(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """RGB colours (n, 3) of skin, hair, eyes and mouth; converted to luminance later for grayscale."""
    tone = rng.uniform(0.0, 1.0, (n, 1))
    skin = (1.0 - tone) * np.array([0.36, 0.24, 0.18]) + tone * np.array([0.98, 0.84, 0.74])
    skin *= rng.uniform(0.85, 1.1, (n, 1))
    hair_shade = rng.uniform(0.0, 1.0, (n, 1)) ** 2
    hair = (1.0 - hair_shade) * np.array([0.08, 0.06, 0.05]) + hair_shade * np.array([0.62, 0.48, 0.28])
    return {
        "skin": skin, "hair": hair,
        "iris": rng.uniform(0.05, 0.35, (n, 1)) * rng.uniform(0.6, 1.2, (n, 3)),
        "lips": skin * np.array([0.80, 0.55, 0.55]),
        "mouth": np.array([[0.22, 0.05, 0.06]]) * rng.uniform(0.5, 1.2, (n, 1)),
        "teeth": np.array([[0.95, 0.93, 0.86]]) * rng.uniform(0.85, 1.05, (n, 1)),
        "sclera": np.array([[0.96, 0.95, 0.92]]) * rng.uniform(0.85, 1.05, (n, 1)),
        "line": hair * 0.6,
    }


def _occluders(p: dict[str, np.ndarray], skin: np.ndarray,
               rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``occluder``: 1 sunglasses, 2 a hand (skin coloured), 3 some object, 0 none; its ``box`` (centre u,
    centre v, half width, half height) in face coordinates; and, apart, its RGB colour."""
    n = len(skin)
    kind = rng.integers(1, 4, n) * (rng.random(n) < _OCCLUDED_FRACTION)
    glasses = np.concatenate([np.zeros((n, 1)), p["eye_y"][:, 0], p["eye_x"][:, 0] + p["eye_w"][:, 0] + 0.06,
                              rng.uniform(0.07, 0.1, (n, 1))], axis=1)
    hand = rng.uniform([-0.35, 0.3, 0.22, 0.15], [0.35, 0.7, 0.4, 0.3], (n, 4))
    thing = rng.uniform([-0.6, -0.6, 0.12, 0.08], [0.6, 0.8, 0.4, 0.35], (n, 4))
    choice = [kind[:, None] == 1, kind[:, None] == 2]
    params = {"occluder": kind, "box": np.select(choice, [glasses, hand], thing).astype(np.float32)}
    colour = np.select(choice, [rng.uniform(0.0, 0.15, (n, 3)), skin * rng.uniform(0.9, 1.1, (n, 1))],
                       rng.uniform(0.0, 1.0, (n, 3)))
    return params, colour


def _photometrics(n: int, channels: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Exposure, lighting gradient, blur weight, sensor noise std, and background clutter: coarse random
    grids (n, C, k, k), upsampled when rendering; in colour a grey pattern with a per-face tint and a
    little chroma, to stay photo-like."""
    p = {"exposure": _uniform(rng, n, 0.8, 1.2), "light": rng.normal(0.0, 0.25, (n, 2)).astype(np.float32),
         "blur": _uniform(rng, n, 0.0, 0.6), "noise": _per_face(rng.uniform(0.0, 1.0, n) ** 2 * 0.06)}
    coarse = _uniform(rng, n, 0.0, 0.9, (1, 4, 4))
    if channels == 3:
        coarse = coarse * _uniform(rng, n, 0.6, 1.2, (3, 1, 1)) + _uniform(rng, n, -0.15, 0.15, (3, 4, 4))
    p["clutter_lo"] = coarse
    p["clutter_hi"] = _uniform(rng, n, -0.2, 0.2, (1, 12, 12))
    return p


def _sample_params(labels: np.ndarray, channels: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-face expression, identity, pose, photometric and occluder parameters.

    Scalars per face are shaped (N, 1, 1) so they broadcast over a batch of pixel grids;
    colours ``c_<name>`` are (N, C). The order of the draws is part of the generator
    (:data:`GENERATOR_VERSION`).
    """
    n = len(labels)
    p = _expression(labels, rng)
    p.update(_identity_and_pose(n, rng))
    colours = _colours(n, rng)
    occluders, colours["occluder"] = _occluders(p, colours["skin"], rng)
    p.update(occluders)
    p.update(_photometrics(n, channels, rng))
    for name, rgb in colours.items():
        rgb = rgb.astype(np.float32)
        p["c_" + name] = np.clip(rgb if channels == 3 else rgb @ _LUMA[:, None], 0.0, 1.0)
    return p


def _interp_matrix(size: int, knots: int) -> np.ndarray:
    """Linear-interpolation weights (size, knots) that upsample a coarse grid to pixels."""
    pos = (np.arange(size) + 0.5) / size * (knots - 1)
    left = np.minimum(pos.astype(np.int64), knots - 2)
    frac = pos - left
    weights = np.zeros((size, knots), dtype=np.float32)
    weights[np.arange(size), left] = 1.0 - frac
    weights[np.arange(size), left + 1] = frac
    return weights


def _upsample(coarse: np.ndarray, size: int) -> np.ndarray:
    """(n, C, k, k) -> (n, C, size, size) by separable linear interpolation."""
    m = _interp_matrix(size, coarse.shape[-1])
    rows = m @ coarse
    # The column pass as one large matrix product rather than n * C tiny ones.
    return (rows.reshape(-1, rows.shape[-1]) @ m.T).reshape(*rows.shape[:-1], size)


def _coverage(d: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Fraction of each pixel inside a shape with signed distance d (face units), px pixels per unit."""
    a = d * px
    np.subtract(0.5, a, out=a)
    return np.clip(a, 0.0, 1.0, out=a)


def _ellipse(u: np.ndarray, v: np.ndarray, a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """Signed distance to an ellipse, to first order near its edge: f / |grad f| (one sqrt, thin eyes stay sharp)."""
    ua, vb = u / a, v / b
    f = ua * ua
    f += vb * vb
    f -= 1.0
    ua /= a
    ua *= ua
    vb /= b
    vb *= vb
    ua += vb
    grad = np.sqrt(ua, out=ua)
    grad *= 2.0
    grad += 1e-6
    f /= grad
    return f


def _circle(du: np.ndarray, dv: np.ndarray, r: float) -> np.ndarray:
    """Signed distance to a circle, to first order near its edge (no sqrt)."""
    return (du * du + dv * dv - r * r) * (0.5 / r)


class _Canvas:
    """Channels-first images (n, C, H, W) of one chunk, painted in place.

    Painting and blurring reuse one scratch buffer: a fresh temporary of this size per
    layer costs more than the arithmetic.
    """

    def __init__(self, img: np.ndarray) -> None:
        self.img = img
        self._scratch = np.empty_like(img)

    def paint(self, alpha: np.ndarray, colour: np.ndarray) -> None:
        """Composite a per-face colour (n, C) over the images with per-pixel alpha (n, H, W)."""
        np.subtract(colour[:, :, None, None], self.img, out=self._scratch)
        self._scratch *= alpha[:, None]
        self.img += self._scratch

    def blur(self, weight: np.ndarray) -> None:
        """Separable [w/2, 1 - w, w/2] blur with a per-face weight w (n, 1, 1); edges replicate."""
        half = weight[:, None] * 0.5
        img, s = self.img, self._scratch
        for axis in (2, 3):
            def cut(start: int | None, stop: int | None) -> tuple[slice, ...]:
                return (slice(None),) * axis + (slice(start, stop),)

            # s = left + right neighbours - 2 * img, then img += w/2 * s.
            s[cut(1, None)] = img[cut(None, -1)]
            s[cut(None, 1)] = img[cut(None, 1)]
            s[cut(None, -1)] += img[cut(1, None)]
            s[cut(-1, None)] += img[cut(-1, None)]
            s -= img
            s -= img
            s *= half
            img += s


@dataclass
class _Frame:
    """Face coordinates of every pixel of a chunk: u right, v down, each (n, H, W)."""

    u: np.ndarray
    v: np.ndarray
    au: np.ndarray  # |u|: features are mirror-symmetric, so one evaluation draws both eyes or brows
    px: np.ndarray  # pixels per face unit (n, 1, 1), the width of the anti-aliasing ramp


def _pose_frame(p: dict[str, np.ndarray], grid: np.ndarray) -> _Frame:
    """Map pixel centres to face coordinates through the inverse pose (shift, roll, scale, squash)."""
    cos, sin = np.cos(p["roll"]), np.sin(p["roll"])
    inv_x, inv_y = 1.0 / (p["scale"] * p["squash"]), 1.0 / p["scale"]
    # Rows and columns separate into (n, H, 1) and (n, 1, W) terms, so each coordinate
    # costs a single full-size add.
    gx = grid[None, None, :] - p["tx"]
    gy = grid[None, :, None] - p["ty"]
    u = (cos * inv_x) * gx + (sin * inv_x) * gy
    v = (cos * inv_y) * gy - (sin * inv_y) * gx
    return _Frame(u=u, v=v, au=np.abs(u), px=p["scale"] * (len(grid) / 2.0))


def _draw_head(canvas: _Canvas, p: dict[str, np.ndarray], f: _Frame) -> np.ndarray:
    """Hair behind the head, then the face with radial shading; returns the head's distance for the fringe."""
    fw = p["face_w"]
    head_d = _ellipse(f.u, f.v + 0.04, fw + 0.07, 1.0)
    canvas.paint(_coverage(np.maximum(head_d, f.v - p["hair_length"]), f.px), p["c_hair"])
    face_alpha = _coverage(_ellipse(f.u, f.v, fw, 0.92), f.px)
    canvas.paint(face_alpha, p["c_skin"])
    shade = (f.u / fw) ** 2
    shade += (f.v * (1.0 / 0.92)) ** 2
    np.minimum(shade, 1.0, out=shade)
    shade *= face_alpha
    shade *= -0.3
    shade += 1.0
    canvas.img *= shade[:, None]
    return head_d


def _draw_mouth(canvas: _Canvas, p: dict[str, np.ndarray], f: _Frame) -> None:
    """A lens between an upper and a lower curve along x in [-1, 1]: closed mouths are a
    thin line, open ones show the dark interior and sometimes teeth."""
    half_w = p["mouth_w"] * p["mouth_width"]
    x = f.u / half_w
    x2 = np.minimum(x * x, 1.0)
    bulge = 1.0 - x2
    centre = p["mouth_y"] + p["mouth_curve"] * (x2 - 0.3)
    upper = centre - 0.012 - (p["open_up"] + p["lip_raise"] * 4.0 * x2) * bulge
    lower = centre + 0.012 + p["open_lo"] * bulge
    mouth_d = np.maximum(np.maximum(upper - f.v, f.v - lower), (np.abs(x) - 1.0) * half_w)
    canvas.paint(_coverage(mouth_d - 0.025, f.px), p["c_lips"])
    mouth_alpha = _coverage(mouth_d, f.px)
    canvas.paint(mouth_alpha, p["c_mouth"])
    mouth_alpha *= _coverage(f.v - upper - 0.045, f.px)
    mouth_alpha *= p["teeth"]
    canvas.paint(mouth_alpha, p["c_teeth"])


def _draw_nose(canvas: _Canvas, p: dict[str, np.ndarray], f: _Frame) -> None:
    """Nostrils, and the wrinkles across the bridge that mark disgust (and some anger)."""
    canvas.paint(_coverage(_circle(f.au - 0.065, f.v - p["nose_y"], 0.032), f.px) * 0.7, p["c_line"])
    bridge = _coverage(np.maximum(f.au - 0.07, np.abs(f.v - p["eye_y"] - 0.02) - 0.07), f.px)
    bridge *= np.cos(f.v * 90.0) + 1.0
    bridge *= 0.25 * p["wrinkle"]
    canvas.paint(bridge, p["c_line"])


def _draw_eyes(canvas: _Canvas, p: dict[str, np.ndarray], f: _Frame) -> None:
    """Sclera, iris clipped by the lids and a lid outline; then the brows, thick curves over the eyes."""
    eu, ev = f.au - p["eye_x"], f.v - p["eye_y"]
    eye_d = _ellipse(eu, ev, p["eye_w"], p["eye_open"])
    canvas.paint(_coverage(eye_d, f.px), p["c_sclera"])
    canvas.paint(_coverage(np.maximum(_circle(eu, ev, 0.06), eye_d), f.px), p["c_iris"])
    np.abs(eye_d, out=eye_d)
    canvas.paint(_coverage(eye_d - 0.014, f.px), p["c_line"])

    # t runs along each brow from its inner (-1) to its outer (+1) end.
    brow_half = p["eye_w"] * 1.3
    t = eu / brow_half
    brow_v = p["brow_raise"] - p["brow_gap"] + p["brow_slant"] * t - p["brow_arch"] * (1.0 - t * t)
    brow_d = np.maximum(np.abs(ev - brow_v) - p["brow_thick"], (np.abs(t) - 1.0) * brow_half)
    canvas.paint(_coverage(brow_d, f.px), p["c_hair"])


def _draw_occluders(canvas: _Canvas, p: dict[str, np.ndarray], f: _Frame) -> None:
    """Boxes in face coordinates (so they follow the pose), on the few faces that have one."""
    idx = np.flatnonzero(p["occluder"])
    if idx.size == 0:
        return
    cu, cv, hu, hv = (p["box"][idx, i, None, None] for i in range(4))
    box_d = np.maximum(np.abs(f.u[idx] - cu) - hu, np.abs(f.v[idx] - cv) - hv)
    sub = _Canvas(canvas.img[idx])
    sub.paint(_coverage(box_d, f.px[idx]), p["c_occluder"][idx])
    canvas.img[idx] = sub.img


def _render_chunk(p: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """Render one chunk of faces from their parameters as uint8 (n, H, W, C)."""
    grid = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    frame = _pose_frame(p, grid)
    clutter = _upsample(p["clutter_lo"], size)
    clutter += _upsample(p["clutter_hi"], size)
    canvas = _Canvas(clutter)
    head_d = _draw_head(canvas, p, frame)
    _draw_mouth(canvas, p, frame)
    _draw_nose(canvas, p, frame)
    _draw_eyes(canvas, p, frame)
    # Fringe: hair over the face above a curved hairline.
    fringe_d = np.maximum(head_d, frame.v - p["hairline"] - 0.35 * frame.u * frame.u)
    canvas.paint(_coverage(fringe_d, frame.px), p["c_hair"])
    _draw_occluders(canvas, p, frame)

    # Lighting: exposure times a linear gradient across the image.
    light = p["exposure"] * (1.0 + p["light"][:, 0, None, None] * grid[None, None, :]
                             + p["light"][:, 1, None, None] * grid[None, :, None])
    canvas.img *= light[:, None]
    canvas.blur(p["blur"])

    # Uniform luminance noise with the drawn std: several times cheaper to draw than Gaussian.
    img = canvas.img
    noise = rng.random((len(img), 1, size, size), dtype=np.float32)
    noise -= 0.5
    noise *= p["noise"][:, None] * np.float32(12**0.5)
    img += noise
    np.clip(img, 0.0, 1.0, out=img)
    img *= 255.0
    img += 0.5
    return np.moveaxis(img.astype(np.uint8), 1, -1)


def render_faces(labels: np.ndarray, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """Render one face per (clean) label as uint8 (N, size, size, channels)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(SYNTHETIC_CLASSES)):
        raise ValueError(f"labels must lie in [0, {len(SYNTHETIC_CLASSES) - 1}]")
    params = _sample_params(labels, channels, rng)
    starts = range(0, len(labels), _CHUNK)
    # One generator per chunk, so the result does not depend on which thread runs it.
    seeds = rng.integers(0, 2**63, len(starts))
    out = np.empty((len(labels), size, size, channels), dtype=np.uint8)

    def render(start: int, seed: int) -> None:
        chunk = {name: value[start:start + _CHUNK] for name, value in params.items()}
        out[start:start + _CHUNK] = _render_chunk(chunk, size, np.random.default_rng(seed))

    # numpy releases the GIL inside array operations, so threads use several cores.
    with ThreadPoolExecutor(_WORKERS) as pool:
        list(pool.map(render, starts, seeds))
    return out


def _split_rng(seed: int, split: str) -> np.random.Generator:
    """A generator for one split that depends only on (seed, split name), not on other splits."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode())]))


def make_synthetic(
    split_sizes: dict[str, int] | None = None, size: int = 48, channels: int = 1, seed: int = 0
) -> PackedData:
    """The synthetic data set as PackedData; deterministic in (split_sizes, size, channels, seed).

    Each split draws from its own generator derived from (seed, split name), so e.g. the
    val split is identical whatever the train size. mean/std come from the train split
    (or the first split when there is none).
    """
    sizes = dict(DEFAULT_SPLIT_SIZES if split_sizes is None else split_sizes)
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split names {sorted(unknown)}; expected train, val, test")
    if not sizes or any(n < 0 for n in sizes.values()) or sum(sizes.values()) == 0:
        raise ValueError(f"split sizes must be non-negative with at least one face, got {sizes}")

    splits, flipped = {}, {}
    for name, n in sizes.items():
        rng = _split_rng(seed, name)
        clean, observed = sample_labels(n, rng)
        splits[name] = Split(images=render_faces(clean, size, channels, rng), labels=observed)
        flipped[name] = int((clean != observed).sum())

    stats_split = "train" if sizes.get("train") else next(k for k, n in sizes.items() if n)
    mean, std = channel_stats(splits[stats_split].images)
    settings = {"version": GENERATOR_VERSION, "seed": seed, "size": size, "channels": channels, "split_sizes": sizes}
    meta = {
        "source": "synthetic",
        "format": "synthetic",
        "fingerprint": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16],
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "split_sizes": sizes,
        "class_counts": class_counts(splits, SYNTHETIC_CLASSES),
        "label_noise": {"rate": LABEL_NOISE, "flipped": flipped},
        "stats_split": stats_split,
        "skipped": [],
        "notes": [
            f"labels resampled uniformly with probability {LABEL_NOISE}; 'flipped' counts those that changed",
            "class counts are of the observed (noisy) labels",
        ],
    }
    return PackedData(
        classes=list(SYNTHETIC_CLASSES), splits=splits, size=size, channels=channels,
        mean=mean, std=std, meta=meta,
    )
