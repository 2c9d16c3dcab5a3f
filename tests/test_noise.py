"""The maths and schedules of the noise modules (paper section 3)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from fernoise.models import build_model
from fernoise.noise import (
    AutoReLU,
    NoiseController,
    PeriodicSchedule,
    SignFlip,
    auto_relu,
    autorelu_weight,
    cliff_relu,
    sync_autorelu,
)

OFF, ON = False, True
PINNED = {
    3: [OFF, OFF, ON, ON, ON, OFF, OFF, OFF, ON, ON, ON],
    2: [OFF, ON, ON, OFF, OFF, ON, ON],
    1: [OFF, ON, OFF, ON],
}


@pytest.mark.parametrize("interval", sorted(PINNED))
def test_schedule_sequence_matches_algorithm_1(interval):
    schedule = PeriodicSchedule(interval)
    assert [schedule.advance() for _ in PINNED[interval]] == PINNED[interval]


@pytest.mark.parametrize("unit", ["epoch", "step"])
@pytest.mark.parametrize("interval", sorted(PINNED))
def test_controller_switches_sign_flips_per_unit(unit, interval):
    model = build_model("resnet18", 7, noise="periodic", stem="small", in_channels=1)
    controller = NoiseController(model, PeriodicSchedule(interval, unit=unit))
    flips = [m for m in model.modules() if isinstance(m, SignFlip)]
    assert len(flips) == 8
    seen = []
    for _ in PINNED[interval]:
        if unit == "epoch":
            controller.start_epoch()
            for _step in range(3):  # the flag holds for the whole epoch
                controller.start_step()
                assert all(f.active == flips[0].active for f in flips)
            seen.append(flips[0].active)
            assert controller.epoch_noise_fraction() == float(flips[0].active)
        else:
            controller.start_step()
            seen.append(flips[0].active)
    assert seen == PINNED[interval]


def test_schedule_state_round_trip_continues_sequence():
    reference = PeriodicSchedule(3)
    full = [reference.advance() for _ in range(11)]
    first = PeriodicSchedule(3)
    head = [first.advance() for _ in range(5)]
    resumed = PeriodicSchedule(1, unit="step")
    resumed.load_state_dict(first.state_dict())
    assert resumed.interval == 3 and resumed.unit == "epoch"
    assert head + [resumed.advance() for _ in range(6)] == full


@pytest.mark.parametrize("bad", [0, -2])
def test_schedule_rejects_bad_interval(bad):
    with pytest.raises(ValueError, match="interval"):
        PeriodicSchedule(bad)


finite = st.floats(-20, 20, allow_nan=False, allow_subnormal=False, width=64)
weights = st.floats(-1, 1, allow_nan=False, width=64).filter(lambda w: abs(w) > 1e-3)


@settings(max_examples=60, deadline=None)
@given(x=arrays(np.float64, 32, elements=finite), c=st.floats(0.5, 10))
def test_cliff_relu_formula(x, c):
    expected = np.where((x > 0) & (x < c), x, 0.0)
    np.testing.assert_allclose(cliff_relu(torch.from_numpy(x), c).numpy(), expected)


@settings(max_examples=60, deadline=None)
@given(x=arrays(np.float64, 32, elements=finite), w=weights, c=st.floats(0.5, 10))
def test_auto_relu_forward_and_gradient(x, w, c):
    z = x * w
    inside = (z > 0) & (z < c)
    # x * w rounds, so values within an ulp of the cliff may fall either side of it.
    clear = np.abs(z - c) > 1e-12 * c
    expected = np.where(inside, z, 0.0) / abs(w)
    upstream = torch.linspace(-1, 1, x.size, dtype=torch.float64)
    # dy/dx = sign(w) inside the linear region; dy/dw = 0 analytically (y = x * sign(w) there).
    expected_grad = np.where(inside, np.sign(w), 0.0) * upstream.numpy()
    w_grads = {}
    for grad in ("exact", "autograd"):
        xt = torch.tensor(x, requires_grad=True)
        wt = torch.tensor(w, requires_grad=True)
        y = auto_relu(xt, wt, c, training=True, grad=grad)
        np.testing.assert_allclose(y.detach().numpy()[clear], expected[clear], rtol=1e-12, atol=1e-12)
        y.backward(upstream)
        np.testing.assert_allclose(xt.grad.numpy()[clear], expected_grad[clear], atol=1e-12)
        assert wt.grad is not None
        w_grads[grad] = wt.grad.item()
    assert w_grads["exact"] == 0.0
    # autograd leaves only the rounding residue of two cancelling sums (float64 here)
    scale = np.abs(upstream.numpy() * x).sum() / abs(w)
    assert abs(w_grads["autograd"]) <= 1e-12 * max(scale, 1.0)


@settings(max_examples=30, deadline=None)
@given(x=arrays(np.float32, (2, 3, 4), elements=st.floats(-20, 20, allow_subnormal=False, width=32)),
       w=arrays(np.float32, 3, elements=st.floats(-0.875, 0.875, width=32).filter(lambda v: abs(v) > 1e-3)))
def test_auto_relu_matches_autograd_of_the_composite_formula(x, w):
    """Same output and input gradient as autograd through ``cliff_relu(x * w) / |w|``."""
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w).view(1, 3, 1)
    reference = cliff_relu(xt * wt, 6.0) / wt.abs()
    upstream = torch.linspace(-1, 1, reference.numel()).view_as(reference)
    (expected_grad,) = torch.autograd.grad(reference, xt, upstream)
    y = auto_relu(xt, torch.tensor(w), 6.0, grad="exact")
    y.backward(upstream)
    # The composite rounds twice (x * w, then / |w|); fernoise's x * sign(w) does not. Values
    # right at the cliff may fall either side of it. For x near the smallest normal float, x * w is
    # subnormal and its rounding is coarser than one ulp of the result (atol: below any normal float).
    at_cliff = ((xt * wt - 6.0).abs() < 1e-5).detach()
    tiny = torch.finfo(torch.float32).tiny
    torch.testing.assert_close(y.detach()[~at_cliff], reference.detach()[~at_cliff], rtol=2.5e-7, atol=tiny)
    torch.testing.assert_close(xt.grad[~at_cliff], expected_grad[~at_cliff], rtol=2.5e-7, atol=tiny)


def test_autograd_gives_a_tiny_weight_the_formulas_gradient():
    """Weights of 1e-7 (the common weight's size when it crosses zero) get the literal formula's
    gradient residue; a division guard above them would return exactly 0 and hold them in place."""
    torch.manual_seed(0)
    x, upstream = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    w = torch.tensor([1e-7, -3e-7, 0.5], requires_grad=True)
    auto_relu(x, w, 6.0, grad="autograd").backward(upstream)
    literal = w.detach().clone().requires_grad_()
    per_channel = literal.view(1, 3, 1, 1)
    (cliff_relu(x * per_channel, 6.0) / per_channel.abs()).backward(upstream)
    assert torch.equal(w.grad, literal.grad)
    assert (w.grad[:2] != 0).all()  # the residue is there to be kept
    zero = torch.zeros(3, requires_grad=True)  # the guard still keeps w == 0 finite
    y = auto_relu(x, zero, 6.0, grad="autograd")
    y.backward(upstream)
    assert torch.isfinite(y).all() and torch.isfinite(zero.grad).all()
    half = auto_relu(x.half(), torch.zeros(3, dtype=torch.float16), 6.0, grad="autograd")  # 1e-20 is 0 in fp16
    assert torch.isfinite(half).all()


def test_auto_relu_keeps_reduced_precision_and_the_sign_of_a_tiny_weight():
    x = torch.linspace(-3, 3, 24).view(1, 3, 2, 4)
    for dtype in (torch.bfloat16, torch.float16):
        y = auto_relu(x.to(dtype), torch.tensor([1e-9, -1e-9, 0.5]), grad="exact")
        assert y.dtype == dtype
        torch.testing.assert_close(y.float(), torch.stack([x[:, 0].relu(), (-x[:, 1]).relu(), x[:, 2].relu()], 1),
                                   rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("w", [0.5, -0.5])
def test_auto_relu_passes_nan_through_like_relu(w):
    x = torch.tensor([[1.0, float("nan"), -2.0, 100.0]])
    y = auto_relu(x, torch.tensor(w), 6.0)
    assert torch.isnan(y[0, 1]) and torch.isnan(torch.relu(x)[0, 1])
    expected = [1.0, 0.0, 0.0] if w > 0 else [0.0, 2.0, 0.0]  # 100 lies beyond the cliff at 12
    assert y[0, [0, 2, 3]].tolist() == expected


def test_optimizer_weight_decay_reaches_autorelu_weight_through_the_zero_gradient():
    unit = AutoReLU(4, init=0.5)
    optimizer = torch.optim.SGD(unit.parameters(), lr=0.1, weight_decay=0.1)
    unit(torch.randn(2, 4, 3, 3)).sum().backward()
    assert torch.equal(unit.weight.grad, torch.zeros(4))
    optimizer.step()
    assert torch.allclose(unit.weight, torch.full((4,), 0.5 * (1 - 0.1 * 0.1)))


@settings(max_examples=40, deadline=None)
@given(x=arrays(np.float64, 16, elements=finite), w=weights)
@example(x=np.full(16, -20.0), w=-0.3)  # x * w lands on the cliff: a float32 w put it past, the float64 oracle not
def test_auto_relu_eval_injects_nothing(x, w):
    xt, wt = torch.from_numpy(x), torch.tensor(w, dtype=torch.float64)  # the oracle's precision, cliff included
    eval_out = auto_relu(xt, wt, 6.0, training=False)
    np.testing.assert_allclose(eval_out.numpy(), auto_relu(xt, wt.abs(), 6.0, training=True).numpy())
    if w < 0:  # training with negative w is ReLU of the flipped feature
        np.testing.assert_allclose(
            auto_relu(xt, wt, 6.0, training=True).numpy(), np.where((-x > 0) & (-x * abs(w) < 6), -x, 0)
        )


@pytest.mark.parametrize("w", [0.0, -0.0, 1e-30, -1e-30, -1e-8])
def test_auto_relu_guard_keeps_output_finite_and_sign(w):
    x = torch.linspace(-5, 5, 101)
    y = auto_relu(x, torch.tensor(w), 6.0, training=True)
    assert torch.isfinite(y).all()
    flipped = w < 0
    active = (x < 0) if flipped else (x > 0)
    assert torch.equal(y != 0, active)
    w_param = torch.tensor(w, requires_grad=True)
    auto_relu(x, w_param).sum().backward()
    assert torch.isfinite(w_param.grad).all()


def test_autorelu_module_per_channel_and_scalar():
    x = torch.randn(4, 3, 5, 5)
    per_channel = AutoReLU(3, init=0.5)
    per_channel.weight.data = torch.tensor([0.5, -0.5, 0.25])
    y = per_channel(x)
    assert torch.allclose(y[:, 0], torch.relu(x[:, 0]))
    assert torch.allclose(y[:, 1], torch.relu(-x[:, 1]))
    scalar = AutoReLU(3, per_channel=False)
    assert scalar.weight.shape == (1,)
    assert torch.allclose(scalar(x), torch.relu(x))
    with pytest.raises(ValueError, match="init"):
        AutoReLU(3, init=1.5)


def test_sync_autorelu_global_and_layer_means():
    units = [AutoReLU(2), AutoReLU(4)]
    units[0].weight.data = torch.tensor([0.1, 0.3])
    units[1].weight.data = torch.tensor([-0.4, 0.0, 0.2, 0.2])
    model = nn.Sequential(*units)
    mean = sync_autorelu(model, scope="global")
    assert mean.item() == pytest.approx(0.4 / 6)
    for unit in units:
        assert torch.allclose(unit.weight, torch.full_like(unit.weight, 0.4 / 6))
    units[0].weight.data = torch.tensor([0.1, 0.3])
    units[1].weight.data = torch.tensor([-0.4, 0.0, 0.2, 0.2])
    sync_autorelu(model, scope="layer")
    assert torch.allclose(units[0].weight, torch.full((2,), 0.2))
    assert torch.allclose(units[1].weight, torch.zeros(4))
    assert units[1].weight.requires_grad  # still a trainable parameter after the in-place reset


def test_controller_noise_on_follows_sign_of_common_weight():
    model = build_model("resnet18", 7, noise="dynamic", stem="small", in_channels=1)
    controller = NoiseController(model)
    assert controller.method == "dynamic"
    units = [m for m in model.modules() if isinstance(m, AutoReLU)]
    units[0].weight.data.fill_(-10.0)  # drags the global mean below zero
    controller.start_epoch()
    controller.start_step()
    assert controller.noise_on and autorelu_weight(model) < 0
    assert all(torch.allclose(u.weight, units[0].weight[:1].expand_as(u.weight)) for u in units)
    for unit in units:
        unit.weight.data.fill_(0.2)
    controller.start_step()
    assert not controller.noise_on
    assert controller.epoch_noise_fraction() == pytest.approx(0.5)


def test_controller_requires_schedule_for_periodic_models():
    model = build_model("resnet18", 7, noise="periodic")
    with pytest.raises(ValueError, match="PeriodicSchedule"):
        NoiseController(model)


def test_adam_weight_decay_drives_autorelu_weight_across_zero():
    torch.manual_seed(0)
    model = build_model("resnet18", 7, noise="dynamic", stem="small", in_channels=1, autorelu_init=0.004)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    controller = NoiseController(model)
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 7, (8,))
    signs = []
    controller.start_epoch()
    for _ in range(12):
        controller.start_step()
        signs.append(controller.noise_on)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert signs[0] is False and True in signs, f"w never became negative: {autorelu_weight(model)}"


def test_autorelu_autograd_matches_the_composite_formula_in_both_directions():
    """grad='autograd' is autograd of cliff_relu(x * w) / |w|: same output, same gradients of x and w."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    w = torch.tensor([0.3, -0.2, 0.05], requires_grad=True)
    upstream = torch.randn(4, 3, 5, 5)
    wb = w.view(1, 3, 1, 1)
    reference = cliff_relu(x * wb, 6.0) / wb.abs()
    ref_x, ref_w = torch.autograd.grad(reference, (x, w), upstream)
    y = auto_relu(x, w, 6.0, grad="autograd")
    got_x, got_w = torch.autograd.grad(y, (x, w), upstream)
    torch.testing.assert_close(y, reference, rtol=0, atol=0)
    torch.testing.assert_close(got_x, ref_x, rtol=0, atol=0)
    torch.testing.assert_close(got_w, ref_w, rtol=0, atol=0)
    exact_x, exact_w = torch.autograd.grad(auto_relu(x, w, 6.0, grad="exact"), (x, w), upstream)
    torch.testing.assert_close(got_x, exact_x, rtol=1e-6, atol=1e-6)
    assert torch.equal(exact_w, torch.zeros(3)) and not torch.equal(got_w, torch.zeros(3))


def test_autograd_residue_spreads_the_weights_and_the_mean_reset_gathers_them():
    """With grad='autograd' each weight gets its own data-dependent update, so the reset does something."""
    torch.manual_seed(1)
    model = build_model("resnet18", 7, noise="dynamic", stem="small", in_channels=1, autorelu_init=0.004,
                        autorelu_grad="autograd")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    controller = NoiseController(model, trace=True)
    controller.start_epoch()
    for _ in range(3):
        controller.start_step()
        loss = nn.functional.cross_entropy(model(torch.randn(8, 1, 12, 12)), torch.randint(0, 7, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    weights = torch.cat([u.weight.detach() for u in model.modules() if isinstance(u, AutoReLU)])
    assert weights.max() - weights.min() > 1e-4  # spread apart by the step
    controller.start_step()
    weights = torch.cat([u.weight.detach() for u in model.modules() if isinstance(u, AutoReLU)])
    assert torch.all(weights == weights[0])  # gathered by the reset
    rows = controller.take_trace()
    assert len(rows) == 4
    w, w_min, w_max, grad_mean, grad_absmax = rows[1]
    assert w_min < w < w_max and grad_absmax > 0  # before the second reset: spread by a real gradient
    assert rows[0][1] == rows[0][2] == pytest.approx(0.004)  # the first step starts from the init
    assert controller.take_trace() == []


def test_autorelu_weight_follows_the_optimizer_alone_whatever_the_data():
    """With grad='exact' dL/dw is exactly zero, so the common weight is Adam on a zero-gradient parameter."""
    torch.manual_seed(1)
    model = build_model("resnet18", 7, noise="dynamic", stem="small", in_channels=1, autorelu_init=0.004,
                        autorelu_grad="exact")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    controller = NoiseController(model)
    lone = nn.Parameter(torch.tensor([0.004]))
    lone_optimizer = torch.optim.Adam([lone], lr=1e-3, weight_decay=1e-4)
    controller.start_epoch()
    for _ in range(10):
        controller.start_step()
        loss = nn.functional.cross_entropy(model(torch.randn(8, 1, 12, 12)), torch.randint(0, 7, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lone.grad = torch.zeros_like(lone)
        lone_optimizer.step()
        assert autorelu_weight(model) == pytest.approx(lone.item(), rel=1e-5, abs=1e-9)


def test_schedule_and_autorelu_weights_round_trip_through_a_checkpoint(tmp_path):
    from fernoise.checkpoint import load_checkpoint, save_checkpoint

    model = build_model("resnet18", 7, noise="periodic", stem="small", in_channels=1)
    controller = NoiseController(model, PeriodicSchedule(3, unit="step"))
    for _ in range(4):
        controller.start_step()
    dynamic = build_model("resnet18", 7, noise="dynamic", stem="small", in_channels=1)
    for unit in dynamic.modules():
        if isinstance(unit, AutoReLU):
            unit.weight.data.uniform_(-0.5, 0.5)
    save_checkpoint(tmp_path / "c.pt", {"model": {}, "classes": [], "input": {}, "state_dict": dynamic.state_dict(),
                                        "noise": controller.state_dict()})
    state = load_checkpoint(tmp_path / "c.pt")

    restored = NoiseController(build_model("resnet18", 7, noise="periodic", stem="small", in_channels=1),
                               PeriodicSchedule(1))
    restored.load_state_dict(state["noise"])
    assert restored.noise_on == controller.noise_on
    ahead = []
    for ctl in (controller, restored):
        steps = []
        for _ in range(7):
            ctl.start_step()
            steps.append(ctl.noise_on)
        ahead.append(steps)
    assert ahead[0] == ahead[1] == PINNED[3][4:11]  # steps 5-11 of the T=3 sequence
    fresh = build_model("resnet18", 7, noise="dynamic", stem="small", in_channels=1)
    fresh.load_state_dict(state["state_dict"])
    assert autorelu_weight(fresh) == pytest.approx(autorelu_weight(dynamic))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("weights", [(0.5, 0.25, 0.1), (0.5, -0.25, 0.1), (0.9, -0.9, 0.1), (1e-3, 1e-3, 1e-3)])
def test_fast_paths_give_the_plain_values_bit_for_bit(monkeypatch, training, weights):
    """fernoise.fastpath's CPU shortcuts (skipped sign and cliff passes, the flag read on the host)
    against the general path that a GPU or a captured graph takes."""
    from fernoise import fastpath

    def run() -> list[torch.Tensor]:
        x = (torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 3).requires_grad_()
        unit = AutoReLU(3, grad="exact").train(training)
        unit.weight.data = torch.tensor(weights)
        flip = SignFlip().train(training)
        outputs = []
        for active in (False, True):
            flip.active = active
            y = unit(flip(x))
            y.backward(torch.ones_like(y))
            outputs += [y.detach(), x.grad.clone(), unit.weight.grad.clone()]
            x.grad, unit.weight.grad = None, None
        return outputs

    fast = run()
    monkeypatch.setattr(fastpath, "host_readable", lambda t: False)
    plain = run()
    for a, b in zip(fast, plain):
        assert torch.equal(a, b) and torch.equal(torch.signbit(a), torch.signbit(b))
