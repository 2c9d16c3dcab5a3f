"""Loading a checkpoint never runs code, and broken or foreign files fail with a clear message.

The malicious files carry a pickle whose unpickling would create a marker file; the
tests show the marker never appears through fernoise, and (as a control) that it does
appear when the same file is loaded unsafely, so the payload is real.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fernoise.checkpoint import (
    FORMAT, VERSION, CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint,
)
from fernoise.cli import main
from fernoise.models import build_model
from fernoise.predict import Predictor
from test_predict import CLASSES, SPEC, make_checkpoint


class _Payload:
    """Unpickling this calls exec(), which creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _malicious_torch(path: Path, marker: Path) -> Path:
    torch.save({"format": FORMAT, "version": VERSION, "model": {}, "classes": [], "input": {},
                "state_dict": {}, "extra": _Payload(marker)}, path)
    return path


def _malicious_pickle(path: Path, marker: Path) -> Path:
    with open(path, "wb") as handle:
        pickle.dump({"format": FORMAT, "extra": _Payload(marker)}, handle, protocol=2)  # torch's legacy format
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("good") / "good.pt")


@pytest.fixture
def face(tmp_path) -> Path:
    Image.new("RGB", (64, 64), (120, 90, 60)).save(tmp_path / "face.png")
    return tmp_path / "face.png"


def _broken(kind: str, tmp_path: Path, good: Path) -> Path:
    """A checkpoint file that must be refused, of the given kind."""
    path = tmp_path / f"{kind}.pt"
    data = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign":  # another program's checkpoint: a state_dict and an epoch, no fernoise marker
        torch.save({"state_dict": build_model("resnet18", 7).state_dict(), "epoch": 3}, path)
    elif kind == "mismatch":  # describes a 1-channel model, holds the weights of a 3-channel one
        weights = build_model("resnet18", 7, in_channels=3).state_dict()
        torch.save({"format": FORMAT, "version": VERSION, "classes": CLASSES, "input": SPEC, "state_dict": weights,
                    "model": {"name": "resnet18", "num_classes": 7, "in_channels": 1}}, path)
    elif kind != "missing":
        raise ValueError(kind)
    return path


BROKEN = {
    "truncated": "truncated or corrupt",
    "random": "",  # see test_random_bytes_are_refused_clearly
    "empty": "empty|truncated or corrupt",
    "foreign": "not a fernoise checkpoint",
    "mismatch": "weights do not fit",
    "missing": "no such checkpoint",
}


MALICIOUS = {  # how each file is written, and how an unsafe program would load it (the control)
    "torch.save": (_malicious_torch, lambda path: torch.load(path, weights_only=False)),
    "pickle": (_malicious_pickle, lambda path: pickle.loads(path.read_bytes())),
}


@pytest.mark.parametrize("how", list(MALICIOUS))
def test_code_in_a_checkpoint_is_never_run(tmp_path, how):
    write, load_unsafely = MALICIOUS[how]
    marker = tmp_path / "MARKER"
    path = write(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError, match="refused to load|never loaded") as info:
        load_checkpoint(path)
    assert "evil.pt" in str(info.value)
    with pytest.raises(CheckpointError):
        Predictor.from_checkpoint(path, detector="none")
    assert not marker.exists()
    load_unsafely(path)
    assert marker.exists(), "the payload is real: unsafe loading runs it"


def _archive_with_pickle(pickled: bytes) -> bytes:
    """A torch.save archive whose pickled object (data.pkl) is replaced by ``pickled``."""
    saved = io.BytesIO()
    torch.save({"weights": torch.zeros(2)}, saved)
    out = io.BytesIO()
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            target.writestr(name, pickled if name.endswith("/data.pkl") else source.read(name))
    return out.getvalue()


@pytest.mark.parametrize("inside", [False, True], ids=["plain", "inside-a-torch-archive"])
def test_random_bytes_are_refused_clearly(tmp_path, inside):
    # Random bytes reach many code paths of torch's readers; each must end in CheckpointError.
    path = tmp_path / "noise.pt"
    for seed in range(64):
        data = np.random.default_rng(seed).bytes(4096)
        path.write_bytes(_archive_with_pickle(data) if inside else data)
        with pytest.raises(CheckpointError, match=r"noise\.pt: "):
            load_checkpoint(path)


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_and_foreign_checkpoints_are_refused_clearly(tmp_path, good, kind):
    path = _broken(kind, tmp_path, good)
    with pytest.raises(CheckpointError) as info:
        model_from_checkpoint(load_checkpoint(path), path)
    message = str(info.value)
    assert path.name in message and re.search(BROKEN[kind], message)


@pytest.mark.parametrize("change, why", [
    ({"input": {**SPEC, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}}, "does not take its described input"),
    ({"input": {**SPEC, "std": [0.0]}}, "malformed input description"),
    ({"classes": CLASSES[:5]}, "5 class names"),
])
def test_predictor_refuses_a_description_that_does_not_fit_the_model(tmp_path, good, change, why):
    checkpoint = load_checkpoint(good)
    path = tmp_path / "odd.pt"
    save_checkpoint(path, {key: value for key, value in {**checkpoint, **change}.items() if key not in ("format", "version")})
    with pytest.raises(CheckpointError, match=why):
        Predictor.from_checkpoint(path, detector="none")


@pytest.mark.parametrize("kind", ["evil", *BROKEN])
def test_predict_command_refuses_bad_checkpoints_without_a_traceback(tmp_path, good, face, capsys, kind):
    marker = tmp_path / "MARKER"
    path = _malicious_torch(tmp_path / "evil.pt", marker) if kind == "evil" else _broken(kind, tmp_path, good)
    code = main(["predict", "--model", str(path), str(face), "--detector", "none", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.startswith("fernoise: error: ") and path.name in err and "Traceback" not in out + err
    assert not marker.exists()


def test_commands_refuse_a_malicious_checkpoint_in_a_real_process(tmp_path, face):
    marker = tmp_path / "MARKER"
    path = _malicious_torch(tmp_path / "evil.pt", marker)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = (["predict", "--model", str(path), str(face)], ["export", str(path), "--onnx", str(tmp_path / "m.onnx")])
    for args in commands:
        result = subprocess.run([sys.executable, "-m", "fernoise", *args], capture_output=True, text=True,
                                env=env, timeout=120)
        assert result.returncode == 2, result.stderr
        assert "refused to load" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not marker.exists() and not (tmp_path / "m.onnx").exists()
