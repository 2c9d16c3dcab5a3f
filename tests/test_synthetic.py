"""The built-in synthetic faces: determinism, the data contract, class balance, label noise, learnability."""
from __future__ import annotations

import numpy as np
import pytest

from fernoise.data.classes import CANONICAL_CLASSES
from fernoise.data.synthetic import (
    CLASS_PRIOR,
    LABEL_NOISE,
    SYNTHETIC_CLASSES,
    make_synthetic,
    render_faces,
    sample_labels,
)

SMALL = {"train": 600, "val": 300, "test": 200}


@pytest.fixture(scope="module")
def small():
    return make_synthetic(SMALL, size=32, seed=7)


def test_classes_are_the_canonical_seven_in_order():
    assert SYNTHETIC_CLASSES == [c for c in CANONICAL_CLASSES if c != "contempt"]
    assert CLASS_PRIOR.shape == (7,) and CLASS_PRIOR.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [32, 48, 64])
def test_render_shapes_and_dtype(size, channels):
    faces = render_faces(np.arange(7).repeat(3), size, channels, np.random.default_rng(0))
    assert faces.shape == (21, size, size, channels) and faces.dtype == np.uint8


def test_render_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="channels"):
        render_faces(np.zeros(2, int), 48, 2, rng)
    with pytest.raises(ValueError, match="labels"):
        render_faces(np.array([0, 7]), 48, 1, rng)
    assert render_faces(np.zeros(0, int), 48, 1, rng).shape == (0, 48, 48, 1)


def test_make_synthetic_follows_the_data_contract(small):
    assert small.classes == SYNTHETIC_CLASSES
    assert (small.size, small.channels) == (32, 1)
    assert set(small.splits) == set(SMALL)
    for name, split in small.splits.items():
        assert split.images.shape == (SMALL[name], 32, 32, 1) and split.images.dtype == np.uint8
        assert split.labels.shape == (SMALL[name],) and split.labels.dtype == np.int64
        assert split.labels.min() >= 0 and split.labels.max() < 7
    train = small.splits["train"].images / 255.0
    assert small.mean == pytest.approx([train.mean()], abs=1e-5)
    assert small.std == pytest.approx([train.std()], abs=1e-5)
    meta = small.meta
    assert meta["source"] == meta["format"] == "synthetic"
    assert meta["seed"] == 7 and meta["split_sizes"] == SMALL
    for name, split in small.splits.items():
        counts = np.bincount(split.labels, minlength=7)
        assert meta["class_counts"][name] == dict(zip(SYNTHETIC_CLASSES, counts.tolist()))
    assert set(meta["label_noise"]["flipped"]) == set(SMALL)
    assert meta["label_noise"]["rate"] == LABEL_NOISE


def test_colour_faces_have_three_distinct_channels():
    data = make_synthetic({"train": 200}, size=32, channels=3, seed=1)
    images = data.splits["train"].images
    assert images.shape == (200, 32, 32, 3) and data.channels == 3
    assert len(data.mean) == len(data.std) == 3
    # Skin and backgrounds are tinted: the channels are not copies of each other.
    assert np.abs(images[..., 0].astype(int) - images[..., 2]).mean() > 10


def _same(a, b) -> bool:
    return a.splits.keys() == b.splits.keys() and all(
        np.array_equal(a.splits[k].images, b.splits[k].images) and np.array_equal(a.splits[k].labels, b.splits[k].labels)
        for k in a.splits
    )


def test_deterministic_in_the_seed(small):
    assert _same(make_synthetic(SMALL, size=32, seed=7), small)
    assert not np.array_equal(make_synthetic(SMALL, size=32, seed=8).splits["val"].images, small.splits["val"].images)


def test_val_does_not_depend_on_the_train_size(small):
    other = make_synthetic({"train": 50, "val": 300}, size=32, seed=7)
    assert np.array_equal(other.splits["val"].images, small.splits["val"].images)
    assert np.array_equal(other.splits["val"].labels, small.splits["val"].labels)
    assert not np.array_equal(other.splits["train"].images, small.splits["train"].images[:50])


def test_make_synthetic_rejects_bad_split_sizes():
    with pytest.raises(ValueError, match="unknown split"):
        make_synthetic({"train": 10, "holdout": 10})
    with pytest.raises(ValueError, match="non-negative"):
        make_synthetic({"train": -1})


def test_class_imbalance_is_affectnet_like():
    clean, _ = sample_labels(10000, np.random.default_rng(0))
    counts = dict(zip(SYNTHETIC_CLASSES, np.bincount(clean, minlength=7)))
    assert np.abs(np.bincount(clean, minlength=7) - CLASS_PRIOR * 10000).max() <= 1  # exact quotas
    order = sorted(counts, key=counts.get, reverse=True)
    assert order[:2] == ["happy", "neutral"] and order[-1] == "disgust"
    assert counts["happy"] > 0.35 * 10000 and counts["disgust"] < 0.04 * 10000


def test_label_noise_fraction():
    n = 50000
    clean, observed = sample_labels(n, np.random.default_rng(3))
    changed = (clean != observed).mean()
    # Resampled uniformly over 7 classes, so 6/7 of the resampled labels change.
    assert changed == pytest.approx(LABEL_NOISE * 6 / 7, abs=0.003)
    assert np.array_equal(sample_labels(n, np.random.default_rng(3), noise=0.0)[1],
                          sample_labels(n, np.random.default_rng(3), noise=0.0)[0])
    data = make_synthetic({"train": 3000}, size=16, seed=0)
    assert data.meta["label_noise"]["flipped"]["train"] / 3000 == pytest.approx(LABEL_NOISE * 6 / 7, abs=0.012)


def test_renders_vary_and_use_the_intensity_range():
    clean, _ = sample_labels(500, np.random.default_rng(0))
    faces = render_faces(clean, 48, 1, np.random.default_rng(0)).astype(np.float64)
    assert faces.std() > 40
    assert np.percentile(faces, 1) < 30 and np.percentile(faces, 99) > 225
    per_image = faces.reshape(len(faces), -1)
    assert per_image.std(axis=1).min() > 10  # no blank images
    assert np.ptp(per_image, axis=1).min() > 100
    assert per_image.mean(axis=1).std() > 10  # exposure, skin and background vary between faces


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_classes_are_learnable_but_not_trivially():
    """A linear classifier on pixels beats chance (1/7) by far, yet stays far from perfect."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    rng = np.random.default_rng(0)
    y_train, _ = sample_labels(2000, rng)
    y_val, _ = sample_labels(1000, rng)

    def features(labels: np.ndarray) -> np.ndarray:
        faces = render_faces(labels, 48, 1, rng)[..., 0].astype(np.float32) / 255.0
        x = faces.reshape(len(faces), 24, 2, 24, 2).mean(axis=(2, 4)).reshape(len(faces), -1)
        return (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-3)

    clf = LogisticRegression(C=0.03, max_iter=200, class_weight="balanced").fit(features(y_train), y_train)
    predicted = clf.predict(features(y_val))
    assert balanced_accuracy_score(y_val, predicted) > 0.25
    assert accuracy_score(y_val, predicted) < 0.95
