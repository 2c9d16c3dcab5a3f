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
    [("bn1", {"noise1"}), ("bn2", {"noise2"}), ("sum", {"noise_sum"}), ("all", {"noise1", "noise_sum"})],
)
def test_periodic_positions(position, expected):
    model = build_model("resnet18", 7, noise="periodic", position=position)
    names = {name.split(".")[-1] for name, m in model.named_modules() if isinstance(m, SignFlip)}
    assert names == expected
    assert sum(isinstance(m, SignFlip) for m in model.modules()) == 8 * len(expected)


@pytest.mark.parametrize("noise", ["periodic", "dynamic"])
def test_position_all_flips_each_bn_relu_unit_input_exactly_once(noise):
    """A hand-written BasicBlock: relu1 sees -bn1(conv1 x), relu2 sees -(bn2(conv2 .) + identity)."""
    torch.manual_seed(0)
    model = build_model("resnet18", 7, noise=noise, position="all", stem="small", in_channels=1)
    _randomise_bn(model)
    block = model.layer2[0]  # has a downsample branch
    _bn_eval(block)
    if noise == "periodic":
        set_sign_flip(block, True)
    else:
        for unit in block.modules():
            if isinstance(unit, AutoReLU):
                unit.weight.data.fill_(-0.5)
    x = torch.randn(2, 64, 8, 8)
    identity = block.downsample(x)
    out = torch.relu(-block.bn1(block.conv1(x)))
    expected = torch.relu(-(block.bn2(block.conv2(out)) + identity))
    assert torch.allclose(block(x), expected, atol=1e-5)
    twice = torch.relu(-(-block.bn2(block.conv2(out)) + identity))  # the former double flip
    assert not torch.allclose(block(x), twice, atol=1e-3)


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


def test_the_first_unit_of_each_block_leaves_out_stem_and_head():
    mobilenet = torchvision.models.mobilenet_v2(num_classes=7)  # features.0 stem, features.18 head
    assert inject_noise(mobilenet, "periodic") == [f"features.{i}.conv.0.1" for i in range(1, 18)]
    assert len(inject_noise(_timm("mobilenetv2_100")(), "periodic")) == 17  # timm's MobileNetV2 alike
    resnet = torchvision.models.resnet18(num_classes=7)
    assert inject_noise(resnet, "periodic") == [f"layer{i}.{j}.bn1" for i in range(1, 5) for j in range(2)]
    vgg = torchvision.models.vgg11_bn(num_classes=7)  # no blocks: every unit is one
    assert len(inject_noise(vgg, "periodic")) == len(inject_noise(copy.deepcopy(vgg), "periodic", units="all")) == 8


# BatchNorm gains that put some ReLU6 inputs past 6, where it clips, and all short of AutoReLU's cliff (600)
@pytest.mark.parametrize("arch, gain", [("torchvision:mobilenet_v2", 2.0), ("timm:mobilenetv2_100", 1.0)])
def test_dynamic_noise_keeps_relu6s_clip(arch, gain):
    """In eval (and in clean steps) a dynamic model is the baseline network: ReLU6 still clips at 6."""
    torch.manual_seed(0)
    library, name = arch.split(":")
    model = _timm(name)() if library == "timm" else ARCHS[name]()
    _randomise_bn(model)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.mul_(gain)
    x = torch.randn(2, 3, 64, 64)
    baseline = model.eval()(x)
    inject_noise(model, "dynamic")
    assert torch.allclose(model.eval()(x), baseline, rtol=1e-4, atol=1e-4)


def test_build_model_from_other_libraries():
    model = build_model("torchvision:resnet18", 5, noise="dynamic")
    assert model.fc.out_features == 5 and any(isinstance(m, AutoReLU) for m in model.modules())
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nonsense", 7)
    with pytest.raises(ValueError, match="own ResNets"):
        build_model("torchvision:resnet18", 7, dropout=0.5)


@pytest.mark.parametrize("noise", ["none", "periodic", "dynamic"])
def test_folding_batchnorm_keeps_the_eval_output(noise):
    from fernoise.batchnorm import fold_batchnorm

    torch.manual_seed(0)
    model = build_model("resnet18", 7, noise=noise, position="all" if noise != "dynamic" else "sum")
    _randomise_bn(model)
    x = torch.randn(2, 3, 64, 64)
    expected = model.eval()(x)
    folded = fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(folded(x), expected, atol=1e-4)


# Every supported architecture x every method: forward, backward and an optimizer step with noise on.
OWN_METHODS = ["baseline", "dropout", "periodic", "dynamic", "dynamic-exact", "dropout+periodic", "dropout+dynamic"]
FOREIGN_METHODS = ["baseline", "periodic", "dynamic", "dynamic-exact"]
TRAIN_ARCHS = {
    "resnet18-imagenet": (lambda **kw: build_model("resnet18", 7, in_channels=1, **kw), 1, 32, OWN_METHODS),
    "resnet18-small": (lambda **kw: build_model("resnet18", 7, in_channels=1, stem="small", **kw), 1, 16, OWN_METHODS),
    **{
        f"torchvision:{name}": (lambda name=name, **kw: build_model(f"torchvision:{name}", 7, **kw), 3, 32,
                                FOREIGN_METHODS)
        for name in ("resnet18", "resnet50", "vgg11_bn", "mobilenet_v2")
    },
    **{
        f"timm:{name}": (lambda name=name, **kw: build_model(f"timm:{name}", 7, **kw), 3, 32, FOREIGN_METHODS)
        for name in ("resnet18", "mobilenetv2_100")
    },
}


def _set_noise(model: nn.Module, on: bool) -> None:
    set_sign_flip(model, on)
    for unit in model.modules():
        if isinstance(unit, AutoReLU):
            unit.weight.data.copy_(unit.weight.data.abs() * (-1 if on else 1))


@pytest.mark.parametrize(
    "arch,method",
    [(arch, method) for arch, (_, _, _, methods) in TRAIN_ARCHS.items() for method in methods],
)
def test_every_architecture_trains_a_step_with_noise_on(arch, method):
    from fernoise.config import METHODS
    from fernoise.noise import NoiseController, PeriodicSchedule

    if arch.startswith("timm:"):
        pytest.importorskip("timm")
    make, channels, size, _ = TRAIN_ARCHS[arch]
    grad = "exact" if method.endswith("-exact") else "autograd"
    noise, dropout = METHODS[method.removesuffix("-exact")]
    torch.manual_seed(0)
    kwargs = {"noise": noise, "autorelu_grad": grad, **({"dropout": 0.3} if dropout else {})}
    model = make(**kwargs).train()
    _randomise_bn(model)  # timm zero-inits each block's last BN, which would hide noise in the block
    schedule = PeriodicSchedule(3) if noise == "periodic" else None
    controller = NoiseController(model, schedule)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    x, y = torch.randn(4, channels, size, size), torch.tensor([0, 1, 2, 3])
    if schedule is not None:
        schedule.flag = True  # the next epoch is noisy
    _set_noise(model, True)  # dynamic: negative weights, so the synced mean is negative
    controller.start_epoch()
    controller.start_step()
    assert controller.noise_on == (noise != "none")
    if noise != "none":  # the noisy forward differs from the same forward with noise off
        _set_noise(model, False)
        torch.manual_seed(1)
        with torch.no_grad():
            clean = model(x)
        _set_noise(model, True)
        torch.manual_seed(1)
        with torch.no_grad():
            assert not torch.allclose(model(x), clean, atol=1e-4)
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(1)
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert changed > 0.8 * len(before), "the optimizer step must move the parameters"  # timm zero-inits some
    assert controller.noise_on == (noise != "none")


@pytest.mark.parametrize("noise", ["periodic", "dynamic"])
@pytest.mark.parametrize("arch", ["torchvision:resnet18", "timm:resnet18", "timm:mobilenetv2_100", "resnet18"])
def test_sync_batchnorm_conversion_keeps_noise_at_every_injection_point(arch, noise):
    from fernoise.inject import convert_sync_batchnorm

    if arch.startswith("timm:"):
        pytest.importorskip("timm")
    torch.manual_seed(0)
    model = build_model(arch, 7, noise=noise)
    _randomise_bn(model)
    model = convert_sync_batchnorm(model).train()
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    points = [m for m in model.modules() if isinstance(m, (SignFlip, AutoReLU))]
    assert len(points) == 8 or arch == "timm:mobilenetv2_100"
    x = torch.randn(2, 3, 32, 32)
    _set_noise(model, False)
    with torch.no_grad():
        clean = model(x)
        for point in points:
            if isinstance(point, SignFlip):
                point.active = True
            else:
                point.weight.data.neg_()
            assert not torch.allclose(model(x), clean, atol=1e-4), f"noise lost at {point}"
            _set_noise(model, False)


@pytest.mark.parametrize("arch", ["resnet18", "torchvision:resnet18"])
def test_batchnorm_recalibration_restores_the_statistics_of_a_clean_pass(arch):
    from fernoise.batchnorm import recalibrate_batchnorm

    torch.manual_seed(0)
    model = build_model(arch, 7, noise="periodic", dropout=0.3 if arch == "resnet18" else 0.0)
    batches = [torch.randn(8, 3, 32, 32) * 2 + 1 for _ in range(3)]
    clean = copy.deepcopy(model)
    set_sign_flip(model, True)
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)  # noisy training forwards update the running statistics
    # the reference: fresh statistics from plain forwards with noise off, averaged over the batches
    norms = [m for m in clean.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    _bn_eval(clean)
    for bn in norms:
        bn.training = True
    clean.apply(lambda m: m.eval() if isinstance(m, nn.Dropout) else None)
    with torch.no_grad():
        for x in batches:
            clean(x)
    noisy_norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not all(torch.allclose(a.running_var, b.running_var) for a, b in zip(noisy_norms, norms))
    recalibrate_batchnorm(model, batches)
    for a, b in zip(noisy_norms, norms):
        torch.testing.assert_close(a.running_mean, b.running_mean)
        torch.testing.assert_close(a.running_var, b.running_var)
        assert a.momentum == 0.1
    assert model.training and all(flip.active for flip in model.modules() if isinstance(flip, SignFlip))


def test_batchnorm_recalibration_restores_each_modules_mode_and_momentum_when_a_forward_fails():
    from fernoise.batchnorm import recalibrate_batchnorm

    model = build_model("resnet18", 7).train()
    model.bn1.eval()  # a frozen BatchNorm stays frozen
    model.bn1.momentum = 0.3
    modes = {name: m.training for name, m in model.named_modules()}

    def batches():
        yield torch.randn(2, 3, 32, 32)
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        recalibrate_batchnorm(model, batches())
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert model.bn1.momentum == 0.3
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m is not model.bn1)
