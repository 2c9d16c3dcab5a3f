"""best.pt holds only what inference needs, export --pt/--half, and all of them score like the full checkpoint.

One tiny run of one epoch: its last.pt (complete, for --resume) and best.pt (inference only)
then hold the same weights, so every score from them must agree exactly; the float16 copy
within the stated tolerance (macro-F1 identical on a small set, logits within 1e-2).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fernoise.checkpoint import RESUME_KEYS, CheckpointError, load_checkpoint, model_from_checkpoint
from fernoise.cli import main
from fernoise.config import TrainConfig
from fernoise.data import Augmenter
from fernoise.data.synthetic import render_faces
from fernoise.evaluate import evaluate_checkpoint, predict_arrays
from fernoise.export import export_onnx
from fernoise.predict import Predictor
from fernoise.train import TrainingError, train

HALF_LOGIT_TOLERANCE = 1e-2
CONFIG = dict(train_limit=64, val_limit=32, image_size=32, batch_size=32, device="cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slim") / "run"
    train(TrainConfig(epochs=1, **CONFIG), out, quiet=True, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def files(run, tmp_path_factory) -> dict[str, Path]:
    """The complete checkpoint, the inference one training wrote, and a float16 export of it."""
    half = tmp_path_factory.mktemp("half") / "half.pt"
    assert main(["export", str(run / "checkpoints" / "best.pt"), "--pt", str(half), "--half"]) == 0
    return {"full": run / "checkpoints" / "last.pt", "slim": run / "checkpoints" / "best.pt", "half": half}


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """A flat folder of 28 synthetic faces, 4 per class."""
    root = tmp_path_factory.mktemp("faces") / "faces"
    classes = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]
    images = render_faces(np.repeat(np.arange(7), 4), 40, 1, np.random.default_rng(3))
    for i, face in enumerate(images):
        folder = root / classes[i // 4]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(face[..., 0]).save(folder / f"{i}.png")
    return root


def test_best_pt_holds_what_inference_needs_and_last_pt_everything(files):
    best, last = load_checkpoint(files["slim"]), load_checkpoint(files["full"])
    assert best["kind"] == "inference" and not set(RESUME_KEYS) & set(best)
    for key in ("model", "classes", "input", "state_dict", "config", "data", "epoch", "best", "fernoise_version"):
        assert key in best, key
    assert best["model"]["noise"] == last["model"]["noise"] and best["best"]["epoch"] == 1
    assert set(RESUME_KEYS) <= set(last) and last["optimizer"]["state"]
    assert all(torch.equal(t, last["state_dict"][k]) for k, t in best["state_dict"].items())
    assert files["slim"].stat().st_size < 0.4 * files["full"].stat().st_size  # Adam keeps two moments per weight
    half = load_checkpoint(files["half"])
    assert all(t.dtype == torch.float16 for t in half["state_dict"].values() if t.is_floating_point())
    assert half["config"] == best["config"] and half["weights_dtype"] == "float16"
    assert files["half"].stat().st_size < 0.55 * files["slim"].stat().st_size
    model = model_from_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in model.state_dict().values() if p.is_floating_point())


def test_resume_reads_last_pt_and_refuses_an_inference_checkpoint(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "checkpoints" / "best.pt").unlink()  # resuming needs nothing from best.pt
    train(TrainConfig(epochs=2, **CONFIG), copy, resume=True, quiet=True, log=lambda _: None)
    assert load_checkpoint(copy / "checkpoints" / "last.pt")["epoch"] == 2
    shutil.copyfile(run / "checkpoints" / "best.pt", copy / "checkpoints" / "last.pt")
    with pytest.raises(TrainingError, match=r"last\.pt: an inference-only checkpoint \(no optimizer"):
        train(TrainConfig(epochs=3, **CONFIG), copy, resume=True, quiet=True, log=lambda _: None)


def test_evaluate_scores_the_same_from_full_slim_and_half(files, faces, tmp_path):
    scores = {name: evaluate_checkpoint(path, str(faces), split="all", cache_dir=str(tmp_path / "cache"),
                                        device="cpu", progress=False) for name, path in files.items()}
    drop = lambda s: {k: v for k, v in s.items() if k != "checkpoint"}  # noqa: E731
    assert drop(scores["slim"]) == drop(scores["full"])
    assert scores["half"]["n"] == 28
    for key in ("macro_f1", "accuracy", "confusion"):
        assert scores["half"][key] == scores["full"][key], key
    assert scores["half"]["loss"] == pytest.approx(scores["full"]["loss"], abs=1e-3)

    models = {name: model_from_checkpoint(load_checkpoint(path)) for name, path in files.items()}
    spec = load_checkpoint(files["full"])["input"]
    augment = Augmenter("none", spec["size"], spec["channels"], spec["mean"], spec["std"])
    images = render_faces(np.arange(16) % 7, 32, 1, np.random.default_rng(5))
    logits = {name: predict_arrays(model, images, augment, torch.device("cpu")) for name, model in models.items()}
    assert torch.equal(logits["slim"], logits["full"])
    assert (logits["half"] - logits["full"]).abs().max() < HALF_LOGIT_TOLERANCE


def test_predictor_gives_the_same_faces_from_full_slim_and_half(files):
    crops = list(render_faces(np.arange(10) % 7, 50, 3, np.random.default_rng(7)))
    faces = {name: Predictor.from_checkpoint(path, detector="none").predict_faces(crops) for name, path in files.items()}
    assert faces["slim"] == faces["full"]
    for a, b in zip(faces["half"], faces["full"]):
        assert a.label == b.label
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < HALF_LOGIT_TOLERANCE


def test_onnx_export_is_the_same_from_full_slim_and_half(files, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    x = np.random.default_rng(0).normal(size=(4, 1, 32, 32)).astype(np.float32)
    outputs = {}
    for name, path in files.items():
        export_onnx(path, tmp_path / f"{name}.onnx")
        session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        outputs[name] = session.run(["logits"], {"faces": x})[0]
    np.testing.assert_array_equal(outputs["slim"], outputs["full"])
    assert np.abs(outputs["half"] - outputs["full"]).max() < HALF_LOGIT_TOLERANCE


def test_export_needs_an_output_and_half_is_for_checkpoints(files, tmp_path, capsys):
    assert main(["export", str(files["slim"])]) == 2
    assert "--pt FILE" in capsys.readouterr().err
    assert main(["export", str(files["slim"]), "--onnx", str(tmp_path / "m.onnx"), "--half"]) == 2
    assert "--half applies to --pt" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("half, copier", [(False, "inference_checkpoint"), (True, "half_precision")])
def test_export_checks_the_copy_it_writes_not_the_source(files, tmp_path, monkeypatch, half, copier):
    import fernoise.export as export

    make_copy = getattr(export, copier)

    def losing_a_tensor(checkpoint):
        slim = make_copy(checkpoint)
        return {**slim, "state_dict": dict(list(slim["state_dict"].items())[1:])}

    monkeypatch.setattr(export, copier, losing_a_tensor)
    out = tmp_path / "copy.pt"
    with pytest.raises(CheckpointError, match=r"copy\.pt \(the copy of .*best\.pt\): weights do not fit"):
        export.export_checkpoint(files["slim"], out, half=half)
    assert list(tmp_path.iterdir()) == []  # nothing written, no staging file left
