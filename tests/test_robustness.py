"""Fault injection: kills, interrupted writes, full disks, corrupt files, numerical faults."""
from __future__ import annotations

import csv
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import fernoise.io as fio
from fernoise.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fernoise.config import TrainConfig
from fernoise.io import OutputError, atomic_write, write_text_atomic
from fernoise.train import TrainingError, train

TRAIN = ["--method", "dynamic", "--autorelu-init", "0.003", "--lr", "1e-3", "--epochs", "4", "--train-limit", "128",
         "--val-limit", "64", "--image-size", "32", "--batch-size", "32", "--quiet", "--device", "cpu"]


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fernoise", *args]


def _env() -> dict:
    # one thread: runs here are compared bit for bit (conftest.one_thread)
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _wait_for(event: Callable[[], bool], process: subprocess.Popen) -> None:
    """Poll until ``event()`` holds, however slow the machine; fail only if ``process`` ends first."""
    while not event():
        assert process.poll() is None, f"the process ended (status {process.returncode}) before the awaited event"
        time.sleep(0.05)


def _without_seconds(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def _weights(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["state_dict"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run(_cmd("train", "--out", str(run), *TRAIN), check=True, env=_env(), timeout=600)
    return run


@pytest.mark.parametrize("phase", ["started@1", "mid-epoch@1", "best-written@1", "epoch-trained@2",
                                   "last-written@2", "epoch-done@3"])
def test_sigkill_at_any_point_then_resume_matches_the_uninterrupted_run(tmp_path, reference_run, phase):
    run, marker = tmp_path / "run", tmp_path / "paused"
    env = {**_env(), "FERNOISE_PAUSE_AT": phase, "FERNOISE_PAUSE_MARKER": str(marker)}
    process = subprocess.Popen(_cmd("train", "--out", str(run), *TRAIN), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(marker.exists, process)
    assert marker.read_text() == phase.split("@")[0], "the run never reached the phase"
    process.send_signal(signal.SIGKILL)  # the process stopped itself there
    process.wait()
    if (run / "config.yaml").exists():
        subprocess.run(_cmd("train", "--resume", str(run), "--quiet"), check=True, env=_env(), timeout=600)
    else:  # killed before the run had even started: the same command starts it
        subprocess.run(_cmd("train", "--out", str(run), *TRAIN), check=True, env=_env(), timeout=600)
    assert _without_seconds(run) == _without_seconds(reference_run)
    assert (run / "autorelu_trace.csv").read_text() == (reference_run / "autorelu_trace.csv").read_text()
    ours, theirs = _weights(run), _weights(reference_run)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_sigterm_stops_cleanly_and_says_how_to_resume(tmp_path):
    run = tmp_path / "run"
    args = [a if a != "4" else "50" for a in TRAIN]
    process = subprocess.Popen(_cmd("train", "--out", str(run), *args), env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (run / "checkpoints" / "last.pt").exists(), process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert f"fernoise train --resume {run}" in stderr and "Traceback" not in stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] >= 1
    assert not (run / ".lock").exists()


def test_sigterm_stops_concurrent_reproduce_workers_and_it_resumes(tmp_path):
    out = tmp_path / "grid"
    args = ["reproduce", "--methods", "baseline", "periodic", "--seeds", "1", "--jobs", "2", "--out", str(out),
            *[a if a != "4" else "300" for a in TRAIN if a not in ("--method", "dynamic")], "--quiet"]
    process = subprocess.Popen(_cmd(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: bool(list(out.glob("*/checkpoints/last.pt"))), process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    assert not list(out.glob("*/summary.json")), "the workers were stopped, not waited for"
    resumed = subprocess.run(_cmd(*[a if a != "300" else "2" for a in args]), env=_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert len(list(out.glob("*-seed0/summary.json"))) == 2


def test_interrupted_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {}, "classes": [], "input": {}, "state_dict": {"w": torch.ones(3)}})
    before = path.read_bytes()

    class Crash(Exception):
        pass

    with pytest.raises(Crash):
        with atomic_write(path) as handle:
            handle.write(b"half a checkpoint")
            raise Crash()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "no temporary file is left behind"


def test_disk_full_names_the_path_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    write_text_atomic(path, "epoch\n1\n")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fio.os, "fsync", full)
    with pytest.raises(OutputError, match=f"cannot write {path}: disk full"):
        write_text_atomic(path, "epoch\n1\n2\n")
    assert path.read_text() == "epoch\n1\n"


def test_unwritable_output_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = subprocess.run(_cmd("train", "--out", str(blocker / "run"), *TRAIN), capture_output=True, text=True,
                            env=_env(), timeout=600)
    assert result.returncode == 2
    assert str(blocker) in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("damage", ["truncated", "foreign", "garbage"])
def test_corrupt_or_foreign_checkpoint_on_resume_is_a_clear_error(tmp_path, reference_run, damage):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_bytes((reference_run / "config.yaml").read_bytes())
    good = (reference_run / "checkpoints" / "last.pt").read_bytes()
    bad = {"truncated": good[: len(good) // 2], "garbage": os.urandom(2048)}.get(damage)
    if damage == "foreign":
        torch.save({"epoch": 3, "weights": torch.zeros(2)}, run / "checkpoints" / "last.pt")
    else:
        (run / "checkpoints" / "last.pt").write_bytes(bad)
    result = subprocess.run(_cmd("train", "--resume", str(run), "--quiet"), capture_output=True, text=True,
                            env=_env(), timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "last.pt" in result.stderr
    assert ("not a fernoise checkpoint" if damage == "foreign" else "truncated or corrupt") in result.stderr
    assert "arbitrary code" not in result.stderr


def test_checkpoint_of_another_model_is_refused(tmp_path):
    from fernoise.checkpoint import model_from_checkpoint
    from fernoise.models import build_model

    small = build_model("resnet18", 3).state_dict()
    checkpoint = {"model": {"name": "resnet18", "num_classes": 7}, "classes": list("abcdefg"),
                  "input": {"size": 48, "channels": 3, "mean": [0.5] * 3, "std": [0.2] * 3}, "state_dict": small}
    save_checkpoint(tmp_path / "x.pt", checkpoint)
    with pytest.raises(CheckpointError, match="wrong shape"):
        model_from_checkpoint(load_checkpoint(tmp_path / "x.pt"), tmp_path / "x.pt")


def test_constant_images_train_without_nan(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for name in ("happy", "sad"):
            folder = tmp_path / "flat" / split / name
            folder.mkdir(parents=True)
            for i in range(8):
                Image.new("L", (32, 32), color=128).save(folder / f"{i}.png")
    cfg = TrainConfig(data=str(tmp_path / "flat"), epochs=2, image_size=32, batch_size=8, device="cpu",
                      cache_dir=str(tmp_path / "cache"))
    summary = train(cfg, tmp_path / "run", quiet=True, log=lambda _: None)
    assert np.isfinite(summary["final_train_loss"])


def test_diverging_learning_rate_stops_naming_epoch_and_step(tmp_path):
    cfg = TrainConfig(epochs=3, lr=1e12, optimizer="sgd", momentum=0.0, train_limit=96, val_limit=32,
                      image_size=32, batch_size=32, device="cpu")
    with pytest.raises(TrainingError, match=r"non-finite (training loss .* at epoch \d+, step \d+|weights after epoch \d+)"):
        train(cfg, tmp_path / "run", quiet=True, log=lambda _: None)
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    if best.exists():
        state = load_checkpoint(best)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_same_seed_same_metrics_and_other_seed_differs(tmp_path, one_thread):
    kwargs = dict(epochs=2, train_limit=96, val_limit=64, image_size=32, batch_size=32, device="cpu", method="dropout")
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(TrainConfig(seed=seed, **kwargs), tmp_path / name, quiet=True, log=lambda _: None)
    assert _without_seconds(tmp_path / "a") == _without_seconds(tmp_path / "b")
    assert _without_seconds(tmp_path / "a") != _without_seconds(tmp_path / "c")


def test_resume_refuses_a_checkpoint_whose_classes_differ_from_the_data(tmp_path):
    from PIL import Image

    data = tmp_path / "faces"
    for split in ("train", "val"):
        for name in ("happy", "sad"):
            (data / split / name).mkdir(parents=True)
            for i in range(4):
                Image.new("L", (32, 32), color=40 * i).save(data / split / name / f"{i}.png")
    cfg = dict(data=str(data), image_size=32, batch_size=8, device="cpu", cache_dir=str(tmp_path / "cache"))
    train(TrainConfig(epochs=1, **cfg), tmp_path / "run", quiet=True, log=lambda _: None)
    for split in ("train", "val"):  # the data set gains a class after the checkpoint was written
        (data / split / "anger").mkdir()
        for i in range(4):
            Image.new("L", (32, 32), color=30 * i).save(data / split / "anger" / f"{i}.png")
    with pytest.raises(TrainingError, match=r"classes \['happy', 'sad'\] but the data now has"):
        train(TrainConfig(epochs=2, **cfg), tmp_path / "run", resume=True, quiet=True, log=lambda _: None)
