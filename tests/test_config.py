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
    assert (both.noise, both.dropout_p) == ("periodic", 0.4)
    assert TrainConfig(method="periodic").dropout_p == 0.0
    assert TrainConfig(method="dynamic").noise == "dynamic"


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="presets: .*paper"):
        preset_path("nonexistent-preset")
