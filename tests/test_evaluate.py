"""Evaluating checkpoints: cross-data-set channels, which images are scored, normalisation, a directory of runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fernoise.evaluate as evaluate_module
from data_fixtures import make_folders
from fernoise.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fernoise.cli import main
from fernoise.data import Augmenter, load_data, normalize
from fernoise.evaluate import evaluate_checkpoint, predict_arrays
from fernoise.models import build_model
from test_predict import make_checkpoint


def test_grey_faces_score_on_a_colour_model_as_their_rgb_copies():
    torch.manual_seed(0)
    model = build_model("resnet18", 7, in_channels=3).eval()
    grey = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 1), dtype=np.uint8)
    augment = Augmenter("none", 32, 3, [0.5] * 3, [0.25] * 3)
    as_grey = predict_arrays(model, grey, augment, torch.device("cpu"))
    as_rgb = predict_arrays(model, np.repeat(grey, 3, axis=3), augment, torch.device("cpu"))
    assert as_grey.shape == (6, 7)
    assert torch.allclose(as_grey, as_rgb, atol=1e-5)


# --------------------------------------------------------------------------- which images are scored

CLASSES = ("angry", "happy", "sad", "contempt")  # contempt is unknown to the 7-class model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "best.pt")


def _evaluate(model_file: Path, data: Path, tmp_path: Path, **options):
    return evaluate_checkpoint(model_file, str(data), cache_dir=str(tmp_path / "cache"), device="cpu",
                               progress=False, **options)


def test_a_flat_tree_is_scored_whole_and_says_so_in_one_line(tmp_path, model_file, capsys):
    flat = make_folders(tmp_path / "CK", splits=None, classes=CLASSES, per_class=10)
    scores = _evaluate(model_file, flat, tmp_path)
    assert sum(scores["splits"].values()) == 40 and set(scores["splits"]) == {"train", "val"}
    assert scores["n"] == 30 and scores["excluded"] == {"contempt": 10}
    assert sum(scores["support"].values()) == 30
    carved = _evaluate(model_file, flat, tmp_path, split="val")  # what evaluate scored before: the carved part
    assert carved["splits"] == {"val": 4} and carved["n"] == 3
    assert main(["evaluate", str(model_file), "--data", str(flat), "--cache-dir", str(tmp_path / "cache"),
                 "--device", "cpu", "--quiet"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    for part in ("no split folders of its own", "40 images", "train 36 + val 4", "scored 30",
                 "left out 10 of classes the model does not know (contempt: 10)"):
        assert part in first, (part, first)


def test_a_tree_with_splits_scores_its_own_split_or_all(tmp_path, model_file):
    tree = make_folders(tmp_path / "faces", splits=("train", "test"), classes=CLASSES, per_class=5)
    default = _evaluate(model_file, tree, tmp_path)  # no val of its own: its test split, not the carved val
    assert default["splits"] == {"test": 20} and default["n"] == 15
    assert "the test split (it has no val split of its own)" in default["selection"]
    every = _evaluate(model_file, tree, tmp_path, split="all")
    assert every["splits"] == {"train": 16, "val": 4, "test": 20} and every["n"] == 30
    assert "val 4 carved by fernoise" in every["selection"]
    own_val = make_folders(tmp_path / "withval", splits=("train", "val"), classes=CLASSES, per_class=3)
    assert _evaluate(model_file, own_val, tmp_path)["splits"] == {"val": 12}


def test_a_test_only_tree_is_evaluated_but_not_trained_on(tmp_path, model_file):
    from fernoise.config import TrainConfig
    from fernoise.data import DataError
    from fernoise.train import prepare_data

    tree = make_folders(tmp_path / "only", splits=("test",), classes=CLASSES, per_class=4)
    assert _evaluate(model_file, tree, tmp_path)["splits"] == {"test": 16}
    with pytest.raises(ValueError, match=r"only: no 'train' split \(it has test\)"):
        _evaluate(model_file, tree, tmp_path, split="train")
    with pytest.raises(DataError, match=r"only: no training images found in the folders layout"):
        prepare_data(TrainConfig(data=str(tree), image_size=48, cache_dir=str(tmp_path / "cache")), progress=False)
    report = tmp_path / "report.json"
    report.write_text("earlier\n")
    assert main(["evaluate", str(model_file), "--data", str(tree), "--split", "val", "--json", str(report),
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 2
    assert report.read_text() == "earlier\n"  # a failed evaluation leaves what was written before


def test_normalisation_comes_from_the_checkpoint_not_the_data(tmp_path, model_file):
    tree = make_folders(tmp_path / "bright", splits=("test",), classes=("happy", "sad"), per_class=4,
                        values={"happy": 230, "sad": 250})
    scores = _evaluate(model_file, tree, tmp_path)
    packed = load_data(str(tree), size=48, cache_dir=str(tmp_path / "cache"), progress=False, quiet=True)
    checkpoint = load_checkpoint(model_file)
    model = model_from_checkpoint(checkpoint)
    images = torch.from_numpy(np.array(packed.splits["test"].images)).permute(0, 3, 1, 2)
    targets = torch.as_tensor([checkpoint["classes"].index(packed.classes[k]) for k in packed.splits["test"].labels])

    def loss(mean, std) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(normalize(images, mean, std)), targets))

    assert packed.mean[0] > 0.85 != checkpoint["input"]["mean"][0]  # the data's own statistics differ
    assert scores["loss"] == pytest.approx(loss(checkpoint["input"]["mean"], checkpoint["input"]["std"]), rel=1e-5)
    assert scores["loss"] != pytest.approx(loss(packed.mean, packed.std), rel=1e-3)


def test_bn_recalibrate_replaces_the_saved_statistics_with_the_train_splits(tmp_path, model_file, capsys):
    tree = make_folders(tmp_path / "faces", splits=("train", "val"), classes=CLASSES, per_class=20)
    checkpoint = load_checkpoint(model_file)
    shifted = tmp_path / "shifted.pt"  # the same weights, other saved BatchNorm statistics
    state = {k: v + 1.0 if k.endswith("running_mean") else v for k, v in checkpoint["state_dict"].items()}
    save_checkpoint(shifted, {**checkpoint, "state_dict": state})
    plain = [_evaluate(path, tree, tmp_path) for path in (model_file, shifted)]
    assert plain[0]["loss"] != pytest.approx(plain[1]["loss"], rel=1e-3)  # the saved statistics matter...
    again = [_evaluate(path, tree, tmp_path, bn_recalibrate=2) for path in (model_file, shifted)]
    assert again[0]["loss"] == pytest.approx(again[1]["loss"], rel=1e-5)  # ...until they are re-estimated
    assert again[0]["loss"] != pytest.approx(plain[0]["loss"], rel=1e-3)
    assert again[0]["splits"] == {"val": 80} and plain[0]["bn_recalibrated"] == ""
    assert again[0]["selection"].endswith("BatchNorm statistics re-estimated on 80 clean train images (2 batches)")
    assert main(["evaluate", str(shifted), "--data", str(tree), "--cache-dir", str(tmp_path / "cache"),
                 "--bn-recalibrate", "1", "--device", "cpu", "--quiet"]) == 0
    assert "re-estimated on 64 clean train images (1 batch)" in capsys.readouterr().out.splitlines()[0]

    test_only = make_folders(tmp_path / "only", splits=("test",), classes=CLASSES, per_class=2)
    with pytest.raises(ValueError, match=r"only: no train split to re-estimate BatchNorm statistics from \(it has test\)"):
        _evaluate(model_file, test_only, tmp_path, bn_recalibrate=2)
    with pytest.raises(ValueError, match="must be a number of batches >= 0, got -1"):
        _evaluate(model_file, tree, tmp_path, bn_recalibrate=-1)


# --------------------------------------------------------------------------- a directory of runs


def _run(root: Path, model_file: Path, method: str, seed: int, **config) -> Path:
    run = root / f"{method}-seed{seed}"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(f"method: {method}\nseed: {seed}\n")
    checkpoint = load_checkpoint(model_file)
    config = {"method": method, "seed": seed, **config}
    save_checkpoint(run / "checkpoints" / "best.pt", {**checkpoint, "config": config, "epoch": 3})
    return run


def test_a_directory_of_runs_gives_one_table_and_prepares_the_data_once(tmp_path, model_file, monkeypatch, capsys):
    runs = tmp_path / "runs"
    for method, seed in (("baseline", 0), ("baseline", 1), ("periodic", 0)):
        _run(runs, model_file, method, seed)
    (runs / "dynamic-seed0" / "checkpoints").mkdir(parents=True)  # started, no epoch finished
    (runs / "dynamic-seed0" / "config.yaml").write_text("method: dynamic\nseed: 0\n")
    data = make_folders(tmp_path / "CK", splits=None, classes=CLASSES, per_class=3)
    loads = []
    real_load = evaluate_module.load_data
    monkeypatch.setattr(evaluate_module, "load_data", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    table, report = tmp_path / "grid.csv", tmp_path / "grid.json"
    args = ["evaluate", str(runs), "--data", str(data), "--csv", str(table), "--json", str(report),
            "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert len(loads) == 1
    assert "| baseline-seed1 | baseline | 1 | 3 |" in out and "| periodic-seed0 | periodic | 0 | 3 |" in out
    assert "| baseline | " in out and "(n=2)" in out
    assert "skipped dynamic-seed0: " in out and "best.pt: no such file" in out
    lines = table.read_text().splitlines()
    assert lines[0] == "run,method,seed,epoch,macro_f1,accuracy,n,excluded" and len(lines) == 4
    result = json.loads(report.read_text())
    assert [r["run"] for r in result["runs"]] == ["baseline-seed0", "baseline-seed1", "periodic-seed0"]
    assert len({r["macro_f1"] for r in result["runs"]}) == 1  # the same weights score the same
    assert result["skipped"][0]["run"] == "dynamic-seed0" and result["runs"][0]["excluded"] == 3

    (runs / "dynamic-seed0" / "checkpoints" / "best.pt").write_bytes(b"truncated")  # a broken file: still a table
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert "| periodic-seed0 |" in out and "dynamic-seed0: " in out and "not a PyTorch checkpoint" in out


def test_a_bn_recalibrated_run_is_its_own_method_not_another_seed(tmp_path, model_file, capsys):
    _run(tmp_path / "runs" / "grid", model_file, "periodic", 0)
    _run(tmp_path / "runs" / "grid-bnrecal", model_file, "periodic", 0, bn_recalibrate=20)
    data = make_folders(tmp_path / "CK", splits=None, classes=CLASSES, per_class=2)
    assert main(["evaluate", str(tmp_path / "runs"), "--data", str(data), "--cache-dir", str(tmp_path / "cache"),
                 "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| grid-bnrecal/periodic-seed0 | periodic+bn-recal | 0 |" in out
    per_method = out.split("| method | macro-F1 | accuracy |")[1]
    assert "| periodic | " in per_method and "| periodic+bn-recal | " in per_method and "(n=2)" not in per_method


def _row(run: str, method: str, seed: int, f1: float) -> dict:
    return {"run": run, "method": method, "seed": seed, "epoch": 20, "macro_f1": f1, "accuracy": f1, "n": 10,
            "excluded": 0}


def test_the_same_seed_of_other_experiments_is_shown_apart_not_pooled():
    from fernoise.evaluate import runs_markdown

    rows = [_row("fer2013/baseline-seed0", "baseline", 0, 0.45), _row("fer2013/periodic-seed0", "periodic", 0, 0.5),
            _row("fer2013/periodic-seed1", "periodic", 1, 0.6), _row("fer2013-38ep/periodic-seed0", "periodic", 0, 0.4)]
    per_method = runs_markdown({"selection": "faces", "runs": rows, "skipped": []}).split("| accuracy |\n|---|")[1]
    assert per_method.splitlines()[1:4] == [
        "| baseline | 0.4500 (n=1) | 0.4500 (n=1) |",
        "| periodic (fer2013) | 0.5500 ± 0.0707 (n=2) | 0.5500 ± 0.0707 (n=2) |",
        "| periodic (fer2013-38ep) | 0.4000 (n=1) | 0.4000 (n=1) |",
    ]
    with pytest.raises(ValueError, match="two runs of method 'periodic' with seed 0: fer2013/periodic-seed0 and "):
        runs_markdown({"selection": "faces", "runs": rows + [_row("fer2013/periodic-copy", "periodic", 0, 0.1)],
                       "skipped": []})


def test_caches_from_before_source_splits_still_tell_a_carved_val_split(tmp_path):
    from fernoise.evaluate import choose_splits

    flat = load_data(str(make_folders(tmp_path / "CK", splits=None, per_class=4)), size=16,
                     cache_dir=str(tmp_path / "cache"), progress=False, quiet=True)
    assert choose_splits(flat, None, "CK")[0] == ["train", "val"]
    del flat.meta["source_splits"]  # an older cache: only its note says that val was carved
    assert choose_splits(flat, None, "CK") == (["train", "val"], "every image, as it has no split folders of its own")
    flat.meta["notes"] = []
    assert choose_splits(flat, None, "CK") == (["val"], "the val split")
