"""The fast-recipe options: schedule, Nesterov, weight average, network shape, precision."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import fernoise.step as step_module
from fernoise.checkpoint import load_checkpoint, model_from_checkpoint
from fernoise.config import METHODS, ConfigError, TrainConfig, preset_path, resolve_config
from fernoise.data import Augmenter
from fernoise.evaluate import predict_arrays
from fernoise.models import build_model
from fernoise.step import resolve_precision
from fernoise.optim import onecycle_factor
from fernoise.train import train

TINY = dict(train_limit=96, val_limit=64, image_size=32, batch_size=32, eval_batch_size=64, device="cpu")


def _rows(run) -> list[dict]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("method", list(METHODS))
def test_fast_preset_trains_two_steps_with_every_method(tmp_path, method):
    # one epoch of two steps; no test-time views for the synthetic test split's 1,500 faces (tested apart)
    cfg = resolve_config(preset_path("fer2013-fast"), method=method, epochs=1, warmup_epochs=0.5, train_limit=256,
                         val_limit=32, image_size=32, train_crop=24, tta_shift=0, tta_zoom=0)
    assert cfg.batch_size == 128 and cfg.scheduler == "onecycle"  # 256 faces: two steps
    summary = train(cfg, tmp_path / method, quiet=True, log=lambda _: None)
    assert summary["epochs"] == 1 and np.isfinite(summary["final_train_loss"])
    if cfg.noise == "periodic":  # T = 6 epochs: the first is clean, as Algorithm 1 says
        assert float(_rows(tmp_path / method)[0]["noise_on"]) == 0


def test_onecycle_rises_then_falls_linearly_to_the_last_step():
    f = onecycle_factor(total_steps=10, warmup_steps=4)
    assert [f(s) for s in range(10)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    g = onecycle_factor(total_steps=4, warmup_steps=0)
    assert [g(s) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_onecycle_run_sets_the_lr_every_step(tmp_path):
    # 96 faces at batch 32: 3 steps per epoch, 2 epochs, 3 warm-up steps; the column holds each epoch's first lr
    train(TrainConfig(**TINY, epochs=2, optimizer="sgd", nesterov=True, lr=0.3, scheduler="onecycle",
                      warmup_epochs=1), tmp_path / "run", quiet=True, log=lambda _: None)
    lrs = [float(r["lr"]) for r in _rows(tmp_path / "run")]
    assert lrs == pytest.approx([0.3 * 1 / 4, 0.3 * 1.0])
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", resume=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == 0  # the schedule reaches zero after the last step
    assert state["optimizer"]["param_groups"][0]["nesterov"] is True


def test_train_crop_trains_on_crops_and_validates_on_whole_faces(tmp_path, monkeypatch):
    import fernoise.train as train_module
    seen: dict[bool, set] = {True: set(), False: set()}

    def recording(**kwargs):
        model = build_model(**kwargs)
        model.register_forward_pre_hook(lambda module, args: seen[module.training].add(tuple(args[0].shape[-2:])))
        return model

    monkeypatch.setattr(train_module, "build_model", recording)
    summary = train(TrainConfig(**TINY, epochs=1, augment="light", train_crop=24), tmp_path / "run", quiet=True,
                    log=lambda _: None)
    assert seen == {True: {(24, 24)}, False: {(32, 32)}} and np.isfinite(summary["final_train_loss"])
    for bad, match in ((dict(train_crop=40), "between 1 and image_size"), (dict(train_crop=24, augment="none"), "augmentation")):
        with pytest.raises(ConfigError, match=match):
            TrainConfig(image_size=32, **bad)


def test_nesterov_needs_sgd():
    with pytest.raises(ConfigError, match="nesterov"):
        TrainConfig(nesterov=True, optimizer="adam")


def test_weight_average_is_what_is_evaluated_and_saved(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**TINY, epochs=2, lr=1e-3, ema=0.9, bn_recalibrate=2), run, quiet=True, log=lambda _: None)
    last = load_checkpoint(run / "checkpoints" / "last.pt", resume=True)
    averaged, trained = last["state_dict"], last["train_state_dict"]
    assert last["ema_updates"] == 6
    assert any(not torch.equal(averaged[k], trained[k]) for k in trained if trained[k].is_floating_point())
    # the saved (averaged) weights give the last epoch's validation numbers; the trained ones do not
    from fernoise.train import prepare_data
    data = prepare_data(TrainConfig(**TINY), progress=False)
    augment = Augmenter("paper", 32, data.packed.channels, data.packed.mean, data.packed.std)

    def val_f1(state_dict) -> float:
        model = model_from_checkpoint({**last, "state_dict": state_dict})
        pred = predict_arrays(model, data.val_images, augment, torch.device("cpu")).argmax(1).numpy()
        from fernoise.metrics import classification_scores
        return classification_scores(data.val_labels, pred, 7, [str(i) for i in range(7)])["macro_f1"]

    assert val_f1(averaged) == pytest.approx(float(_rows(run)[-1]["val_f1"]))
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert "train_state_dict" not in best and best["kind"] == "inference"


class _Stop(Exception):
    pass


def _stop_after(epoch: int):
    def on_epoch(row: dict) -> None:
        if int(row["epoch"]) == epoch:
            raise _Stop()
    return on_epoch


def test_resume_with_onecycle_and_weight_average_equals_an_uninterrupted_run(tmp_path, one_thread):
    cfg = TrainConfig(**TINY, epochs=3, optimizer="sgd", nesterov=True, lr=0.05, scheduler="onecycle",
                      warmup_epochs=1, ema=0.9, bn_recalibrate=2, method="periodic", interval=1)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(cfg, straight, quiet=True, log=lambda _: None)
    with pytest.raises(_Stop):
        train(cfg, split, quiet=True, log=lambda _: None, on_epoch=_stop_after(2))
    train(cfg, split, resume=True, quiet=True, log=lambda _: None)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(_rows(split)) == strip(_rows(straight))
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt", resume=True) for run in (straight, split))
    for key in ("state_dict", "train_state_dict"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert a["ema_updates"] == b["ema_updates"] == 9


def test_val_every_validates_every_nth_epoch_and_the_last_and_resumes(tmp_path, one_thread):
    cfg = TrainConfig(**TINY, epochs=3, val_every=2)
    summary = train(cfg, tmp_path / "straight", quiet=True, log=lambda _: None)
    rows = _rows(tmp_path / "straight")
    assert [r["val_f1"] == "nan" for r in rows] == [True, False, False]
    assert summary["best_epoch"] in (2, 3) and summary["final_val_f1"] == float(rows[2]["val_f1"])
    assert load_checkpoint(tmp_path / "straight" / "checkpoints" / "best.pt")["epoch"] == summary["best_epoch"]
    with pytest.raises(_Stop):  # stopped after the unvalidated epoch 1, then resumed: the same rows
        train(cfg, tmp_path / "split", quiet=True, log=lambda _: None, on_epoch=_stop_after(1))
    train(cfg, tmp_path / "split", resume=True, quiet=True, log=lambda _: None)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(_rows(tmp_path / "split")) == strip(rows)
    with pytest.raises(ConfigError, match="val_every"):
        TrainConfig(val_every=0)


@pytest.mark.parametrize("stem, side", [("imagenet", 4), ("half", 8), ("deep", 8), ("small", 16)])
def test_stem_and_width_shape_the_resnet(stem, side):
    model = build_model(in_channels=1, stem=stem, width=16)
    seen = {}
    model.layer1.register_forward_hook(lambda m, i, o: seen.update(layer1=o.shape))
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 7)
    assert seen["layer1"] == (2, 16, side, side)
    assert model.fc.in_features == 8 * 16
    narrow, wide = (sum(p.numel() for p in build_model(width=w).parameters()) for w in (32, 64))
    assert 3.5 < wide / narrow < 4.1  # parameters grow with the square of the width


def test_the_deep_stem_sees_the_full_resolution_first_and_learns_there():
    torch.manual_seed(0)
    model = build_model(in_channels=1, stem="deep", width=16)
    seen = {}
    model.prelude.register_forward_hook(lambda m, i, o: seen.update(prelude=o.shape))
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.prelude[0].weight.detach().clone()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert seen["prelude"] == (4, 4, 16, 16)  # width // 4 channels, not yet halved
    assert not torch.equal(model.prelude[0].weight, before)
    half = build_model(in_channels=1, stem="half", width=16)
    assert not any(key.startswith("prelude") for key in half.state_dict())  # torchvision's keys elsewhere


def test_width_is_refused_for_other_libraries():
    with pytest.raises(ValueError, match="width"):
        build_model("torchvision:resnet18", width=32)


def test_precision_auto_is_bf16_only_where_it_pays(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    assert step_module.native_bf16(cpu) is False


def test_precision_auto_runs_bf16_channels_last_where_it_pays(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    summary = train(TrainConfig(**TINY, epochs=1, precision="auto"), tmp_path / "run", quiet=True,
                    log=lambda _: None)
    assert summary["precision"] == "bf16" and summary["channels_last"] is True


def test_weight_average_warms_up_then_keeps_its_decay():
    from torch.optim.swa_utils import AveragedModel

    from fernoise.optim import ema_warmup_update

    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False))
    average = AveragedModel(model, multi_avg_fn=ema_warmup_update(0.9))
    expected = None
    for n in range(40):
        with torch.no_grad():
            model[0].weight.fill_(float(n))
        average.update_parameters(model)
        d = min(0.9, (1 + n) / (10 + n))  # the update after n earlier ones (the first copies)
        expected = float(n) if expected is None else d * expected + (1 - d) * n
        assert float(average.module[0].weight.detach()) == pytest.approx(expected, rel=1e-5)


def test_weight_average_needs_its_own_batchnorm_statistics():
    with pytest.raises(ConfigError, match="bn_recalibrate"):
        TrainConfig(ema=0.999)


def test_final_model_views_scores_a_cropped_run_on_its_windows(tmp_path):
    import runpy
    from pathlib import Path

    views = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "final_model_views.py"))
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    ten = views["crops"](x, 6, True)
    assert len(ten) == 10 and all(v.shape == (2, 1, 6, 6) for v in ten)
    assert torch.equal(ten[0], x[..., 1:7, 1:7]) and torch.equal(ten[4], x[..., 2:, 2:])
    assert all(torch.equal(ten[5 + i], ten[i].flip(3)) for i in range(5))
    assert len(views["crops"](x, 6, False)) == 2
    run = tmp_path / "run"
    train(TrainConfig(**TINY, epochs=1, augment="light", train_crop=24), run, quiet=True, log=lambda _: None)
    rows = views["score_views"](run, 2, 0.1, 24)
    assert [r["views"] for r in rows] == ["1", "flip (2)", "flip + zoom 0.1 (6)", "flip + shift 2 (10)",
                                          "centre 24 + flip (2)", "ten crops of 24 (10)"]
    assert {r["weights"] for r in rows} == {"final"} and all(0 <= r["accuracy"] <= 1 for r in rows)
    final = float(_rows(run)[-1]["val_acc"])  # the run validated one whole-face view (no tta_flip in TINY)
    assert rows[0]["accuracy"] == pytest.approx(final)
