"""Configuration precedence and errors that name the file and line."""
from __future__ import annotations

import pytest

from fernoise.config import ConfigError, TrainConfig, load_config_file, resolve_config
from fernoise.config import preset_path


def test_paper_preset_holds_the_paper_protocol():
    cfg = resolve_config(preset_path("paper"))
    assert (cfg.model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.batch_size) == ("resnet18", "adam", 1e-4, 1e-4, 64)


def test_command_line_overrides_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.01\nepochs: 5\nmethod: periodic\n")
    cfg = resolve_config(path, epochs=2, lr=None)
    assert (cfg.lr, cfg.epochs, cfg.method) == (0.01, 2, "periodic")


def test_unknown_key_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\n\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3: unknown key 'learning_rate'"):
        load_config_file(path)


def test_wrong_type_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: three\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:1: epochs: expected an integer"):
        load_config_file(path)


def test_invalid_yaml_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("epochs: 3\nlr: [1e-4\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:\d+: invalid YAML"):
        load_config_file(path)


@pytest.mark.parametrize(
    "kwargs,message",
    [({"method": "magic"}, "method"), ({"epochs": 0}, "epochs"), ({"method": "dynamic", "position": "bn2"}, "bn2"),
     ({"dropout": 1.0}, "dropout")],
)
def test_invalid_values_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


def test_methods_map_to_noise_and_dropout():
    both = TrainConfig(method="dropout+periodic", dropout=0.4)
    assert (both.noise, both.model_kwargs(7, 1)["dropout"]) == ("periodic", 0.4)
    assert TrainConfig(method="periodic").model_kwargs(7, 1)["dropout"] == 0.0
    assert TrainConfig(method="dynamic").noise == "dynamic"


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="presets: .*paper"):
        preset_path("nonexistent-preset")


@pytest.mark.parametrize("override,key", [({"optimizer": "sgd"}, "optimizer: sgd"), ({"optimizer": "adamw"},
                                          "optimizer: adamw"), ({"weight_decay": 0.0}, "weight_decay: 0")])
def test_dynamic_that_could_never_switch_on_is_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        TrainConfig(method="dynamic", autorelu_grad="exact", **override)
    # with the autograd residue something still moves the weights: allowed, and warned about when training
    assert TrainConfig(method="dynamic", autorelu_grad="autograd", **override).dynamic_without_drive() == [key]
    assert TrainConfig(method="periodic", autorelu_grad="exact", **override).dynamic_without_drive() == []
    assert TrainConfig(method="dynamic", autorelu_grad="exact").dynamic_without_drive() == []


def test_the_autorelu_weights_own_adam_drives_dynamic_beside_any_optimizer():
    cfg = TrainConfig(method="dynamic", optimizer="sgd", autorelu_grad="exact", autorelu_adam_lr=1e-4)
    assert cfg.dynamic_without_drive() == []
    assert TrainConfig(method="dynamic", optimizer="sgd", weight_decay=0.0,
                       autorelu_adam_lr=1e-4).dynamic_without_drive() == ["weight_decay: 0"]
    with pytest.raises(ConfigError, match="autorelu_adam_lr: must be positive"):
        TrainConfig(method="dynamic", autorelu_adam_lr=0.0)
    with pytest.raises(ConfigError, match="capture.*autorelu_adam_lr"):
        TrainConfig(method="dynamic", device="cuda", capture=True, autorelu_adam_lr=1e-4)
    assert "autorelu_adam_lr" in TrainConfig(method="periodic").inert_keys()


def test_settings_a_method_does_not_use_do_not_block_reuse():
    from fernoise.config import config_changes

    saved = TrainConfig(method="periodic", autorelu_init=0.1, dropout=0.3).to_dict()
    assert config_changes(saved, TrainConfig(method="periodic", autorelu_init=0.01, autorelu_grad="exact",
                                             dropout=0.5)) == {}
    assert "interval" in config_changes(saved, TrainConfig(method="periodic", interval=2))
    dynamic = TrainConfig(method="dynamic", autorelu_init=0.1).to_dict()
    assert set(config_changes(dynamic, TrainConfig(method="dynamic", autorelu_init=0.01))) == {"autorelu_init"}
    assert "method" in config_changes(dynamic, TrainConfig(method="baseline"))
    del dynamic["autorelu_grad"]  # saved before the key existed: it ran the exact gradient
    assert set(config_changes(dynamic, TrainConfig(method="dynamic", autorelu_init=0.1))) == {"autorelu_grad"}


def test_quick_preset_dynamic_runs_are_noisy_and_periodic_ones_have_noisy_epochs():
    """The README's first command must show the noise: with the exact AutoReLU gradient the common
    weight is Adam on a lone zero-gradient parameter (pinned in test_noise), so it can be replayed here."""
    import math

    import torch

    from fernoise.noise import PeriodicSchedule

    cfg = resolve_config(preset_path("quick"), method="dynamic")
    assert cfg.autorelu_grad == "exact" and cfg.image_size == 32
    steps_per_epoch = math.ceil(cfg.train_limit / cfg.batch_size)
    w = torch.nn.Parameter(torch.tensor([cfg.autorelu_init]))
    optimizer = torch.optim.Adam([w], lr=cfg.lr, weight_decay=cfg.weight_decay)
    noisy = []
    for _ in range(cfg.epochs * steps_per_epoch):
        noisy.append(bool(w.detach() < 0))
        w.grad = torch.zeros_like(w)
        optimizer.step()
    shares = [sum(noisy[e * steps_per_epoch:(e + 1) * steps_per_epoch]) / steps_per_epoch for e in range(cfg.epochs)]
    assert all(s > 0 for s in shares) and 0.2 < sum(shares) / len(shares) < 0.8, shares
    schedule = PeriodicSchedule(cfg.interval, cfg.interval_unit)
    assert [schedule.advance() for _ in range(cfg.epochs)].count(True) >= 2
