"""BatchNorm utilities: clean running statistics after noisy training, and folding for inference."""
from __future__ import annotations

import itertools
from typing import Any, Iterable

import torch
from torch import nn

from fernoise.models import BasicBlock, ResNet

__all__ = ["recalibrate_batchnorm", "recalibrate_on_images", "fold_batchnorm"]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Re-estimate every BatchNorm's running statistics from clean forward passes of ``batches``.

    During noisy training steps the BatchNorm layers after an injection point update
    their running statistics with noisy features, and evaluation normalises with them.
    Here the statistics are reset and recomputed as the plain average over the given
    batches (``momentum=None``), with all noise, dropout and everything else but the
    BatchNorm layers in eval mode. Every module's mode and every momentum are restored afterwards,
    also when a forward pass raises (the statistics are then those of the batches seen so far).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes, momenta = [(m, m.training) for m in model.modules()], [bn.momentum for bn in norms]
    try:
        model.eval()
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None
            bn.training = True  # not .train(): inject_noise puts the noise inside the BN module
        for inputs in batches:
            model(inputs)
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        for module, training in modes:
            module.training = training


def recalibrate_on_images(model: nn.Module, images: Any, labels: Any, augment: Any, batches: int, batch_size: int,
                          generator: torch.Generator, **batching: Any) -> None:
    """:func:`recalibrate_batchnorm` on the first ``batches`` shuffled batches of uint8 ``images``.

    ``augment`` is the run's :class:`~fernoise.data.Augmenter` in its clean (eval) form; ``batching``
    goes to :func:`~fernoise.data.iterate_batches` (device, DDP rank and world size).
    """
    from fernoise.data import iterate_batches

    stream = iterate_batches(images, labels, batch_size, shuffle=True, generator=generator, **batching)
    recalibrate_batchnorm(model, (augment(inputs, train=False) for inputs, _ in itertools.islice(stream, batches)))


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each BatchNorm of fernoise's ResNet into the convolution before it, for inference.

    Only valid in eval mode (BatchNorm then is a fixed affine map); the injection points
    sit after the BatchNorm and keep working on the folded output. Other networks are
    returned unchanged. Works in place and returns ``model`` in eval mode.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    if not isinstance(model, ResNet):
        return model
    model.conv1, model.bn1 = fuse_conv_bn_eval(model.conv1, model.bn1), nn.Identity()
    for module in model.modules():
        if isinstance(module, BasicBlock):
            module.conv1, module.bn1 = fuse_conv_bn_eval(module.conv1, module.bn1), nn.Identity()
            module.conv2, module.bn2 = fuse_conv_bn_eval(module.conv2, module.bn2), nn.Identity()
            if module.downsample is not None:
                module.downsample = fuse_conv_bn_eval(module.downsample[0], module.downsample[1])
    return model
