"""ResNet-18 with visible noise-injection points, and injection into other CNNs.

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

from typing import Callable, Iterable, Literal, Optional, Sequence, Type

import torch
from torch import nn

from fernoise.noise import DEFAULT_AUTORELU_GRAD, DEFAULT_AUTORELU_INIT, DEFAULT_CLIFF, AutoReLU, AutoReLUGrad, SignFlip

__all__ = [
    "BasicBlock", "ResNet", "resnet18", "resnet34", "build_model", "inject_noise", "convert_sync_batchnorm",
    "NOISE_KINDS", "POSITIONS",
]

NoiseKind = Literal["none", "periodic", "dynamic"]
Position = Literal["bn1", "bn2", "sum", "all"]
Stem = Literal["imagenet", "small"]
NOISE_KINDS = ("none", "periodic", "dynamic")
POSITIONS = ("bn1", "bn2", "sum", "all")
# The injection points of a BasicBlock each position uses ("all": each BN+ReLU unit once).
POSITION_POINTS = {"bn1": ("bn1",), "bn2": ("bn2",), "sum": ("sum",), "all": ("bn1", "sum")}


def _check_noise(noise: str, position: str) -> None:
    if noise not in NOISE_KINDS:
        raise ValueError(f"noise must be one of {NOISE_KINDS}, got {noise!r}")
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    if noise == "dynamic" and position == "bn2":
        raise ValueError(
            "dynamic injection replaces a ReLU, and in a BasicBlock no ReLU follows bn2 directly "
            "(bn2 feeds the residual sum); use position='sum' or 'bn1'"
        )


class _NoiseFactory:
    """Makes the modules that go at each injection point of a block."""

    def __init__(self, noise: str, position: str, autorelu_init: float, autorelu_constant: float, per_channel: bool,
                 autorelu_grad: AutoReLUGrad = DEFAULT_AUTORELU_GRAD):
        _check_noise(noise, position)
        self.noise, self.position = noise, position
        self.autorelu = dict(init=autorelu_init, constant=autorelu_constant, per_channel=per_channel, grad=autorelu_grad)

    def _at(self, point: str) -> bool:
        return self.noise != "none" and point in POSITION_POINTS[self.position]

    def flip(self, point: str) -> nn.Module:
        return SignFlip() if self.noise == "periodic" and self._at(point) else nn.Identity()

    def relu(self, point: str, channels: int) -> nn.Module:
        if self.noise == "dynamic" and self._at(point):
            return AutoReLU(channels, **self.autorelu)
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
        noise = noise or _NoiseFactory("none", "bn1", DEFAULT_AUTORELU_INIT, DEFAULT_CLIFF, True)
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
    paper's ResNet-18); ``stem="small"`` is a 3x3/1 convolution without max-pool
    for small faces such as FER2013's 48x48, which the ImageNet stem shrinks to
    12x12 before the first block.
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
        autorelu_init: float = DEFAULT_AUTORELU_INIT,
        autorelu_constant: float = DEFAULT_CLIFF,
        autorelu_per_channel: bool = True,
        autorelu_grad: AutoReLUGrad = DEFAULT_AUTORELU_GRAD,
        block: Type[BasicBlock] = BasicBlock,
    ) -> None:
        super().__init__()
        if stem not in ("imagenet", "small"):
            raise ValueError(f"stem must be 'imagenet' or 'small', got {stem!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self._noise = _NoiseFactory(noise, position, autorelu_init, autorelu_constant, autorelu_per_channel, autorelu_grad)
        self._dropout = dropout
        self.inplanes = 64
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

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
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
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
    autorelu_init: float = DEFAULT_AUTORELU_INIT,
    autorelu_constant: float = DEFAULT_CLIFF,
    autorelu_per_channel: bool = True,
    autorelu_grad: AutoReLUGrad = DEFAULT_AUTORELU_GRAD,
) -> nn.Module:
    """Build a classifier with optional noise injection, from scratch.

    ``name`` is ``resnet18`` / ``resnet34`` (fernoise's own, with every keyword
    honoured), ``torchvision:<name>`` or ``timm:<name>`` (built without pretrained
    weights, with :func:`inject_noise` applied; ``stem`` and ``dropout`` do not
    apply to them and ``position`` must be ``bn1``, the first unit of each block).
    """
    if name in _OWN:
        return _OWN[name](
            num_classes=num_classes,
            in_channels=in_channels,
            stem=stem,
            noise=noise,
            position=position,
            dropout=dropout,
            autorelu_init=autorelu_init,
            autorelu_constant=autorelu_constant,
            autorelu_per_channel=autorelu_per_channel,
            autorelu_grad=autorelu_grad,
        )
    library, _, arch = name.partition(":")
    if library not in ("torchvision", "timm") or not arch:
        raise ValueError(f"unknown model {name!r}: use one of {sorted(_OWN)}, 'torchvision:<name>' or 'timm:<name>'")
    if dropout > 0 or stem != "imagenet" or position != "bn1":
        raise ValueError(f"{name}: dropout, stem and position other than 'bn1' apply only to fernoise's own ResNets")
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
        inject_noise(
            model,
            noise,
            autorelu_init=autorelu_init,
            autorelu_constant=autorelu_constant,
            autorelu_per_channel=autorelu_per_channel,
            autorelu_grad=autorelu_grad,
        )
    return model


# --------------------------------------------------------------------------- any BN+ReLU CNN

_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_RELU_FUNCTIONS = {torch.relu, torch.relu_, nn.functional.relu, nn.functional.relu6}
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout2d)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _is_relu_node(node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _RELU_MODULES)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _bn_relu_units(model: nn.Module) -> list[str]:
    """Names of BatchNorm modules whose output goes straight into a ReLU (or ReLU6).

    Found by tracing the forward with torch.fx, so a ReLU module shared by several
    call sites (torchvision's ResNet blocks) is resolved per call. timm's fused
    ``BatchNormAct2d`` counts when its activation is a ReLU.
    """
    import torch.fx

    modules = dict(model.named_modules())
    units = [n for n, m in modules.items() if isinstance(m, nn.modules.batchnorm._BatchNorm) and isinstance(getattr(m, "act", None), _RELU_MODULES)]

    class _Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, nn.modules.batchnorm._BatchNorm) or super().is_leaf_module(m, qualname)

    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx cannot trace data-dependent control flow
        raise ValueError(
            f"cannot trace {type(model).__name__} to find its BN+ReLU units ({exc}); "
            "pass the BatchNorm module names explicitly with targets=[...]"
        ) from exc
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        user = node
        while len(user.users) == 1:
            (user,) = user.users
            if user.op == "call_module" and isinstance(modules[user.target], _PASS_THROUGH):
                continue
            if _is_relu_node(user, modules) and node.target not in units:
                units.append(node.target)
            break
    order = {name: i for i, name in enumerate(modules)}
    return sorted(units, key=order.__getitem__)


def _block_of(name: str, modules: dict[str, nn.Module]) -> str:
    """The outermost non-container module above ``name`` (a residual/inverted block), or ``name`` itself."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if not isinstance(modules[prefix], _CONTAINERS):
            return prefix
    return name


def _apply_noise(bn: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return bn.noise(output)


def _hook_noise(bn: nn.Module) -> None:
    """Make ``bn``'s child ``noise`` act on its output (once, however often this is called)."""
    if _apply_noise not in bn._forward_hooks.values():
        bn.register_forward_hook(_apply_noise)


def _insert_after_bn(bn: nn.Module, injector: nn.Module) -> None:
    """Apply ``injector`` to ``bn``'s output, keeping every existing state_dict key."""
    if isinstance(getattr(bn, "act", None), _RELU_MODULES):  # timm BatchNormAct2d: norm -> act fused
        bn.act = injector if isinstance(injector, AutoReLU) else nn.Sequential(injector, bn.act)
        return
    bn.add_module("noise", injector)
    _hook_noise(bn)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm of ``model`` as a SyncBatchNorm (for DDP on GPUs), injected noise kept.

    PyTorch's converter builds new modules without forward hooks, which would silently
    drop the noise :func:`inject_noise` attached to foreign BatchNorms; timm's converter
    (used when timm is installed) also keeps the activation of its fused
    ``BatchNormAct2d``. Children (the ``noise`` module) carry over; their hooks are
    attached again here. Works on CPU modules too.
    """
    try:
        from timm.layers import convert_sync_batchnorm as convert
    except ImportError:
        convert = nn.SyncBatchNorm.convert_sync_batchnorm
    model = convert(model)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and isinstance(
            getattr(module, "noise", None), (SignFlip, AutoReLU)
        ):
            _hook_noise(module)
    return model


def inject_noise(
    model: nn.Module,
    noise: NoiseKind = "periodic",
    *,
    units: Literal["first", "all"] = "first",
    targets: Optional[Sequence[str]] = None,
    autorelu_init: float = DEFAULT_AUTORELU_INIT,
    autorelu_constant: float = DEFAULT_CLIFF,
    autorelu_per_channel: bool = True,
    autorelu_grad: AutoReLUGrad = DEFAULT_AUTORELU_GRAD,
) -> list[str]:
    """Put periodic or dynamic injection into any CNN with BatchNorm followed by ReLU.

    The BN+ReLU units are found by tracing (``targets`` names them explicitly).
    With ``units="first"`` (the paper's choice) only the first unit of every block
    is used, a block being the outermost module above the unit that is not a
    plain container (a torchvision ``BasicBlock``/``Bottleneck``, a MobileNet
    ``InvertedResidual``); units outside any block, like VGG's conv-BN-ReLU
    stacks, count as blocks of their own, while a network's stem (units directly
    under the root) is skipped when the network has blocks.

    The noise is applied to the BN output inside the BN module (a child called
    ``noise`` and a forward hook; for timm's fused ``BatchNormAct2d`` the
    activation is replaced), so existing ``state_dict`` keys are unchanged.
    Periodic puts a :class:`SignFlip` there; dynamic puts an :class:`AutoReLU`
    there, after which the original ReLU is the identity on its non-negative
    output (a ReLU6 still clips at 6). Returns the names of the BN modules used.
    """
    if noise not in ("periodic", "dynamic"):
        raise ValueError(f"inject_noise: noise must be 'periodic' or 'dynamic', got {noise!r}")
    modules = dict(model.named_modules())
    if targets is not None:
        missing = [t for t in targets if not isinstance(modules.get(t), nn.modules.batchnorm._BatchNorm)]
        if missing:
            raise ValueError(f"inject_noise: not BatchNorm modules of the model: {missing}")
        chosen = list(targets)
    else:
        found = _bn_relu_units(model)
        if not found:
            raise ValueError(f"inject_noise: no BatchNorm followed by ReLU found in {type(model).__name__}")
        if units == "all":
            chosen = found
        elif units == "first":
            blocks = {name: _block_of(name, modules) for name in found}
            has_blocks = any(block != name for name, block in blocks.items())
            chosen, seen = [], set()
            for name in found:
                block = blocks[name]
                if has_blocks and block == name and "." not in name:
                    continue  # stem unit directly under the root
                if block not in seen:
                    seen.add(block)
                    chosen.append(name)
        else:
            raise ValueError(f"inject_noise: units must be 'first' or 'all', got {units!r}")
    for name in chosen:
        bn = modules[name]
        if noise == "periodic":
            injector: nn.Module = SignFlip()
        else:
            injector = AutoReLU(
                bn.num_features, init=autorelu_init, constant=autorelu_constant, per_channel=autorelu_per_channel,
                grad=autorelu_grad,
            )
        _insert_after_bn(bn, injector)
    return chosen


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Re-estimate every BatchNorm's running statistics from clean forward passes of ``batches``.

    During noisy training steps the BatchNorm layers after an injection point update
    their running statistics with noisy features, and evaluation normalises with them.
    Here the statistics are reset and recomputed as the plain average over the given
    batches (``momentum=None``), with all noise, dropout and everything else but the
    BatchNorm layers in eval mode. The model's training mode is restored afterwards.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training, momenta = model.training, [bn.momentum for bn in norms]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.training = True  # not .train(): inject_noise puts the noise inside the BN module
    for inputs in batches:
        model(inputs)
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum
    model.train(was_training)


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
