"""Batch augmentation on the training device, and normalisation.

Whole uint8 batches are augmented at once, on whatever device they are on: geometry
(crop/zoom, translation, rotation, flip) is one ``affine_grid`` + ``grid_sample`` per
batch, photometric changes and erasing are per-sample broadcasts. All randomness is a
handful of numbers per sample drawn from the caller's ``torch.Generator`` (on the
generator's device), so results are reproducible and identical on CPU and GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Strength:
    """How far the ``fer``-style presets move an image: one affine warp, photometry, erasing."""

    fov: tuple[float, float]  # sampled field of view relative to the image side (<1 zooms in)
    aspect: tuple[float, float]
    max_shift: float  # extra translation in normalised units (1.0 = half the image)
    max_rotation_deg: float
    brightness: tuple[float, float]
    contrast: tuple[float, float]
    erase_prob: float
    erase_area: tuple[float, float] = (0.02, 0.15)
    erase_aspect: tuple[float, float] = (0.3, 3.3)


# ``fer``, in the spirit of common FER recipes (RandomResizedCrop, RandomAffine, ColorJitter,
# RandomErasing); the paper itself names no augmentation beyond flips. ``light`` keeps only a
# small zoom and shift (about 2 px) with the flip, as airbench does for short CIFAR-10 budgets:
# a network trained for few epochs underfits rather than overfits.
STRENGTHS: dict[str, Strength] = {
    "fer": Strength(fov=(0.85, 1.15), aspect=(0.9, 1.1), max_shift=0.1, max_rotation_deg=10.0,
                    brightness=(0.8, 1.2), contrast=(0.8, 1.2), erase_prob=0.25),
    "light": Strength(fov=(0.9, 1.1), aspect=(1.0, 1.0), max_shift=0.1, max_rotation_deg=0.0,
                      brightness=(1.0, 1.0), contrast=(1.0, 1.0), erase_prob=0.0),
}
PRESETS: tuple[str, ...] = ("none", "paper", *STRENGTHS)
# ``paper`` with a training crop: the crop's place is the only move besides the flip.
_FLIP_ONLY = Strength(fov=(1.0, 1.0), aspect=(1.0, 1.0), max_shift=0.0, max_rotation_deg=0.0,
                      brightness=(1.0, 1.0), contrast=(1.0, 1.0), erase_prob=0.0)
_LUMA = (0.299, 0.587, 0.114)


def _per_channel(values: Sequence[float] | torch.Tensor, channels: int) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ValueError(f"expected 1 or {channels} per-channel values, got {t.numel()}")
    return t.reshape(1, channels, 1, 1).clone()


def _to_float(x: torch.Tensor, size: int | None, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float in [0, 1] with the wanted channels and size (None: as is)."""
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"expected a uint8 batch (N, C, H, W), got {x.dtype} with shape {tuple(x.shape)}")
    out = x.float().div_(255.0)
    if out.shape[1] != channels:
        if out.shape[1] == 1:
            out = out.expand(-1, channels, -1, -1).contiguous()
        elif channels == 1:
            out = (out * torch.tensor(_LUMA, device=out.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            raise ValueError(f"cannot turn {out.shape[1]} channels into {channels}")
    if size is not None and out.shape[-2:] != (size, size):
        out = F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out


def normalize(x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """The eval/predict path: uint8 (N, C, H, W) -> float32 ``(x / 255 - mean) / std``."""
    channels = x.shape[1]
    m = _per_channel(mean, channels).to(x.device)
    s = _per_channel(std, channels).to(x.device)
    return _to_float(x, None, channels).sub_(m).div_(s)


def _lerp(bounds: tuple[float, float], u: torch.Tensor) -> torch.Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * u


class Augmenter(torch.nn.Module):
    """``aug(x_uint8, generator=None, train=True)`` -> normalised float32 (N, channels, size, size).

    With ``train=False`` (or preset ``none``) it only resizes and normalises. With ``crop``, training
    batches are random ``crop`` x ``crop`` windows at the image's own scale (placed anywhere in it,
    after the preset's zoom and shift), while evaluation sees the whole face: a cheaper step and a
    translation augmentation at once, as in the common FER2013 recipes (40 px crops of 48 px faces).
    """

    def __init__(self, preset: str = "paper", size: int = 48, channels: int = 1,
                 mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.25,), crop: int | None = None) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"unknown augmentation preset {preset!r}; presets: {', '.join(PRESETS)}")
        if crop is not None and not 0 < crop <= size:
            raise ValueError(f"training crop of {crop} px does not fit in {size} px images")
        if crop is not None and preset == "none":
            raise ValueError("a training crop is an augmentation: it needs a preset other than none")
        self.preset, self.size, self.channels, self.crop = preset, size, channels, crop
        self.register_buffer("mean", _per_channel(mean, channels), persistent=False)
        self.register_buffer("std", _per_channel(std, channels), persistent=False)

    def extra_repr(self) -> str:
        return f"preset={self.preset!r}, size={self.size}, channels={self.channels}, crop={self.crop}"

    def normalize_black(self) -> torch.Tensor:
        """A black pixel after normalisation, (channels, 1, 1): what the geometric augmentation's moves uncover."""
        return (-self.mean / self.std).reshape(self.channels, 1, 1)

    @staticmethod
    def _uniform(n: int, k: int, generator: torch.Generator | None, device: torch.device) -> tuple[torch.Tensor, ...]:
        """``k`` uniform numbers per sample, drawn on the generator's device, moved to the batch's."""
        source = generator.device if generator is not None else torch.device("cpu")
        return torch.rand(n, k, generator=generator, device=source).to(device).unbind(1)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, train: bool = True) -> torch.Tensor:
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        if not train or self.preset == "none":
            return _to_float(x, self.size, self.channels).sub_(mean).div_(std)
        if self.preset == "paper" and self.crop is None:
            out = _to_float(x, self.size, self.channels)
            (u,) = self._uniform(x.shape[0], 1, generator, x.device)
            out = torch.where((u < 0.5).view(-1, 1, 1, 1), out.flip(3), out)
            return out.sub_(mean).div_(std)
        return self._warp(x, STRENGTHS.get(self.preset, _FLIP_ONLY), generator, mean, std)

    def _warp(self, x: torch.Tensor, k: Strength, generator: torch.Generator | None, mean: torch.Tensor,
              std: torch.Tensor) -> torch.Tensor:
        n, device = x.shape[0], x.device
        u = self._uniform(n, 13, generator, device)
        side = self.crop or self.size
        out = _to_float(x, None, self.channels)  # grid_sample below resamples to side x side
        # geometry: output pixel -> input location, A = R(angle) @ diag(flip * sx, sy), plus shift
        fov = _lerp(k.fov, u[0]) * (side / self.size)
        ratio = torch.exp(_lerp((math.log(k.aspect[0]), math.log(k.aspect[1])), u[1])).sqrt()
        sx, sy = fov * ratio, fov / ratio
        angle = _lerp((-k.max_rotation_deg, k.max_rotation_deg), u[2]) * (math.pi / 180)
        flip = torch.where(u[3] < 0.5, -1.0, 1.0)
        tx = _lerp((-1.0, 1.0), u[4]) * ((1 - sx).clamp(min=0) + k.max_shift)
        ty = _lerp((-1.0, 1.0), u[5]) * ((1 - sy).clamp(min=0) + k.max_shift)
        if k is _FLIP_ONLY:  # whole-pixel crops: the window's pixels are the image's, not interpolated
            margin = (self.size - side) / 2
            tx, ty = (((t * self.size / 2 + margin).round() - margin) * (2 / self.size) for t in (tx, ty))
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([
            torch.stack([cos * sx * flip, -sin * sy, tx], 1),
            torch.stack([sin * sx * flip, cos * sy, ty], 1),
        ], 1)
        grid = F.affine_grid(theta, [n, out.shape[1], side, side], align_corners=False)
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # photometry: brightness, then contrast around each image's mean (skipped where a preset has none)
        if k.brightness != (1.0, 1.0) or k.contrast != (1.0, 1.0):
            out = out * _lerp(k.brightness, u[6]).view(-1, 1, 1, 1)
            centre = out.mean(dim=(1, 2, 3), keepdim=True)
            out = ((out - centre) * _lerp(k.contrast, u[7]).view(-1, 1, 1, 1) + centre).clamp_(0, 1)
        out = out.sub_(mean).div_(std)
        if k.erase_prob == 0:
            return out
        # random erasing: one rectangle (set to the mean, i.e. 0) in a fraction of the images
        area = _lerp(k.erase_area, u[8])
        aspect = torch.exp(_lerp((math.log(k.erase_aspect[0]), math.log(k.erase_aspect[1])), u[9]))
        h = (torch.sqrt(area * aspect) * side).clamp(max=side)
        w = (torch.sqrt(area / aspect) * side).clamp(max=side)
        y0 = u[10] * (side - h)
        x0 = u[11] * (side - w)
        pos = torch.arange(side, device=device, dtype=torch.float32)
        rows = (pos.view(1, -1) >= y0.view(-1, 1)) & (pos.view(1, -1) < (y0 + h).view(-1, 1))
        cols = (pos.view(1, -1) >= x0.view(-1, 1)) & (pos.view(1, -1) < (x0 + w).view(-1, 1))
        erase = rows[:, :, None] & cols[:, None, :] & (u[12] < k.erase_prob).view(-1, 1, 1)
        return out.masked_fill_(erase[:, None], 0.0)
