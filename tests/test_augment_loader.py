"""Batch augmentation (determinism, geometry, eval path) and batch iteration (shards, balance)."""
from __future__ import annotations


import dataclasses

import numpy as np
import pytest
import torch

import fernoise.data.augment as augment
from fernoise.data import Augmenter, class_weights, iterate_batches, normalize, num_batches

MEAN, STD = (0.5,), (0.25,)


def batch(n: int = 64, channels: int = 1, size: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("preset", ["none", "paper", "fer"])
def test_presets_shape_dtype_range_and_determinism(preset):
    aug = Augmenter(preset, size=48, channels=1, mean=MEAN, std=STD)
    x = batch()
    a, b = aug(x, generator=seeded(1)), aug(x, generator=seeded(1))
    assert a.shape == (64, 1, 48, 48) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b)
    lo, hi = (0 - MEAN[0]) / STD[0], (1 - MEAN[0]) / STD[0]
    assert a.min() >= lo - 1e-5 and a.max() <= hi + 1e-5
    if preset != "none":
        assert not torch.equal(a, aug(x, generator=seeded(2)))


@pytest.mark.parametrize("preset", ["none", "paper", "fer"])
def test_eval_path_is_normalize_only(preset):
    aug = Augmenter(preset, size=48, channels=1, mean=MEAN, std=STD)
    x = batch(8)
    expected = (x.float() / 255 - 0.5) / 0.25
    assert torch.allclose(aug(x, train=False), expected, atol=1e-6)
    assert torch.allclose(normalize(x, MEAN, STD), expected, atol=1e-6)


def _is_flip_or_not(out: torch.Tensor, x: torch.Tensor, atol: float) -> tuple[torch.Tensor, torch.Tensor]:
    plain = normalize(x, MEAN, STD)
    same = (out - plain).abs().flatten(1).amax(1) <= atol
    flipped = (out - plain.flip(3)).abs().flatten(1).amax(1) <= atol
    return same, flipped


def test_paper_flip_actually_flips():
    x = batch(64)
    same, flipped = _is_flip_or_not(Augmenter("paper", 48, 1, MEAN, STD)(x, generator=seeded(0)), x, 1e-6)
    assert (same ^ flipped).all() and 16 < int(flipped.sum()) < 48


def _set_strength(monkeypatch, **changes) -> None:
    monkeypatch.setitem(augment.STRENGTHS, "fer", dataclasses.replace(augment.STRENGTHS["fer"], **changes))


def test_fer_affine_is_exact_when_randomness_is_switched_off(monkeypatch):
    _set_strength(monkeypatch, fov=(1.0, 1.0), aspect=(1.0, 1.0), max_shift=0.0, max_rotation_deg=0.0,
                  brightness=(1.0, 1.0), contrast=(1.0, 1.0), erase_prob=0.0)
    x = batch(64)
    same, flipped = _is_flip_or_not(Augmenter("fer", 48, 1, MEAN, STD)(x, generator=seeded(0)), x, 1e-4)
    assert (same ^ flipped).all() and 16 < int(flipped.sum()) < 48


def test_fer_random_erasing_blanks_a_rectangle(monkeypatch):
    _set_strength(monkeypatch, fov=(1.0, 1.0), max_shift=0.0, max_rotation_deg=0.0, erase_prob=1.0)
    x = torch.full((32, 1, 48, 48), 255, dtype=torch.uint8)  # white: erased pixels are the only zeros
    out = Augmenter("fer", 48, 1, MEAN, STD)(x, generator=seeded(0))
    erased = (out == 0).float().mean(dim=(1, 2, 3))
    assert (erased > 0.005).all() and (erased < 0.2).all()
    rows, cols = (out[0, 0] == 0).nonzero().unbind(1)
    assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == int((out[0, 0] == 0).sum())


def test_fer_changes_geometry_and_photometry():
    x = batch(64)
    out = Augmenter("fer", 48, 1, MEAN, STD)(x, generator=seeded(0))
    same, flipped = _is_flip_or_not(out, x, 1e-3)
    assert not (same | flipped).any()


def test_light_moves_pixels_but_keeps_brightness_and_erases_nothing():
    x = torch.full((64, 1, 48, 48), 200, dtype=torch.uint8)
    x[:, :, 16:32, 16:32] = 40  # a dark square: its position shows the shift, the bright centre-free area the photometry
    out = Augmenter("light", 48, 1, MEAN, STD)(x, generator=seeded(0))
    bright = (200 / 255 - MEAN[0]) / STD[0]
    dark_at = [(img[0] < 0).nonzero().float().mean(0) for img in out]
    assert len({tuple(p.round().tolist()) for p in dark_at}) > 10  # the square lands in many places
    # away from the square and the uncovered borders the value is untouched: no brightness or contrast change
    assert torch.isclose(out[:, 0, 3, 24], torch.tensor(bright), atol=1e-4).float().mean() > 0.9
    # no erased rectangle: nothing is set to exactly 0 (the mean) inside the image
    assert not (out[:, :, 8:40, 8:40] == 0).any()
    fer = Augmenter("fer", 48, 1, MEAN, STD)(x, generator=seeded(0))
    assert not torch.isclose(fer[:, 0, 3, 24], torch.tensor(bright), atol=1e-4).all()


def test_paper_crop_trains_on_whole_pixel_windows_and_evaluates_on_the_whole_face():
    x = batch(64, 1, 48)
    aug = Augmenter("paper", 48, 1, (0.0,), (1.0,), crop=40)
    out = aug(x, generator=seeded(0))
    assert out.shape == (64, 1, 40, 40)
    assert aug(x, train=False).shape == (64, 1, 48, 48)
    image = x.float() / 255
    places, flips = set(), 0
    for i in range(64):
        windows = [(r, c, flip) for r in range(9) for c in range(9) for flip in (False, True)
                   if torch.allclose(out[i, 0], image[i, 0, r:r + 40, c:c + 40].flip(-1) if flip
                                     else image[i, 0, r:r + 40, c:c + 40], atol=1e-5)]
        assert windows, f"sample {i} is not a 40x40 window of its image"
        places.add(windows[0][:2])
        flips += windows[0][2]
    assert len(places) > 20 and 16 < flips < 48  # windows all over the face, about half of them mirrored


def test_crop_keeps_the_presets_moves_at_the_images_scale():
    x = torch.full((64, 1, 48, 48), 200, dtype=torch.uint8)
    x[:, :, 20:28, 20:28] = 40  # an 8 px dark square: its size in the crop shows the scale
    out = Augmenter("light", 48, 1, MEAN, STD, crop=40)(x, generator=seeded(0))
    assert out.shape == (64, 1, 40, 40)
    dark = (40 / 255 - MEAN[0]) / STD[0]  # the uncovered border is black, darker still
    area = ((out[:, 0] - dark).abs() < 0.3).flatten(1).sum(1).float()
    assert 40 < area.mean() < 80  # about 8 x 8 pixels (zoom 0.9-1.1), not 8 x 8 scaled by 40/48 or 48/40
    with pytest.raises(ValueError, match="does not fit"):
        Augmenter("light", 48, 1, crop=56)
    with pytest.raises(ValueError, match="preset other than none"):
        Augmenter("none", 48, 1, crop=40)


def test_channels_and_size_are_adapted():
    out = Augmenter("fer", size=32, channels=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))(batch(4, 1, 48))
    assert out.shape == (4, 3, 32, 32)
    out = Augmenter("paper", size=32, channels=1)(batch(4, 3, 64))
    assert out.shape == (4, 1, 32, 32)
    with pytest.raises(ValueError, match="uint8"):
        Augmenter("paper")(torch.zeros(2, 1, 48, 48))
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        Augmenter("heavy")


# --------------------------------------------------------------------------- loader


def indexed_arrays(n: int, num_classes: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Images that carry their own index (two pixels), labels = index mod num_classes."""
    images = np.zeros((n, 2, 2, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) // 256
    images[:, 0, 1, 0] = np.arange(n) % 256
    return images, (np.arange(n) % num_classes).astype(np.int64)


def decode_index(x: torch.Tensor) -> np.ndarray:
    return (x[:, 0, 0, 0].long() * 256 + x[:, 0, 0, 1].long()).numpy()


@pytest.mark.parametrize("n, world_size, batch_size", [(103, 4, 8), (64, 2, 16), (5, 4, 2), (97, 3, 97)])
def test_ddp_shards_are_disjoint_cover_the_epoch_and_have_equal_length(n, world_size, batch_size):
    images, labels = indexed_arrays(n)
    seen, lengths = [], []
    for rank in range(world_size):
        batches = list(iterate_batches(images, labels, batch_size, generator=seeded(7), rank=rank,
                                       world_size=world_size))
        lengths.append(len(batches))
        index = np.concatenate([decode_index(x) for x, _ in batches])
        for x, y in batches:
            assert x.dtype == torch.uint8 and x.shape[1:] == (1, 2, 2) and y.dtype == torch.int64
            assert np.array_equal(y.numpy(), decode_index(x) % 7)  # labels stay with their images
            assert np.all(np.diff(decode_index(x)) >= 0)  # sorted within a batch for memmap locality
        seen.append(set(index.tolist()))
    assert len(set(lengths)) == 1 and lengths[0] == num_batches(n, batch_size, world_size=world_size)
    assert set().union(*seen) == set(range(n))
    assert sum(len(s) for s in seen) == n  # pairwise disjoint


def test_order_is_deterministic_and_shuffled():
    images, labels = indexed_arrays(50)

    def order(**kw):
        return np.concatenate([decode_index(x) for x, _ in iterate_batches(images, labels, 50, **kw)])

    assert np.array_equal(order(generator=seeded(3)), order(generator=seeded(3)))
    assert np.array_equal(order(shuffle=False), np.arange(50))
    first = [decode_index(x) for x, _ in iterate_batches(images, labels, 10, generator=seeded(3))]
    assert not np.array_equal(np.concatenate(first), np.arange(50))


def test_drop_last_and_num_batches():
    images, labels = indexed_arrays(50)
    assert num_batches(50, 16) == 4 and num_batches(50, 16, drop_last=True) == 3
    assert num_batches(50, 16, world_size=2) == 2
    sizes = [len(y) for _, y in iterate_batches(images, labels, 16, drop_last=True)]
    assert sizes == [16, 16, 16]


def test_balanced_sampler_is_roughly_balanced(tmp_path):
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10, dtype=np.int64)
    images = np.zeros((1000, 1, 1, 1), dtype=np.uint8)
    path = tmp_path / "images.npy"
    np.save(path, images)
    mapped = np.load(path, mmap_mode="r")
    drawn = np.concatenate([y.numpy() for _, y in iterate_batches(mapped, labels, 64, balanced=True,
                                                                   generator=seeded(0))])
    assert len(drawn) == 1000
    share = np.bincount(drawn, minlength=3) / 1000
    assert np.all(np.abs(share - 1 / 3) < 0.06)


def test_class_weights():
    labels = np.array([0] * 10 + [1] * 30 + [3] * 60)
    w = class_weights(labels, 4)
    assert w.dtype == torch.float32 and w[2] == 0
    present = w[[0, 1, 3]]
    assert present.mean().item() == pytest.approx(1.0)
    assert w[0] / w[1] == pytest.approx(3.0) and w[1] / w[3] == pytest.approx(2.0)
    assert torch.allclose(class_weights(torch.tensor([0, 1, 2]), 3), torch.ones(3))
