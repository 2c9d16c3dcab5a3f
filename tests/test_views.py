"""Test-time views: which views, how they are averaged, and how they are recorded and described."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fernoise.config import ConfigError, TrainConfig
from fernoise.data import Augmenter
from fernoise.evaluate import predict_arrays
from fernoise.models import build_model
from fernoise.views import Views, shifted, zoomed


def test_test_time_views_are_the_ones_named():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    fill = torch.full((1, 1, 1), -9.0)
    assert len(Views().apply(x, fill)) == 1 and len(Views(flip=True).apply(x, fill)) == 2
    views = Views(flip=True, shift=1).apply(x, fill)
    assert len(views) == 10 and len(Views(shift=1).apply(x, fill)) == 5
    assert torch.equal(views[1], x.flip(3))
    right = shifted(x, 1, 0, fill)  # moved one pixel right: the left column is uncovered
    assert torch.equal(right[:, :, :, 1:], x[:, :, :, :-1]) and (right[:, :, :, 0] == -9).all()
    down = shifted(x, 0, -1, fill)  # dy -1: moved up, the bottom row uncovered
    assert torch.equal(down[:, :, :-1], x[:, :, 1:]) and (down[:, :, -1] == -9).all()
    assert any(torch.equal(v, shifted(x.flip(3), 0, 1, fill)) for v in views)


def test_prediction_averages_the_softmax_of_every_view():
    torch.manual_seed(0)
    model = build_model(num_classes=7, in_channels=1, stem="half", width=8).eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 1), dtype=np.uint8)
    augment = Augmenter("none", 16, 1, (0.5,), (0.25,))
    many = Views(flip=True, shift=2, zoom=0.1)
    got = predict_arrays(model, images, augment, torch.device("cpu"), views=many)
    inputs = augment(torch.from_numpy(images).permute(0, 3, 1, 2), train=False)
    views = many.apply(inputs, augment.normalize_black())
    assert len(views) == len(many) == 14
    with torch.no_grad():
        expected = torch.stack([model(v).softmax(1) for v in views]).mean(0).log()
        assert torch.allclose(got, expected, atol=1e-6)
        plain = predict_arrays(model, images, augment, torch.device("cpu"))
        assert torch.allclose(plain, model(inputs), atol=1e-6)  # one view: the model's own logits, not a log-softmax
    assert not torch.allclose(got, plain, atol=1e-3)


def test_zoomed_views_bring_the_centre_closer_or_show_a_black_border():
    x = torch.zeros(2, 1, 8, 8)
    x[..., 2:6, 2:6] = 1.0  # a bright 4x4 centre
    fill = torch.full((1, 1, 1), -1.0)
    assert torch.allclose(zoomed(x, 1.0, fill), x, atol=1e-6)
    closer = zoomed(x, 0.5, fill)  # half the field of view: the centre fills all but the outermost ring
    assert torch.allclose(closer[..., 1:7, 1:7], torch.ones(2, 1, 6, 6), atol=1e-6) and closer.mean() > x.mean()
    farther = zoomed(x, 2.0, fill)  # twice the field: the centre shrinks to 2x2, the border is black
    assert torch.allclose(farther[..., 3:5, 3:5], torch.ones(2, 1, 2, 2), atol=1e-6)
    assert (farther[..., 0, :] == -1).all() and (farther[..., :, 0] == -1).all()
    views = Views(flip=True, zoom=0.1).apply(x, fill)
    assert len(views) == 6 and len(Views(zoom=0.1).apply(x, fill)) == 3
    assert len(Views(flip=True, shift=1, zoom=0.1).apply(x, fill)) == len(Views(flip=True, shift=1, zoom=0.1)) == 14
    assert torch.equal(views[2], zoomed(x, 0.9, fill)) and torch.equal(views[5], zoomed(x.flip(3), 1.1, fill))
    with pytest.raises(ConfigError, match="tta_zoom"):
        TrainConfig(tta_zoom=1.0)
    with pytest.raises(ValueError, match="zoom must be in"):
        Views(zoom=1.0)
    with pytest.raises(ValueError, match="shift must be"):
        Views(shift=-1)


def test_views_come_from_a_config_or_a_record_and_are_described():
    cfg = TrainConfig(tta_flip=True, tta_zoom=0.1)
    views = Views.of(cfg)
    assert views == Views.of(cfg.to_dict()) == Views(flip=True, zoom=0.1)
    assert Views.of({}) == Views()  # a checkpoint's config without tta keys: one view
    assert Views.from_record(views.record()) == views and views.record() == {"flip": True, "shift": 0, "zoom": 0.1}
    assert views.words() == "6 views (the face, its mirror image, zoomed by ±0.1)"
    assert Views().words() == "1 view (the face)"
    assert Views(shift=2).words() == "5 views (the face, shifted by 2 pixels)"
