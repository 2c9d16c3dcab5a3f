"""fernoise's ResNet with visible noise-injection points, and ``build_model`` for it and for other CNNs.

Other CNNs (``torchvision:<name>``, ``timm:<name>``) get their noise from
:func:`fernoise.inject.inject_noise`, importable from here as well.

The ResNet follows torchvision's ``models/resnet.py`` parameter names, so with
noise off and the ImageNet stem ``torchvision.models.resnet18(num_classes=7)``'s
``state_dict`` loads with ``strict=True``. Each :class:`BasicBlock` spells its
injection points out::

    conv1 -> bn1 -> noise1 -> relu1 -> drop -> conv2 -> bn2 -> noise2 -> (+ identity) -> noise_sum -> relu2

Injection positions (``position=``):

===========  ==========================================  ==============================================
position     periodic (``SignFlip``, identity when off)   dynamic (``AutoReLU`` replaces a ReLU)
===========  ==========================================  ==============================================
``bn1``      ``noise1`` flips bn1's output                ``relu1`` is an AutoReLU on bn1's output
``bn2``      ``noise2`` flips bn2's output before the     not defined: no ReLU follows bn2 directly
             residual sum
``sum``      ``noise_sum`` flips the sum before relu2     ``relu2`` is an AutoReLU on the sum
``all``      ``noise1`` and ``noise_sum``                 ``relu1`` and ``relu2`` (bn1 and sum)
===========  ==========================================  ==============================================

``all`` means every BN+ReLU unit of the block, each flipped exactly once: relu1
sees ``-bn1(...)`` and relu2 sees ``-(bn2(...) + identity)``. Flipping bn2's output
as well would un-flip its share of the sum (relu2 would see ``bn2 - identity``).

``bn1`` is the default: the paper found one unit per block best and injection
into all units no better than none (section 4.3).

Dropout for the paper's "+Dropout" variant sits between the two convolutions of
every block (``drop``: element-wise ``nn.Dropout(p)`` after ``relu1``), where Wide
ResNets put it (Zagoruyko & Komodakis, 2016, who use p = 0.3, fernoise's default in
training configs); the stem and classifier are untouched. The paper gives neither the
place nor p.
"""
from __future__ import annotations

from typing import Callable, Literal, Optional, Sequence, Type, get_args

import torch
from torch import nn

from fernoise.inject import inject_noise
from fernoise.noise import (
    DEFAULT_AUTORELU_GRAD, DEFAULT_AUTORELU_INIT, DEFAULT_CLIFF, AutoReLUGrad, AutoReLUOptions, SignFlip,
)

__all__ = [
    "BasicBlock", "ResNet", "resnet18", "resnet34", "build_model", "inject_noise", "check_noise",
    "NOISE_KINDS", "POSITIONS", "STEMS",
]

NoiseKind = Literal["none", "periodic", "dynamic"]
Position = Literal["bn1", "bn2", "sum", "all"]
Stem = Literal["imagenet", "half", "deep", "small"]
NOISE_KINDS: tuple[str, ...] = get_args(NoiseKind)
POSITIONS: tuple[str, ...] = get_args(Position)
STEMS: tuple[str, ...] = get_args(Stem)
# The injection points of a BasicBlock each position uses ("all": each BN+ReLU unit once).
POSITION_POINTS = {"bn1": ("bn1",), "bn2": ("bn2",), "sum": ("sum",), "all": ("bn1", "sum")}


def check_noise(noise: str, position: str) -> None:
    """ValueError unless ``noise`` can go at ``position`` (the one place that says where dynamic noise cannot go)."""
    if noise not in NOISE_KINDS:
        raise ValueError(f"noise must be one of {NOISE_KINDS}, got {noise!r}")
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    if noise == "dynamic" and position == "bn2":
        raise ValueError(
            "dynamic injection replaces a ReLU, and in a BasicBlock no ReLU follows bn2 directly "
            "(bn2 feeds the residual sum); use position bn1, sum or all"
        )


class _NoiseFactory:
    """Makes the modules that go at each injection point of a block."""

    def __init__(self, noise: str = "none", position: str = "bn1", autorelu: AutoReLUOptions = AutoReLUOptions()):
        check_noise(noise, position)
        self.noise, self.position, self.autorelu = noise, position, autorelu

    def _at(self, point: str) -> bool:
        return self.noise != "none" and point in POSITION_POINTS[self.position]

    def flip(self, point: str) -> nn.Module:
        return SignFlip() if self.noise == "periodic" and self._at(point) else nn.Identity()

    def relu(self, point: str, channels: int) -> nn.Module:
        if self.noise == "dynamic" and self._at(point):
            return self.autorelu.make(channels)
        return nn.ReLU(inplace=True)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        *,
        noise: Optional[_NoiseFactory] = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        noise = noise or _NoiseFactory()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.noise1 = noise.flip("bn1")
        self.relu1 = noise.relu("bn1", planes)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.noise2 = noise.flip("bn2")
        self.downsample = downsample
        self.noise_sum = noise.flip("sum")
        self.relu2 = noise.relu("sum", planes)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.noise1(self.bn1(self.conv1(x))))
        out = self.drop(out)
        out = self.noise2(self.bn2(self.conv2(out)))
        out = self.noise_sum(out + identity)
        return self.relu2(out)


class ResNet(nn.Module):
    """torchvision-compatible ResNet built from :class:`BasicBlock`.

    ``stem="imagenet"`` is the standard 7x7/2 convolution and 3x3/2 max-pool (the
    paper's ResNet-18), which shrinks FER2013's 48x48 faces to 12x12 before the first
    block; ``stem="half"`` is a 3x3/2 convolution without max-pool (24x24 into layer1);
    ``stem="deep"`` puts a 3x3/1 convolution to ``width // 4`` channels with its own
    BatchNorm and ReLU (``prelude``) in front of the half stem, so the face is seen at full
    resolution before it is halved (a few percent more compute than ``half``);
    ``stem="small"`` a 3x3/1 convolution without max-pool (48x48, about 16 times
    the ImageNet stem's compute). ``width`` is the first stage's channels (64 in
    ResNet-18), doubled at each later stage. ``autorelu`` says how the AutoReLUs of
    dynamic noise are built.
    """

    def __init__(
        self,
        layers: Sequence[int],
        num_classes: int = 7,
        *,
        in_channels: int = 3,
        stem: Stem = "imagenet",
        noise: NoiseKind = "none",
        position: Position = "bn1",
        dropout: float = 0.0,
        autorelu: AutoReLUOptions = AutoReLUOptions(),
        block: Type[BasicBlock] = BasicBlock,
        width: int = 64,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self._noise = _NoiseFactory(noise, position, autorelu)
        if width < 1:
            raise ValueError(f"width must be a positive number of channels, got {width}")
        self._dropout = dropout
        self.inplanes = width
        self.prelude: nn.Module = nn.Identity()  # parameter-free unless stem="deep": checkpoints stay torchvision's
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            stride = 1 if stem == "small" else 2
            stem_in = in_channels
            if stem == "deep":
                stem_in = max(width // 4, 1)
                self.prelude = nn.Sequential(nn.Conv2d(in_channels, stem_in, kernel_size=3, padding=1, bias=False),
                                             nn.BatchNorm2d(stem_in), nn.ReLU(inplace=True))
            self.conv1 = nn.Conv2d(stem_in, width, kernel_size=3, stride=stride, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block: Type[BasicBlock], planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self.inplanes, planes, stride, downsample, noise=self._noise, dropout=self._dropout)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, noise=self._noise, dropout=self._dropout) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.prelude(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(**kwargs) -> ResNet:
    """ResNet-18 (the paper's network); keyword arguments as :class:`ResNet`."""
    return ResNet([2, 2, 2, 2], **kwargs)


def resnet34(**kwargs) -> ResNet:
    return ResNet([3, 4, 6, 3], **kwargs)


_OWN: dict[str, Callable[..., ResNet]] = {"resnet18": resnet18, "resnet34": resnet34}


def build_model(
    name: str = "resnet18",
    num_classes: int = 7,
    *,
    noise: NoiseKind = "none",
    position: Position = "bn1",
    dropout: float = 0.0,
    in_channels: int = 3,
    stem: Stem = "imagenet",
    width: int = 64,
    autorelu_init: float = DEFAULT_AUTORELU_INIT,
    autorelu_constant: float = DEFAULT_CLIFF,
    autorelu_per_channel: bool = True,
    autorelu_grad: AutoReLUGrad = DEFAULT_AUTORELU_GRAD,
) -> nn.Module:
    """Build a classifier with optional noise injection, from scratch.

    ``name`` is ``resnet18`` / ``resnet34`` (fernoise's own, with every keyword
    honoured), ``torchvision:<name>`` or ``timm:<name>`` (built without pretrained
    weights, with :func:`inject_noise` applied; ``stem``, ``width`` and ``dropout`` do
    not apply to them and ``position`` must be ``bn1``, the first unit of each block).
    The ``autorelu_*`` keywords are the fields of :class:`~fernoise.noise.AutoReLUOptions`;
    a checkpoint's ``model`` entry holds exactly these keywords.
    """
    autorelu = AutoReLUOptions(autorelu_init, autorelu_constant, autorelu_per_channel, autorelu_grad)
    if name in _OWN:
        return _OWN[name](num_classes=num_classes, in_channels=in_channels, stem=stem, noise=noise, position=position,
                          dropout=dropout, autorelu=autorelu, width=width)
    library, _, arch = name.partition(":")
    if library not in ("torchvision", "timm") or not arch:
        raise ValueError(f"unknown model {name!r}: use one of {sorted(_OWN)}, 'torchvision:<name>' or 'timm:<name>'")
    if dropout > 0 or stem != "imagenet" or position != "bn1" or width != 64:
        raise ValueError(f"{name}: dropout, stem, width and position other than 'bn1' apply only to fernoise's own "
                         "ResNets")
    if library == "torchvision":
        import torchvision

        if in_channels != 3:
            raise ValueError(f"{name}: torchvision models take 3 input channels (grey faces are repeated)")
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    else:
        try:
            import timm
        except ImportError as exc:
            raise ImportError(f"{name} needs timm: pip install 'fernoise[timm]'") from exc
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    if noise != "none":
        inject_noise(model, noise, autorelu=autorelu)
    return model
