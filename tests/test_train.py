"""The training loop: run directory contents, exact resume, divergence, locking."""
from __future__ import annotations

import csv
import math
import json
import subprocess
import sys

import pytest
import torch

import fernoise.train as train_module
from fernoise.checkpoint import load_checkpoint
from fernoise.config import TrainConfig
from fernoise.io import OutputError
from fernoise.train import TrainingError, train

TINY = dict(train_limit=96, val_limit=64, image_size=32, batch_size=32, eval_batch_size=64, device="cpu")


def _cfg(**kwargs) -> TrainConfig:
    return TrainConfig(**{**TINY, "epochs": 2, **kwargs})


def _rows(run) -> list[dict]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_run_directory_holds_everything(tmp_path):
    run = tmp_path / "run"
    # init 1e-4 at lr 1e-3: the common AutoReLU weight turns negative within the first steps
    summary = train(_cfg(method="dynamic", autorelu_init=1e-4, lr=1e-3), run, quiet=True, log=lambda _: None)
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for column in ("epoch", "train_loss", "val_loss", "val_f1", "val_acc", "noise_on", "lr", "seconds", "autorelu_w"):
        assert column in rows[0]
    assert sum(float(r["noise_on"]) for r in rows) > 0, "the dynamic run must inject noise"
    with open(run / "autorelu_trace.csv", newline="") as handle:
        trace = list(csv.DictReader(handle))
    assert [(t["epoch"], t["step"]) for t in trace] == [(e, s) for e in "12" for s in "123"]
    noisy = [float(t["w"]) < 0 for t in trace]
    assert [sum(noisy[:3]) / 3, sum(noisy[3:]) / 3] == pytest.approx([float(r["noise_on"]) for r in rows])
    assert float(trace[1]["w_min"]) < float(trace[1]["w_max"]) and float(trace[0]["grad_absmax"]) > 0
    assert (run / "config.yaml").is_file() and list(run.glob("events.out.tfevents.*"))
    for key in ("best_val_f1", "best_epoch", "final_val_f1", "final_train_loss", "test_f1", "test_acc"):
        assert key in summary
    assert json.loads((run / "summary.json").read_text()) == summary
    assert summary["best_val_f1"] == max(float(r["val_f1"]) for r in rows)
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == summary["best_epoch"]
    assert best["classes"] == ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]
    assert best["input"]["size"] == 32 and best["model"]["noise"] == "dynamic"
    assert not (run / ".lock").exists()


@pytest.mark.parametrize("method", ["periodic", "dynamic", "dropout+periodic", "dynamic+sgd+autorelu-adam"])
def test_resume_gives_the_same_run_as_no_interruption(tmp_path, method, one_thread):
    extra = dict(method=method, interval=1, autorelu_init=0.003, lr=1e-3)
    if method == "dynamic+sgd+autorelu-adam":  # the AutoReLU weights' own Adam resumes too
        extra.update(method="dynamic", optimizer="sgd", lr=0.05, autorelu_adam_lr=1e-3)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(_cfg(epochs=3, **extra), straight, quiet=True, log=lambda _: None)
    train(_cfg(epochs=2, **extra), split, quiet=True, log=lambda _: None)
    train(_cfg(epochs=3, **extra), split, resume=True, quiet=True, log=lambda _: None)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(_rows(split)) == strip(_rows(straight))
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(split / "checkpoints" / "last.pt")
    adam = [state["noise"].pop("autorelu_adam", None) for state in (a, b)]
    assert a["noise"] == b["noise"] and (adam[0] is not None) == (method == "dynamic+sgd+autorelu-adam")
    if adam[0] is not None:
        assert adam[0]["param_groups"] == adam[1]["param_groups"] and adam[0]["state"].keys() == adam[1]["state"].keys()
        for key, moments in adam[0]["state"].items():
            assert all(torch.equal(moments[name], adam[1]["state"][key][name]) for name in moments)
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key


def test_sgd_leaves_dynamic_noise_off_and_the_autorelu_weights_own_adam_switches_it(tmp_path):
    from fernoise.models import build_model
    from fernoise.noise import autorelu_units
    from fernoise.optim import build_autorelu_adam, build_optimizer

    cfg = _cfg(epochs=1, method="dynamic", optimizer="sgd", lr=0.05, autorelu_init=0.003)
    driven = _cfg(epochs=1, method="dynamic", optimizer="sgd", lr=0.05, autorelu_init=0.003, autorelu_adam_lr=5e-3)
    model = build_model(**driven.model_kwargs(7, 1))
    autorelu = {id(unit.weight) for unit in autorelu_units(model)}
    in_main = {id(p) for group in build_optimizer(driven, model, torch.device("cpu")).param_groups for p in group["params"]}
    in_own = {id(p) for group in build_autorelu_adam(driven, model).param_groups for p in group["params"]}
    assert autorelu and in_own == autorelu and not in_main & autorelu
    assert len(in_main) + len(in_own) == len(list(model.parameters()))
    assert build_autorelu_adam(cfg, model) is None
    for name, config in (("sgd", cfg), ("own-adam", driven)):
        train(config, tmp_path / name, quiet=True, log=lambda _: None)
    # 3 steps: SGD moves the common weight by lr x a near-zero gradient; Adam's first step moves each weight by
    # its lr, towards zero where weight decay outweighs the rounding residue (most weights), and the common one with them
    plain, own = ([float(r["w"]) for r in csv.DictReader(open(tmp_path / name / "autorelu_trace.csv"))]
                  for name in ("sgd", "own-adam"))
    assert len(plain) == len(own) == 3
    assert all(abs(w - 0.003) < 1e-4 for w in plain) and float(_rows(tmp_path / "sgd")[0]["noise_on"]) == 0
    assert own[1] < 0.002 and min(own) < 0 and float(_rows(tmp_path / "own-adam")[0]["noise_on"]) > 0


def test_resume_refuses_a_changed_configuration(tmp_path):
    run = tmp_path / "run"
    train(_cfg(epochs=1), run, quiet=True, log=lambda _: None)
    with pytest.raises(TrainingError, match="lr"):
        train(_cfg(epochs=2, lr=0.1), run, resume=True, quiet=True, log=lambda _: None)


def test_existing_run_is_not_overwritten(tmp_path):
    run = tmp_path / "run"
    train(_cfg(epochs=1), run, quiet=True, log=lambda _: None)
    before = (run / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(TrainingError, match="--resume"):
        train(_cfg(epochs=1), run, quiet=True, log=lambda _: None)
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def _poison(monkeypatch, n):
    """Make the n-th training forward of the model that train() builds return NaN logits."""
    real = train_module.build_model
    calls = {"n": 0}

    def hook(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] == n:
                return output * float("nan")
        return output

    def build(**kwargs):
        model = real(**kwargs)
        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(train_module, "build_model", build)


def test_non_finite_loss_stops_with_epoch_and_step(tmp_path, monkeypatch):
    _poison(monkeypatch, n=5)  # 3 steps per epoch: epoch 2, step 2
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"epoch 2, step 2"):
        train(_cfg(epochs=3), run, quiet=True, log=lambda _: None)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())


def test_non_finite_steps_can_be_skipped_and_counted(tmp_path, monkeypatch):
    _poison(monkeypatch, n=2)
    run = tmp_path / "run"
    train(_cfg(epochs=2, nonfinite="skip"), run, quiet=True, log=lambda _: None)
    assert [r["skipped_steps"] for r in _rows(run)] == ["1", "0"]


def test_second_run_in_the_same_directory_is_refused(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from fernoise.io import RunLock; import time; RunLock({str(run)!r}).acquire(); "
         "print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"in use by another fernoise process \\(PID {holder.pid}\\)"):
            train(_cfg(epochs=1), run, quiet=True, log=lambda _: None)
    finally:
        holder.kill()
        holder.wait()
    assert not (run / "metrics.csv").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("999999999")
    train(_cfg(epochs=1), run, quiet=True, log=lambda _: None)
    assert (run / "summary.json").is_file()


def test_resuming_a_cosine_run_with_more_epochs_follows_the_longer_schedule(tmp_path):
    run = tmp_path / "run"
    train(_cfg(epochs=2, scheduler="cosine", lr=1e-3), run, quiet=True, log=lambda _: None)
    train(_cfg(epochs=4, scheduler="cosine", lr=1e-3), run, resume=True, quiet=True, log=lambda _: None)
    lrs = [float(r["lr"]) for r in _rows(run)]
    # epoch e runs at the closed-form rate of a 4-epoch schedule after e - 1 epochs (was 0, then 5e-4)
    assert lrs[2:] == pytest.approx([1e-3 * (1 + math.cos(math.pi * done / 4)) / 2 for done in (2, 3)], rel=1e-6)


def test_dynamic_without_weight_decay_warns_that_noise_may_never_switch_on(tmp_path):
    lines = []
    train(_cfg(epochs=1, method="dynamic", optimizer="sgd"), tmp_path / "run", quiet=True, log=lines.append)
    assert any(line.startswith("warning: dynamic method with optimizer: sgd") for line in lines)


def test_bn_recalibration_changes_only_the_evaluation(tmp_path):
    common = dict(method="periodic", interval=1)  # epoch 2 is noisy
    train(_cfg(**common), tmp_path / "plain", quiet=True, log=lambda _: None)
    train(_cfg(**common, bn_recalibrate=2), tmp_path / "recal", quiet=True, log=lambda _: None)
    plain, recal = _rows(tmp_path / "plain"), _rows(tmp_path / "recal")
    assert [r["noise_on"] for r in recal] == ["0.0", "1.0"]
    # running statistics never enter a training-mode forward: the training stream is untouched
    assert [r["train_loss"] for r in recal] == [r["train_loss"] for r in plain]
    assert all(a["val_loss"] != b["val_loss"] for a, b in zip(plain, recal))
