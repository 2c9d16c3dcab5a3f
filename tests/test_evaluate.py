"""Scoring arrays whose channels differ from the model's (cross-data-set evaluation)."""
from __future__ import annotations

import numpy as np
import torch

from fernoise.data import Augmenter
from fernoise.evaluate import predict_arrays
from fernoise.models import build_model


def test_grey_faces_score_on_a_colour_model_as_their_rgb_copies():
    torch.manual_seed(0)
    model = build_model("resnet18", 7, in_channels=3).eval()
    grey = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 1), dtype=np.uint8)
    augment = Augmenter("none", 32, 3, [0.5] * 3, [0.25] * 3)
    as_grey = predict_arrays(model, grey, augment, torch.device("cpu"))
    as_rgb = predict_arrays(model, np.repeat(grey, 3, axis=3), augment, torch.device("cpu"))
    assert as_grey.shape == (6, 7)
    assert torch.allclose(as_grey, as_rgb, atol=1e-5)
