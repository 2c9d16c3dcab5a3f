"""Integration on the real FER2013 (skipped when the archive is absent): train, then evaluate."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cli_runner import fernoise

pytestmark = pytest.mark.realdata


def _uniform_guess_macro_f1(labels: np.ndarray, num_classes: int) -> float:
    """Expected macro-F1 of guessing classes uniformly at random: per class 2pq/(p+q), q = 1/K."""
    p = np.bincount(labels, minlength=num_classes) / len(labels)
    q = 1.0 / num_classes
    return float(np.mean(2 * p * q / (p + q)))


def test_two_epochs_on_a_fer2013_subset_beat_chance_and_evaluate_agrees(fer2013_archive, tmp_path):
    cache = tmp_path / "cache"
    run = tmp_path / "run"
    fernoise("train", "--data", str(fer2013_archive), "--cache-dir", str(cache), "--train-limit", "4000",
             "--epochs", "2", "--lr", "1e-3", "--out", str(run), "--quiet")
    summary = json.loads((run / "summary.json").read_text())

    from fernoise.data import load_data

    val = load_data(str(fer2013_archive), cache_dir=str(cache), quiet=True, progress=False).splits["val"]
    assert len(val.labels) == 3589
    chance = _uniform_guess_macro_f1(np.asarray(val.labels), 7)
    assert summary["best_val_f1"] > chance + 0.05, (summary["best_val_f1"], chance)

    report = tmp_path / "eval.json"
    fernoise("evaluate", str(run / "checkpoints" / "best.pt"), "--data", str(fer2013_archive),
             "--cache-dir", str(cache), "--json", str(report), "--quiet")
    scores = json.loads(report.read_text())
    assert scores["n"] == 3589 and scores["excluded_total"] == 0
    assert scores["macro_f1"] == pytest.approx(summary["best_val_f1"], abs=1e-9)
