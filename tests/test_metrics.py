"""Metrics agree with scikit-learn, including degenerate label sets."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fernoise.metrics import RunningF1, classification_scores, confusion_matrix

sk = pytest.importorskip("sklearn.metrics")


@st.composite
def label_arrays(draw):
    """(y_true, y_pred, num_classes); often uses only a few of the classes, sometimes just one."""
    k = draw(st.integers(1, 8))
    n = draw(st.integers(1, 60))
    used = draw(st.integers(1, k))  # classes actually drawn from: leaves some absent
    y_true = draw(st.lists(st.integers(0, used - 1), min_size=n, max_size=n))
    mode = draw(st.sampled_from(["random", "same", "constant", "shifted"]))
    if mode == "same":
        y_pred = list(y_true)
    elif mode == "constant":
        y_pred = [draw(st.integers(0, k - 1))] * n
    elif mode == "shifted":  # predictions in classes never seen in y_true
        y_pred = [(v + used) % k for v in y_true]
    else:
        y_pred = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    return np.array(y_true, dtype=np.int64), np.array(y_pred, dtype=np.int64), k


def _names(k: int) -> list[str]:
    return [f"c{i}" for i in range(k)]


@settings(max_examples=300, deadline=None)
@given(label_arrays())
def test_scores_match_sklearn(data):
    y_true, y_pred, k = data
    ours = classification_scores(y_true, y_pred, k, _names(k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's zero-division warnings
        macro = sk.f1_score(y_true, y_pred, average="macro")
        precision, recall, f1, support = sk.precision_recall_fscore_support(
            y_true, y_pred, labels=list(range(k)), zero_division=0
        )
        accuracy = sk.accuracy_score(y_true, y_pred)
        expected_cm = sk.confusion_matrix(y_true, y_pred, labels=list(range(k)))
    assert ours["macro_f1"] == pytest.approx(macro, abs=1e-12)
    assert ours["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    names = _names(k)
    np.testing.assert_allclose([ours["precision"][c] for c in names], precision, atol=1e-12)
    np.testing.assert_allclose([ours["recall"][c] for c in names], recall, atol=1e-12)
    np.testing.assert_allclose([ours["f1"][c] for c in names], f1, atol=1e-12)
    assert [ours["support"][c] for c in names] == support.tolist()
    assert np.array_equal(np.array(ours["confusion"]), expected_cm)
    assert ours["macro_f1_classes"] == [names[i] for i in sorted(set(y_true) | set(y_pred))]


def test_absent_classes_are_left_out_of_the_macro_average():
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 1, 1, 1])
    ours = classification_scores(y_true, y_pred, 7, _names(7))
    assert ours["macro_f1"] == pytest.approx(sk.f1_score(y_true, y_pred, average="macro"))
    # sklearn with labels=range(7) averages the five absent classes in as 0: not what we report.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        padded = sk.f1_score(y_true, y_pred, labels=list(range(7)), average="macro", zero_division=0)
    assert padded == pytest.approx(ours["macro_f1"] * 2 / 7)
    assert ours["macro_f1_classes"] == ["c0", "c1"]
    assert ours["f1"]["c6"] == 0.0 and ours["support"]["c6"] == 0


def test_single_class_perfect():
    ours = classification_scores([2, 2, 2], [2, 2, 2], 3, _names(3))
    assert ours["macro_f1"] == 1.0 and ours["accuracy"] == 1.0


def test_confusion_matrix_accepts_tensors_and_checks_range():
    cm = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([1, 1, 0]), 2)
    assert cm.dtype == np.int64 and cm.tolist() == [[0, 1], [1, 1]]
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="length"):
        confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError, match="no samples"):
        classification_scores([], [], 2, ["a", "b"])


@settings(max_examples=100, deadline=None)
@given(label_arrays(), st.lists(st.integers(0, 60), max_size=5))
def test_running_f1_over_batches_equals_one_shot(data, cuts):
    y_true, y_pred, k = data
    running = RunningF1(k)
    bounds = [0, *sorted(c for c in cuts if c <= len(y_true)), len(y_true)]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        running.update(torch.from_numpy(y_pred[start:stop]), torch.from_numpy(y_true[start:stop]))
    one_shot = classification_scores(y_true, y_pred, k, _names(k))
    assert running.compute() == pytest.approx(one_shot["macro_f1"], abs=1e-12)
    assert running.accuracy() == pytest.approx(one_shot["accuracy"], abs=1e-12)
    assert running.confusion.tolist() == one_shot["confusion"]


def test_running_f1_takes_logits_resets_and_flags_bad_indices():
    running = RunningF1(3)
    assert np.isnan(running.compute())
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0], [0.0, 5.0, 0.0]])
    running.update(logits, torch.tensor([0, 2, 2]))
    assert running.compute() == pytest.approx(sk.f1_score([0, 2, 2], [0, 2, 1], average="macro"))
    running.reset()
    assert running.confusion.sum() == 0
    running.update(torch.tensor([3]), torch.tensor([0]))  # 0*3+3 would alias cell (1, 0)
    with pytest.raises(ValueError, match="outside"):
        running.compute()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_running_f1_on_cuda():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
    running = RunningF1(7)
    for part in np.array_split(np.arange(500), 4):
        running.update(torch.from_numpy(y_pred[part]).cuda(), torch.from_numpy(y_true[part]).cuda())
    assert running.compute() == pytest.approx(sk.f1_score(y_true, y_pred, average="macro"))
