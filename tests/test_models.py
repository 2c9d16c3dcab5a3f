"""ResNet-18 with injection points, and injection into other CNNs."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from fernoise.models import build_model, inject_noise
from fernoise.noise import AutoReLU, SignFlip, set_sign_flip


def _bn_eval(model: nn.Module) -> nn.Module:
    """Training mode for everything but BatchNorm, so train/eval differ only by noise."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.training = False  # not .eval(): injected noise lives inside the BN module
    return model


def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1, generator=g)
            module.running_var.uniform_(0.5, 1.5, generator=g)
            module.weight.data.uniform_(0.5, 1.5, generator=g)  # timm zero-inits the last BN of a block
            module.bias.data.normal_(0, 0.1, generator=g)


def test_torchvision_resnet18_state_dict_loads_strictly_and_computes_the_same():
    ours = build_model("resnet18", 7)
    reference = torchvision.models.resnet18(num_classes=7)
    _randomise_bn(reference)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    ours.eval(), reference.eval()
    assert torch.allclose(ours(x), reference(x), atol=1e-5)
    ours.train(), reference.train()
    assert torch.allclose(ours(x), reference(x), atol=1e-4)


def test_small_stem_and_grey_input():
    model = build_model("resnet18", 7, stem="small", in_channels=1)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model(torch.randn(2, 1, 48, 48)).shape == (2, 7)


@pytest.mark.parametrize(
    "position,expected",
    [("bn1", {"noise1"}), ("bn2", {"noise2"}), ("sum", {"noise_sum"}), ("all", {"noise1", "noise2", "noise_sum"})],
)
def test_periodic_positions(position, expected):
    model = build_model("resnet18", 7, noise="periodic", position=position)
    names = {name.split(".")[-1] for name, m in model.named_modules() if isinstance(m, SignFlip)}
    assert names == expected
    assert sum(isinstance(m, SignFlip) for m in model.modules()) == 8 * len(expected)


@pytest.mark.parametrize("position,expected", [("bn1", {"relu1"}), ("sum", {"relu2"}), ("all", {"relu1", "relu2"})])
def test_dynamic_positions(position, expected):
    model = build_model("resnet18", 7, noise="dynamic", position=position)
    names = {name.split(".")[-1] for name, m in model.named_modules() if isinstance(m, AutoReLU)}
    assert names == expected


def test_dynamic_at_bn2_is_refused_with_reason():
    with pytest.raises(ValueError, match="no ReLU follows bn2"):
        build_model("resnet18", 7, noise="dynamic", position="bn2")


def test_dropout_sits_between_the_convolutions():
    model = build_model("resnet18", 7, dropout=0.3, noise="periodic")
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 8 and all(d.p == 0.3 for d in drops)
    assert isinstance(model.layer1[0].drop, nn.Dropout)


@pytest.mark.parametrize("position", ["bn1", "bn2", "sum", "all"])
def test_periodic_noise_only_in_training_and_only_when_on(position):
    torch.manual_seed(0)
    model = build_model("resnet18", 7, noise="periodic", position=position, stem="small", in_channels=1)
    _randomise_bn(model)
    x = torch.randn(3, 1, 16, 16)
    reference = model.eval()(x)
    _bn_eval(model)
    set_sign_flip(model, False)
    assert torch.allclose(model(x), reference, atol=1e-6)
    set_sign_flip(model, True)
    assert not torch.allclose(model(x), reference, atol=1e-3)
    assert torch.allclose(model.eval()(x), reference, atol=1e-6)


@pytest.mark.parametrize("position", ["bn1", "sum", "all"])
def test_dynamic_noise_only_in_training_and_only_when_w_negative(position):
    torch.manual_seed(0)
    model = build_model("resnet18", 7, noise="dynamic", position=position, stem="small", in_channels=1)
    _randomise_bn(model)
    x = torch.randn(3, 1, 16, 16)
    reference = model.eval()(x)
    _bn_eval(model)
    assert torch.allclose(model(x), reference, atol=1e-6)
    for unit in model.modules():
        if isinstance(unit, AutoReLU):
            unit.weight.data.mul_(-1)
    assert not torch.allclose(model(x), reference, atol=1e-3)
    assert torch.allclose(model.eval()(x), reference, atol=1e-6)


ARCHS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=7),
    "resnet50": lambda: torchvision.models.resnet50(num_classes=7),
    "vgg11_bn": lambda: torchvision.models.vgg11_bn(num_classes=7),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=7),
}


def _timm(name):
    timm = pytest.importorskip("timm")
    return lambda: timm.create_model(name, pretrained=False, num_classes=7)


@pytest.mark.parametrize("noise", ["periodic", "dynamic"])
@pytest.mark.parametrize("arch", [*ARCHS, "timm:resnet18", "timm:mobilenetv2_100"])
def test_inject_noise_into_other_cnns(arch, noise):
    torch.manual_seed(0)
    model = _timm(arch.split(":")[1])() if arch.startswith("timm:") else ARCHS[arch]()
    keys = set(model.state_dict())
    units = inject_noise(model, noise)
    assert units, "no BN+ReLU unit found"
    if noise == "periodic":
        assert set(model.state_dict()) == keys, "periodic injection must not change the state_dict"
    else:
        assert keys < set(model.state_dict())
    _randomise_bn(model)
    x = torch.randn(2, 3, 64, 64)
    reference = copy.deepcopy(model).eval()(x)
    _bn_eval(model)
    model.apply(lambda m: setattr(m, "p", 0.0) if isinstance(m, nn.Dropout) else None)
    assert torch.allclose(model(x), reference, atol=1e-5), "noise off must match eval"
    if noise == "periodic":
        set_sign_flip(model, True)
    else:
        for unit in model.modules():
            if isinstance(unit, AutoReLU):
                unit.weight.data.mul_(-1)
    assert not torch.allclose(model(x), reference, atol=1e-3), "noise on must change the training output"
    assert torch.allclose(model.eval()(x), reference, atol=1e-5), "eval must never see noise"


def test_injected_torchvision_resnet_matches_fernoise_resnet():
    torch.manual_seed(0)
    ours = build_model("resnet18", 7, noise="periodic")
    theirs = torchvision.models.resnet18(num_classes=7)
    _randomise_bn(theirs)
    ours.load_state_dict(theirs.state_dict())
    assert inject_noise(theirs, "periodic") == [f"layer{i}.{j}.bn1" for i in range(1, 5) for j in range(2)]
    set_sign_flip(ours, True), set_sign_flip(theirs, True)
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(_bn_eval(ours)(x), _bn_eval(theirs)(x), atol=1e-5)


def test_inject_noise_all_units_and_explicit_targets():
    model = torchvision.models.resnet18(num_classes=7)
    assert len(inject_noise(model, "periodic", units="all")) == 9  # stem bn1 + bn1 of 8 blocks
    model = torchvision.models.resnet18(num_classes=7)
    assert inject_noise(model, "dynamic", targets=["layer1.0.bn2"]) == ["layer1.0.bn2"]
    with pytest.raises(ValueError, match="not BatchNorm"):
        inject_noise(torchvision.models.resnet18(), "periodic", targets=["fc"])


def test_build_model_from_other_libraries():
    model = build_model("torchvision:resnet18", 5, noise="dynamic")
    assert model.fc.out_features == 5 and any(isinstance(m, AutoReLU) for m in model.modules())
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nonsense", 7)
    with pytest.raises(ValueError, match="own ResNets"):
        build_model("torchvision:resnet18", 7, dropout=0.5)


@pytest.mark.parametrize("noise", ["none", "periodic", "dynamic"])
def test_folding_batchnorm_keeps_the_eval_output(noise):
    from fernoise.models import fold_batchnorm

    torch.manual_seed(0)
    model = build_model("resnet18", 7, noise=noise, position="all" if noise != "dynamic" else "sum")
    _randomise_bn(model)
    x = torch.randn(2, 3, 64, 64)
    expected = model.eval()(x)
    folded = fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(folded(x), expected, atol=1e-4)
