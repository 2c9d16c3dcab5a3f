"""Expression prediction on photos, folders and videos: find, crop and classify faces, and show the results.

Faces are found by :mod:`fernoise.detect` (YuNet by default), each cut out framed and turned
upright as FER2013's faces are, and preprocessed exactly as the training data was: the crop
is resized to the checkpoint's ``size`` with Pillow's bilinear filter (``reducing_gap=2.0``,
as :mod:`fernoise.data.decode`), turned into grey (ITU-R 601 luma, Pillow's "L") or RGB, and
normalised with the checkpoint's mean and std by :func:`fernoise.data.normalize`. Crops of
many images (or video frames) are classified together in batches. With ``tta`` each face is
classified from six views (itself and its mirror image, each also zoomed in and out by
:data:`TTA_VIEWS`' zoom, as ``evaluate --tta-flip --tta-zoom 0.1`` scores), their probabilities averaged.

Checkpoints are read only through :func:`fernoise.checkpoint.load_checkpoint`, which
never unpickles Python objects. Exporting a model is :mod:`fernoise.export`; the
``predict`` command is in :mod:`fernoise.cli`.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from fernoise.batchnorm import fold_batchnorm
from fernoise.bundled import bundled_model_path
from fernoise.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, parse_input
from fernoise.data import normalize
from fernoise.data.decode import to_8bit
from fernoise.detect import DETECTORS, Box, Detection, crop_face, make_detector
from fernoise.export import onnx_session
from fernoise.io import PathLike, write_bytes_atomic
from fernoise.views import Views

__all__ = [
    "Face", "Prediction", "Predictor", "PredictError", "load_image", "find_inputs",
    "annotate", "format_predictions", "AnnotatedCopies",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
DEFAULT_DETECTOR = "yunet"
OLD_DETECTOR_NAMES = {"opencv": "haar"}  # the Haar cascade's name before the yunet detector came
DEFAULT_BATCH = 64
ImageLike = Union[PathLike, Image.Image, np.ndarray]


class PredictError(ValueError):
    """An input or an option could not be used; the message says why."""


@dataclass(frozen=True)
class Face:
    """One classified face: its box ``(x, y, w, h)`` in the image's pixels and the class probabilities."""

    box: Box
    label: str
    probability: float
    probabilities: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"box": list(self.box), "label": self.label, "probability": self.probability,
                "probabilities": self.probabilities}


@dataclass
class Prediction:
    """The faces of one input image or video frame, or why the input failed (``error``)."""

    source: str
    faces: list[Face] = field(default_factory=list)
    frame: Optional[int] = None
    time: Optional[float] = None
    error: Optional[str] = None
    image: Optional[Image.Image] = field(default=None, repr=False)  # kept only on request, for annotation

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"input": self.source}
        if self.frame is not None:
            record.update(frame=self.frame, time=round(float(self.time or 0.0), 3))
        if self.error is not None:
            record["error"] = self.error
        else:
            record["faces"] = [face.to_dict() for face in self.faces]
        return record


# --------------------------------------------------------------------------- reading inputs


def load_image(path: PathLike) -> Image.Image:
    """Read an image file of any mode as ``L`` or ``RGB``, upright by its EXIF orientation."""
    try:
        with Image.open(path) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise PredictError(f"{path}: no such file or directory") from None
    except UnidentifiedImageError:
        raise PredictError(f"{path}: not an image (or an image format Pillow cannot read)") from None
    except Image.DecompressionBombError as exc:
        raise PredictError(f"{path}: image too large to decode safely: {exc}") from None
    except OSError as exc:
        if exc.errno is not None:  # the file itself could not be read
            raise PredictError(f"{path}: cannot read: {exc.strerror or exc}") from None
        raise PredictError(f"{path}: corrupt or truncated image: {exc}") from None
    except Exception as exc:  # Pillow raises many types for damaged files
        raise PredictError(f"{path}: corrupt or truncated image: {exc}") from None
    return to_8bit(upright)


def _as_image(image: ImageLike) -> Image.Image:
    """A path, PIL image or uint8 array (HxW grey, HxWx3 RGB) as an upright ``L``/``RGB`` image."""
    if isinstance(image, Image.Image):
        return to_8bit(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))):
            raise PredictError(
                f"expected a uint8 array HxW (grey) or HxWx3 (RGB), got {image.dtype} with shape {image.shape}"
            )
        return Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    return load_image(image)


def find_inputs(paths: Iterable[PathLike]) -> list[tuple[Path, str]]:
    """Each input as ``(path, kind)``, kind ``image``, ``video`` or ``empty`` (a folder without images).

    Folders are searched recursively for image files (hidden files left out); a file is a
    video by its extension, anything else is read as an image (and fails clearly if it is not).
    """
    found: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            images = sorted(
                p for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
            )
            found += [(p, "image") for p in images] or [(path, "empty")]
        else:
            found.append((path, "video" if path.suffix.lower() in VIDEO_EXTENSIONS else "image"))
    return found


def _open_video(path: Path) -> cv2.VideoCapture:
    if not path.exists():
        raise PredictError(f"{path}: no such file or directory")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise PredictError(f"{path}: cannot open as a video (unreadable, or a format OpenCV cannot decode)")
    return capture


def _video_frames(capture: cv2.VideoCapture, every: int) -> Iterator[tuple[int, float, Image.Image]]:
    """Every ``every``-th frame as ``(index, seconds, RGB image)``; skipped frames are grabbed, not decoded."""
    fps = capture.get(cv2.CAP_PROP_FPS)
    index = 0
    try:
        while True:
            if index % every == 0:
                seconds = index / fps if fps > 0 else capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                ok, frame = capture.read()
                if not ok:
                    return
                yield index, seconds, Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            elif not capture.grab():
                return
            index += 1
    finally:
        capture.release()


def _decoded(inputs: list[tuple[Path, str]], every: int,
             bar: Any) -> Iterator[tuple[Prediction, Optional[Image.Image]]]:
    """Each input's image, or each processed frame of a video, with its record; failures as error records."""
    for path, kind in inputs:
        source = str(path)
        try:
            if kind == "empty":
                raise PredictError(f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
            if kind == "image":
                yield Prediction(source), load_image(path)
                bar.update()
                continue
            capture = _open_video(path)
            frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            bar.total += max(0, -(-frames // every))
            bar.refresh()
            decoded = 0
            for index, seconds, img in _video_frames(capture, every):
                decoded += 1
                yield Prediction(source, frame=index, time=seconds), img
                bar.update()
            if not decoded:
                raise PredictError(f"{path}: no frame could be decoded")
        except PredictError as exc:
            bar.update(kind != "video")
            yield Prediction(source, error=str(exc)), None



# --------------------------------------------------------------------------- the predictor


def _read_model(path: PathLike) -> tuple[nn.Module, list[str], dict[str, Any]]:
    """A checkpoint's model, class names and input description, checked to fit one another."""
    checkpoint = load_checkpoint(path)
    size, channels, _, _ = parse_input(checkpoint["input"], path)
    model = model_from_checkpoint(checkpoint, path)
    try:  # one dummy face: the input description must fit the network, the class names its outputs
        with torch.inference_mode():
            outputs = model(torch.zeros(1, channels, size, size)).shape[-1]
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: the model does not take its described input {checkpoint['input']}: {str(exc).splitlines()[0]}"
        ) from None
    classes = checkpoint["classes"]
    if not isinstance(classes, (list, tuple)) or len(classes) != outputs:
        raise CheckpointError(f"{path}: {len(classes)} class names {classes!r} for {outputs} model outputs")
    return model, [str(c) for c in classes], checkpoint["input"]


# The test-time views of ``tta``: the fer2013-fast recipe's (zoom 0.1 is its training zoom's range, and
# these are the views its bundled model was measured with).
TTA_VIEWS = Views(flip=True, zoom=0.1)


class Predictor:
    """Classifies the expressions of faces in images with a trained model (eval mode, no noise).

    ``detector`` is ``"yunet"`` (default) or ``"haar"`` (see :mod:`fernoise.detect`), or ``"none"``
    to treat each image as one pre-cropped face. ``margin=None`` (default) frames each face as
    FER2013 does; a number crops the detector's box grown by that fraction of its size on each
    side, upright. ``tta`` averages six views of each face (module docstring): more accurate, six
    times the compute. Use :meth:`from_checkpoint` to build one from a file; ``Predictor()`` without a
    model uses the model bundled with fernoise (:mod:`fernoise.bundled`).
    """

    def __init__(self, model: Optional[nn.Module] = None, classes: Optional[Sequence[str]] = None,
                 input_spec: Optional[dict[str, Any]] = None, *,
                 device: Union[str, torch.device] = "cpu", detector: str = DEFAULT_DETECTOR,
                 margin: Optional[float] = None, batch_size: int = DEFAULT_BATCH, engine: str = "torch",
                 tta: bool = False) -> None:
        if model is None and classes is None and input_spec is None:
            model, classes, input_spec = _read_model(bundled_model_path())
        elif model is None or classes is None or input_spec is None:
            raise PredictError("give the model, its classes and its input description together, or none of them "
                               "for the bundled model")
        if engine not in ("torch", "onnx"):
            raise PredictError(f"engine must be 'torch' or 'onnx', got {engine!r}")
        detector = OLD_DETECTOR_NAMES.get(detector, detector)
        if detector not in (*DETECTORS, "none"):
            raise PredictError(f"detector must be one of {', '.join(DETECTORS)} or none, got {detector!r}")
        if margin is not None and not 0.0 <= margin <= 4.0:
            raise PredictError(f"margin must be a fraction of the face box from 0 to 4, got {margin!r}")
        if batch_size < 1:
            raise PredictError(f"batch size must be positive, got {batch_size}")
        self.size, self.channels, self.mean, self.std = parse_input(input_spec, "model")
        self.classes = [str(c) for c in classes]
        self.device = torch.device(device)
        # Channels-last weights let oneDNN pick faster convolutions on the CPU: about 2x at batch 1;
        # folding BatchNorm into the convolutions removes a pass per unit. Both work on a copy:
        # the caller's model keeps its BatchNorm layers and its training mode.
        self.model = fold_batchnorm(copy.deepcopy(model)).to(self.device, memory_format=torch.channels_last)
        self._session = onnx_session(model, self.channels, self.size) if engine == "onnx" else None
        self.detector = make_detector(detector)
        self.margin = None if margin is None else float(margin)
        self.batch_size = int(batch_size)
        self.tta = bool(tta)
        # what a zoom-out uncovers: black, as in training and evaluate's views
        self._black = normalize(torch.zeros(1, self.channels, 1, 1, dtype=torch.uint8), self.mean, self.std)[0]

    @classmethod
    def from_checkpoint(cls, path: Optional[PathLike] = None, device: Union[str, torch.device] = "cpu",
                        detector: str = DEFAULT_DETECTOR, **kwargs: Any) -> "Predictor":
        """Load a fernoise checkpoint safely, the bundled model when ``path`` is None; ``kwargs`` as the
        constructor (margin, batch_size, engine, tta)."""
        model, classes, spec = _read_model(bundled_model_path() if path is None else path)
        return cls(model, classes, spec, device=device, detector=detector, **kwargs)

    # -- the steps

    def detect(self, image: ImageLike) -> list[Box]:
        """Face boxes ``(x, y, w, h)``, left to right; the whole image when the detector is ``none``."""
        return [face.box for face in self._faces(_as_image(image))]

    def _faces(self, img: Image.Image) -> list[Detection]:
        return self.detector(img) if self.detector else [Detection((0, 0, *img.size))]

    def preprocess(self, face: Image.Image) -> np.ndarray:
        """A face crop as the model saw faces in training: uint8 ``(size, size, channels)``."""
        if face.size != (self.size, self.size):
            face = face.resize((self.size, self.size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        face = face.convert("L" if self.channels == 1 else "RGB")
        arr = np.asarray(face)
        return arr[:, :, None] if arr.ndim == 2 else arr

    def _crops(self, img: Image.Image, faces: Sequence[Detection]) -> list[np.ndarray]:
        if self.detector is None:
            return [self.preprocess(img)]
        return [self.preprocess(crop_face(img, face, self.margin)) for face in faces]

    @torch.inference_mode()
    def _classify(self, boxes: Sequence[Box], crops: Sequence[np.ndarray]) -> list[Face]:
        faces: list[Face] = []
        for start in range(0, len(crops), self.batch_size):
            batch = torch.from_numpy(np.stack(crops[start:start + self.batch_size])).to(self.device)
            inputs = normalize(batch.permute(0, 3, 1, 2), self.mean, self.std)
            views = TTA_VIEWS if self.tta else Views()
            mean_probs = views.probabilities(self._logits, inputs, self._black.to(self.device))
            for box, probs in zip(boxes[start:start + self.batch_size], mean_probs.cpu().tolist()):
                best = int(np.argmax(probs))
                faces.append(Face(box, self.classes[best], probs[best], dict(zip(self.classes, probs))))
        return faces

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        if self._session is None:
            return self.model(inputs)
        return torch.from_numpy(self._session.run(None, {"faces": inputs.cpu().numpy()})[0])

    # -- the API

    def predict(self, image: ImageLike) -> list[Face]:
        """The faces in one image (path, PIL image, or uint8 HxW / HxWx3 RGB array), left to right."""
        img = _as_image(image)
        faces = self._faces(img)
        return self._classify([face.box for face in faces], self._crops(img, faces))

    def predict_faces(self, crops: Sequence[ImageLike]) -> list[Face]:
        """Pre-cropped faces, one result each, with the whole crop as the box."""
        images = [_as_image(crop) for crop in crops]
        return self._classify([(0, 0, *img.size) for img in images], [self.preprocess(img) for img in images])

    def predict_paths(self, paths: Iterable[PathLike], every: int = 1, progress: bool = False,
                      keep_images: bool = False) -> Iterator[Prediction]:
        """One :class:`Prediction` per image file, or per processed video frame, in input order.

        Folders are expanded (:func:`find_inputs`), videos read every ``every``-th frame. An
        input that fails gives a Prediction with ``error`` set and the others go on. Crops of
        consecutive inputs are classified together in batches of ``batch_size``. ``progress``
        shows a progress bar, except for a single image. ``keep_images`` attaches each
        decoded image (for annotation).
        """
        if every < 1:
            raise PredictError(f"every must be a positive number of frames, got {every}")
        from tqdm.auto import tqdm

        inputs = find_inputs(paths)
        single_image = len(inputs) == 1 and inputs[0][1] == "image"
        bar = tqdm(total=sum(kind != "video" for _, kind in inputs), unit="image",
                   disable=not progress or single_image, dynamic_ncols=True)
        pending: list[tuple[Prediction, list[Box], list[np.ndarray], Optional[Image.Image]]] = []
        crops_pending = 0
        try:
            for record, img in _decoded(inputs, every, bar):
                faces = self._faces(img) if img is not None else []
                crops = self._crops(img, faces) if img is not None else []
                pending.append((record, [face.box for face in faces], crops, img if keep_images else None))
                crops_pending += len(crops)
                if crops_pending >= self.batch_size or len(pending) >= self.batch_size:
                    yield from self._flush(pending)
                    pending, crops_pending = [], 0
            yield from self._flush(pending)
        finally:
            bar.close()

    def _flush(self, pending: list[tuple[Prediction, list[Box], list[np.ndarray], Optional[Image.Image]]]
               ) -> Iterator[Prediction]:
        faces = iter(self._classify([b for _, boxes, _, _ in pending for b in boxes],
                                    [c for _, _, crops, _ in pending for c in crops]))
        for record, boxes, _, img in pending:
            record.faces = [next(faces) for _ in boxes]
            record.image = img
            yield record


# --------------------------------------------------------------------------- presentation


def annotate(image: ImageLike, faces: Sequence[Face]) -> np.ndarray:
    """An RGB copy of ``image`` with each face's box and ``label probability`` drawn."""
    canvas = np.array(_as_image(image).convert("RGB"))
    colour = (0, 220, 0)
    for face in faces:
        x, y, w, h = face.box
        scale = max(0.4, min(w, 400) / 250)
        thickness = max(1, round(scale * 2))
        cv2.rectangle(canvas, (x, y), (x + w, y + h), colour, thickness)
        text = f"{face.label} {face.probability:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = y - th - base - 2 if y - th - base - 2 >= 0 else y  # above the box when there is room
        cv2.rectangle(canvas, (x, top), (x + tw + 4, top + th + base + 2), colour, cv2.FILLED)
        cv2.putText(canvas, text, (x + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness,
                    cv2.LINE_AA)
    return canvas


def format_predictions(records: Sequence[Prediction]) -> str:
    """A readable table of the faces found (failed inputs are left out: they are reported as errors)."""
    video = any(r.frame is not None for r in records)
    rows = []
    for r in records:
        if r.error is not None:
            continue
        where = [r.source] + ([str(r.frame), f"{r.time:.3f}"] if r.frame is not None else ["-", "-"] if video else [])
        if not r.faces:
            rows.append(where + ["no face found", "", ""])
        rows += [where + [",".join(map(str, f.box)), f.label, f"{f.probability:.3f}"] for f in r.faces]
    header = ["input"] + (["frame", "time"] if video else []) + ["box x,y,w,h", "label", "prob"]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    right = {"frame", "time", "prob"}
    lines = ["  ".join(cell.rjust(w) if name in right else cell.ljust(w) for cell, w, name in zip(row, widths, header))
             .rstrip() for row in [header] + rows]
    return "\n".join(lines)


class AnnotatedCopies:
    """Writes annotated copies under ``directory``.

    Their paths mirror the inputs' paths below the inputs' common folder, so files of the
    same name in different folders do not collide. Videos become videos of the processed frames.
    """

    def __init__(self, directory: PathLike, inputs: Sequence[str], every: int) -> None:
        self.directory = Path(directory)
        anchors = [os.path.abspath(p) if Path(p).is_dir() else os.path.dirname(os.path.abspath(p)) for p in inputs]
        self.base = os.path.commonpath(anchors)
        self.every = every
        self._videos: dict[str, cv2.VideoWriter] = {}

    def target(self, source: str) -> Path:
        return self.directory / os.path.relpath(os.path.abspath(source), self.base)

    def write(self, record: Prediction) -> None:
        """Write one record's annotated image or video frame; failures to write stop the command."""
        if record.image is None:
            return
        drawn = cv2.cvtColor(annotate(record.image, record.faces), cv2.COLOR_RGB2BGR)
        target = self.target(record.source)
        if record.frame is None:
            if target.suffix.lower() not in IMAGE_EXTENSIONS:  # e.g. a GIF named explicitly: OpenCV writes PNG
                target = target.with_name(target.name + ".png")
            ok, data = cv2.imencode(target.suffix.lower(), drawn)
            if not ok:
                raise PredictError(f"{target}: OpenCV cannot write this image format")
            write_bytes_atomic(target, data.tobytes())
            return
        writer = self._videos.get(record.source)
        if writer is None:
            source = _open_video(Path(record.source))
            fps = source.get(cv2.CAP_PROP_FPS) or 25.0
            source.release()
            fourcc = {".avi": "MJPG", ".webm": "VP80"}.get(target.suffix.lower(), "mp4v")
            target.parent.mkdir(parents=True, exist_ok=True)
            writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*fourcc), fps / self.every,
                                     (drawn.shape[1], drawn.shape[0]))
            if not writer.isOpened():
                raise PredictError(f"{target}: cannot write an annotated video")
            self._videos[record.source] = writer
        writer.write(drawn)

    def close(self) -> None:
        for writer in self._videos.values():
            writer.release()
