"""Noise injection into any CNN with BatchNorm followed by ReLU (torchvision, timm, your own), by hooks.

:func:`inject_noise` finds the BN+ReLU units by tracing the forward with torch.fx and
attaches a :class:`~fernoise.noise.SignFlip` or :class:`~fernoise.noise.AutoReLU` to the
output of each chosen BatchNorm, inside the BatchNorm module, so that ``state_dict`` keys
stay as they were. :func:`convert_sync_batchnorm` turns a model's BatchNorms into
SyncBatchNorms (for DDP on GPUs) without losing that noise. fernoise's own ResNet
(:mod:`fernoise.models`) spells its injection points out instead.
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
from torch import nn

from fernoise.noise import AutoReLU, AutoReLUOptions, SignFlip

__all__ = ["inject_noise", "convert_sync_batchnorm"]

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
        # AutoReLU's output is non-negative, so it may stand in for a plain ReLU (its weight keeps the
        # key "act.weight"); a ReLU6 stays after it for its clip at 6, as on the hooked path
        replaces = isinstance(injector, AutoReLU) and type(bn.act) is nn.ReLU
        bn.act = injector if replaces else nn.Sequential(injector, bn.act)
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
    noise: Literal["periodic", "dynamic"] = "periodic",
    *,
    units: Literal["first", "all"] = "first",
    targets: Optional[Sequence[str]] = None,
    autorelu: AutoReLUOptions = AutoReLUOptions(),
) -> list[str]:
    """Put periodic or dynamic injection into any CNN with BatchNorm followed by ReLU.

    The BN+ReLU units (a BatchNorm whose output goes straight into a ReLU or ReLU6) are
    found by tracing (``targets`` names them explicitly). With ``units="first"`` (the
    paper's choice) only the first unit of every block is used, a block being the
    outermost module above the unit that is not a container (``nn.Sequential`` and its
    subclasses such as torchvision's ``Conv2dNormActivation``, ``nn.ModuleList``,
    ``nn.ModuleDict``): a torchvision ``BasicBlock``/``Bottleneck``, a MobileNet
    ``InvertedResidual``. In a network with blocks the units outside any block, its
    stem and head (ResNet's ``bn1``, MobileNetV2's first and last ``Conv2dNormActivation``),
    are left out; in one without (VGG's conv-BN-ReLU stacks) every unit is a block of
    its own. ``units="all"`` uses every unit, stem and head included: in torchvision's
    ResNet-18 that is 9 (the stem and each block's ``bn1``), not the 16 points of
    fernoise's own ResNet with ``position="all"``, whose second unit per block is the
    residual sum before ``relu2``, a point no BatchNorm's output (and so no hook) reaches.

    The noise is applied to the BN output inside the BN module (a child called
    ``noise`` and a forward hook; for timm's fused ``BatchNormAct2d`` it goes
    before the activation), so existing ``state_dict`` keys are unchanged.
    Periodic puts a :class:`SignFlip` there; dynamic puts an :class:`AutoReLU`
    there, after which the original ReLU is the identity on its non-negative
    output (a ReLU6 still clips at 6); ``autorelu`` says how it is built. Returns the
    names of the BN modules used.
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
        if units not in ("first", "all"):
            raise ValueError(f"inject_noise: units must be 'first' or 'all', got {units!r}")
        chosen = found if units == "all" else _first_of_each_block(found, modules)
    for name in chosen:
        bn = modules[name]
        _insert_after_bn(bn, SignFlip() if noise == "periodic" else autorelu.make(bn.num_features))
    return chosen


def _first_of_each_block(units: list[str], modules: dict[str, nn.Module]) -> list[str]:
    """The first of ``units`` in every block (see :func:`inject_noise`); units outside any block
    (stem, head) only when the network has no blocks."""
    blocks = {name: _block_of(name, modules) for name in units}
    in_blocks = [name for name in units if blocks[name] != name] or units
    chosen, seen = [], set()
    for name in in_blocks:
        if blocks[name] not in seen:
            seen.add(blocks[name])
            chosen.append(name)
    return chosen
