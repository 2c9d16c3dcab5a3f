"""Test-time views: transformed copies of each face whose predictions are averaged.

The views of a batch (:class:`Views`) are the faces themselves; with ``flip`` their mirror images
too; with ``zoom`` each of those also zoomed in and out (fields of view ``1 - zoom`` and ``1 + zoom``,
the ends of the ``light`` training augmentation's zoom range); with ``shift`` the unzoomed ones also
moved ``shift`` pixels left, right, up and down. So 1 or 2 views, times 3 with zoom, plus 4 or 8 with
shift. What a move uncovers is black, as the training augmentation's shifts bring in. The views'
predictions are averaged as probabilities (mean softmax), never as logits.

One ``Views`` value travels from the configuration (``tta_flip``, ``tta_shift``, ``tta_zoom``) or the
command line to scoring, and is recorded in evaluation JSON as ``views``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

Logits = Callable[[torch.Tensor], torch.Tensor]


def shifted(inputs: torch.Tensor, dx: int, dy: int, fill: torch.Tensor) -> torch.Tensor:
    """``inputs`` (N, C, H, W) moved ``dx`` pixels right and ``dy`` down; uncovered pixels take ``fill`` (C, 1, 1)."""
    n, c, h, w = inputs.shape
    pad = max(abs(dx), abs(dy))
    canvas = fill.to(inputs.dtype).expand(n, c, h + 2 * pad, w + 2 * pad).clone()
    canvas[:, :, pad:pad + h, pad:pad + w] = inputs
    return canvas[:, :, pad - dy:pad - dy + h, pad - dx:pad - dx + w]


def zoomed(inputs: torch.Tensor, field: float, fill: torch.Tensor) -> torch.Tensor:
    """``inputs`` (N, C, H, W) resampled to show ``field`` times the image side (<1 zooms in), about the
    centre, bilinearly as the training augmentation's zoom; what a zoom-out uncovers takes ``fill`` (C, 1, 1)."""
    n, c, h, w = inputs.shape
    theta = torch.tensor([[field, 0.0, 0.0], [0.0, field, 0.0]], dtype=inputs.dtype, device=inputs.device)
    grid = nn.functional.affine_grid(theta.expand(n, 2, 3), [n, c, h, w], align_corners=False)
    fill = fill.to(inputs.device, inputs.dtype)
    return nn.functional.grid_sample(inputs - fill, grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False) + fill


@dataclass(frozen=True)
class Views:
    """Which test-time views a scoring averages (module docstring); ``Views()`` is the face alone."""

    flip: bool = False
    shift: int = 0
    zoom: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.zoom < 1:
            raise ValueError(f"test-time zoom must be in [0, 1) (the zoomed-in view shows 1 - zoom), got {self.zoom}")
        if self.shift < 0:
            raise ValueError(f"test-time shift must be a number of pixels >= 0, got {self.shift}")

    @classmethod
    def of(cls, config: Any) -> Views:
        """The views a run configuration (or its dict, as checkpoints keep it) names with ``tta_*``."""
        get = config.get if isinstance(config, Mapping) else lambda key: getattr(config, key, None)
        return cls(bool(get("tta_flip")), int(get("tta_shift") or 0), float(get("tta_zoom") or 0.0))

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Views:
        """The views an evaluation JSON recorded (:meth:`record`); missing keys are off."""
        return cls(bool(record.get("flip")), int(record.get("shift") or 0), float(record.get("zoom") or 0.0))

    def record(self) -> dict[str, Any]:
        """As evaluation JSON records them (``views``)."""
        return {"flip": self.flip, "shift": self.shift, "zoom": self.zoom}

    def __len__(self) -> int:
        plain = 2 if self.flip else 1
        return plain * (3 if self.zoom else 1) + plain * (4 if self.shift else 0)

    def words(self) -> str:
        """For reports, e.g. ``6 views (the face, its mirror image, zoomed by ±0.1)``."""
        parts = ["the face"] + (["its mirror image"] if self.flip else [])
        parts += ([f"zoomed by ±{self.zoom:g}"] if self.zoom else []) + ([f"shifted by {self.shift} pixels"]
                                                                          if self.shift else [])
        return f"{len(self)} view{'s' if len(self) > 1 else ''} ({', '.join(parts)})"

    def apply(self, inputs: torch.Tensor, fill: torch.Tensor) -> list[torch.Tensor]:
        """The views of a normalised batch ``inputs`` (N, C, H, W), itself first; ``fill`` (C, 1, 1) is black."""
        views = [inputs, inputs.flip(3)] if self.flip else [inputs]
        plain = list(views)
        if self.zoom:
            views += [zoomed(view, field, fill) for view in plain for field in (1 - self.zoom, 1 + self.zoom)]
        if self.shift:
            moves = ((self.shift, 0), (-self.shift, 0), (0, self.shift), (0, -self.shift))
            views += [shifted(view, dx, dy, fill) for view in plain for dx, dy in moves]
        return views

    def probabilities(self, logits_of: Logits, inputs: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """The views' mean softmax, in float32, of the model ``logits_of`` (a module or an ONNX session's run)."""
        return torch.stack([logits_of(view).float().softmax(1) for view in self.apply(inputs, fill)]).mean(0)

    def logits(self, logits_of: Logits, inputs: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """The model's own logits with one view; with more, the log of their mean softmax."""
        if len(self) == 1:
            return logits_of(inputs)
        return self.probabilities(logits_of, inputs, fill).log()
