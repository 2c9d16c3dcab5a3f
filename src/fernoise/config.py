"""Training configuration: defaults, YAML files and command-line overrides.

Precedence: :class:`TrainConfig` defaults < ``--config FILE.yaml`` < command-line
flags. The resolved configuration is saved as ``config.yaml`` in the run
directory. Errors in a YAML file name the file and line.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from fernoise.data.augment import PRESETS as AUGMENT_PRESETS
from fernoise.io import PathLike
from fernoise.models import POSITIONS, STEMS, check_noise
from fernoise.noise import AUTORELU_GRADS, SCHEDULE_UNITS, SYNC_SCOPES

# method -> (noise kind, uses dropout); the paper's variants and the obvious sixth.
METHODS: dict[str, tuple[str, bool]] = {
    "baseline": ("none", False),
    "dropout": ("none", True),
    "periodic": ("periodic", False),
    "dynamic": ("dynamic", False),
    "dropout+periodic": ("periodic", True),
    "dropout+dynamic": ("dynamic", True),
}
PAPER_METHODS = ("baseline", "dropout", "periodic", "dynamic", "dropout+periodic")

# The allowed values of every key that takes a name; the command line offers the same.
CHOICES: dict[str, tuple[str, ...]] = {
    "method": tuple(METHODS),
    "stem": STEMS,
    "position": POSITIONS,
    "interval_unit": SCHEDULE_UNITS,
    "autorelu_sync": SYNC_SCOPES,
    "autorelu_grad": AUTORELU_GRADS,
    "optimizer": ("adam", "adamw", "sgd"),
    "scheduler": ("none", "cosine", "onecycle"),
    "nonfinite": ("stop", "skip"),
    "device": ("auto", "cpu", "cuda"),
    "augment": AUGMENT_PRESETS,
    "precision": ("fp32", "bf16", "auto"),
}

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def preset_path(name_or_path: PathLike) -> Path:
    """A config file path, or the name of a preset shipped with fernoise (``paper``, ``quick``, ...)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    preset = CONFIG_DIR / f"{name_or_path}.yaml"
    if not preset.is_file():
        names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"no config file {path} and no preset of that name (presets: {names})")
    return preset


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key (and file and line)."""


@dataclass
class TrainConfig:
    # data
    data: str = "synthetic"
    data_format: Optional[str] = None
    image_size: int = 48
    channels: Optional[int] = None
    cache_dir: Optional[str] = None
    val_fraction: float = 0.1
    train_limit: Optional[int] = None
    val_limit: Optional[int] = None
    augment: str = "paper"
    train_crop: Optional[int] = None  # train on random crops of this many pixels; evaluation sees whole faces
    balanced_sampler: bool = False
    class_weighted_loss: bool = False
    label_smoothing: float = 0.0
    # model and noise
    method: str = "baseline"
    model: str = "resnet18"
    stem: str = "imagenet"
    width: int = 64  # fernoise's ResNets: channels of the first stage (ResNet-18: 64)
    position: str = "bn1"
    interval: int = 3
    interval_unit: str = "epoch"
    dropout: float = 0.3
    autorelu_init: float = 0.01
    autorelu_constant: float = 6.0
    autorelu_sync: str = "global"
    autorelu_grad: str = "autograd"
    autorelu_per_channel: bool = True
    # the AutoReLU weights' own Adam (this lr, constant; the run's weight decay, coupled) beside another optimizer
    autorelu_adam_lr: Optional[float] = None
    # optimisation (the paper: Adam, lr 1e-4, weight decay 1e-4, batch 64)
    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    scheduler: str = "none"
    warmup_epochs: float = 0.0  # onecycle: linear warm-up from zero over this many epochs, then linear decay to zero
    ema: float = 0.0  # decay per step of an exponential moving average of the weights (0: off); it is evaluated and saved
    nonfinite: str = "stop"
    # speed (fernoise.step): autocast precision, memory layout, CUDA-graph capture, data in device memory
    precision: str = "fp32"
    channels_last: bool = False
    capture: bool = False
    data_on_device: Optional[bool] = None
    # run
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 256
    tta_flip: bool = False
    tta_shift: int = 0  # test-time views also moved by this many pixels left, right, up and down (0: off)
    tta_zoom: float = 0.0  # test-time views also zoomed in and out by this fraction of the side (0: off)
    val_every: int = 1  # validate after every this many epochs, and always after the last
    bn_recalibrate: int = 0  # clean training batches to re-estimate BatchNorm statistics on before each evaluation

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}: {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        for key in ("image_size", "width", "interval", "epochs", "batch_size", "eval_batch_size", "val_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be a positive integer, got {getattr(self, key)}")
        if self.train_crop is not None and not 0 < self.train_crop <= self.image_size:
            raise ConfigError(f"train_crop: must lie between 1 and image_size ({self.image_size}) pixels, "
                              f"got {self.train_crop}")
        if self.train_crop is not None and self.augment == "none":
            raise ConfigError("train_crop: a training crop is an augmentation; it needs augment other than none")
        if self.bn_recalibrate < 0:
            raise ConfigError(f"bn_recalibrate: must be 0 (off) or a number of batches, got {self.bn_recalibrate}")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be positive, got {self.lr}")
        if self.autorelu_adam_lr is not None and self.autorelu_adam_lr <= 0:
            raise ConfigError(f"autorelu_adam_lr: must be positive (or unset), got {self.autorelu_adam_lr}")
        if self.capture and self.autorelu_adam_lr is not None and self.noise == "dynamic":
            raise ConfigError("capture: a CUDA graph records the run's optimizer only; unset autorelu_adam_lr or capture")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema: must lie in [0, 1) (0: off; e.g. 0.999), got {self.ema}")
        if self.ema and not self.bn_recalibrate:
            raise ConfigError("ema: the averaged weights need BatchNorm statistics of their own, re-estimated before "
                              "each evaluation: set bn_recalibrate (e.g. 20 batches)")
        for key in ("warmup_epochs", "tta_shift", "tta_zoom"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must not be negative, got {getattr(self, key)}")
        if self.tta_zoom >= 1:
            raise ConfigError(f"tta_zoom: must be below 1 (the zoomed-in view shows 1 - tta_zoom), got {self.tta_zoom}")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"warmup_epochs: {self.warmup_epochs} is longer than the run ({self.epochs} epochs)")
        if self.nesterov and self.optimizer != "sgd":
            raise ConfigError(f"nesterov: Nesterov momentum belongs to optimizer: sgd, not {self.optimizer}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout: must lie in [0, 1), got {self.dropout}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction: must lie in (0, 1), got {self.val_fraction}")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels: must be 1 or 3 (or unset for automatic), got {self.channels}")
        if self.capture and self.nonfinite == "skip":
            raise ConfigError("capture: a step recorded in a CUDA graph cannot skip non-finite losses; "
                              "use nonfinite: stop or capture: false")
        if self.capture and self.scheduler == "onecycle":
            raise ConfigError("capture: a CUDA graph is recorded anew at every learning-rate change, and onecycle "
                              "changes it every step; use capture: false or another scheduler")
        if self.capture and self.device == "cpu":
            raise ConfigError("capture: CUDA graphs need a CUDA device; set capture: false for device: cpu")
        try:
            check_noise(self.noise, self.position)
        except ValueError as exc:
            raise ConfigError(f"position: {exc}") from None
        undriven = self.dynamic_without_drive()
        if undriven and self.autorelu_grad == "exact":
            raise ConfigError(
                f"{', '.join(undriven)}: with autorelu_grad: exact the AutoReLU weights get a zero gradient, so only "
                "Adam's coupled weight decay moves them; with these settings they never change sign and the dynamic "
                "method is the baseline. Use optimizer: adam (or autorelu_adam_lr) with weight_decay > 0, or "
                "autorelu_grad: autograd"
            )

    def dynamic_without_drive(self) -> list[str]:
        """The settings that leave the AutoReLU weights without a push through zero (empty if none, or not dynamic).

        The weights' loss gradient is zero up to rounding, so what makes their common
        value change sign is Adam's coupled weight decay (a steady pull towards zero,
        which Adam's momentum carries across). SGD moves them by only ``lr`` times that
        tiny gradient, AdamW decays them geometrically, and without weight decay only
        the rounding residue of ``autorelu_grad: autograd`` (scaled up by Adam) moves them.
        ``autorelu_adam_lr`` gives them an Adam of their own beside any optimizer.
        """
        if self.noise != "dynamic":
            return []
        own_adam = self.optimizer == "adam" or self.autorelu_adam_lr is not None
        keys = [] if own_adam else [f"optimizer: {self.optimizer}"]
        if self.weight_decay == 0:
            keys.append("weight_decay: 0")
        return keys

    def inert_keys(self) -> tuple[str, ...]:
        """Settings that cannot change this run's result, given its method (e.g. the AutoReLU
        settings of a periodic run); a change to them does not block resuming or reusing it."""
        keys = []
        if self.noise != "dynamic":
            keys += [f.name for f in dataclasses.fields(self) if f.name.startswith("autorelu_")]
        if self.noise != "periodic":
            keys += ["interval", "interval_unit"]
        if self.noise == "none":
            keys.append("position")
        if not self.uses_dropout:
            keys.append("dropout")
        return tuple(keys)

    @property
    def noise(self) -> str:
        """The method's noise: none, periodic or dynamic."""
        return METHODS[self.method][0]

    @property
    def uses_dropout(self) -> bool:
        """Whether the method has dropout (with probability ``dropout``; without, the model gets none)."""
        return METHODS[self.method][1]

    def model_kwargs(self, num_classes: int, in_channels: int) -> dict[str, Any]:
        """The :func:`fernoise.models.build_model` keywords of this run, as its checkpoints store them."""
        return {
            "name": self.model,
            "num_classes": num_classes,
            "noise": self.noise,
            "position": self.position,
            "dropout": self.dropout if self.uses_dropout else 0.0,
            "in_channels": in_channels,
            "stem": self.stem,
            "width": self.width,
            "autorelu_init": self.autorelu_init,
            "autorelu_constant": self.autorelu_constant,
            "autorelu_grad": self.autorelu_grad,
            "autorelu_per_channel": self.autorelu_per_channel,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# Options that change how fast a run goes but not what it computes.
SPEED_ONLY = ("device", "capture", "data_on_device")


# What a run saved before a key existed did, where that differs from today's default.
PREDATED = {"autorelu_grad": "exact"}


def config_changes(saved: dict[str, Any], cfg: TrainConfig, ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved, now)}`` for every setting that differs and matters to the run's method.

    A key the saved run predates counts as what that run did: :data:`PREDATED`'s
    value, else the default.
    """
    before = {**TrainConfig().to_dict(), **PREDATED, **saved}
    now = cfg.to_dict()
    inert = cfg.inert_keys() if before.get("method") == cfg.method else ()
    keys = sorted((set(before) | set(now)) - set(ignore) - set(inert))
    return {k: (before.get(k), now.get(k)) for k in keys if before.get(k) != now.get(k)}


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _coerce(key: str, value: Any) -> Any:
    hint = _HINTS[key]
    optional = type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: a value is required")
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)  # YAML reads 1e-4 as a string
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if base is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def load_config_file(path: PathLike) -> dict[str, Any]:
    """Read a YAML config into checked values; errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or root is None:
        raise ConfigError(f"{path}:1: a config file must be a mapping of keys to values")
    lines = {key.value: key.start_mark.line + 1 for key, _ in root.value}
    values = {}
    for key, value in data.items():
        if key not in _FIELDS:
            raise ConfigError(f"{path}:{lines.get(key, '?')}: unknown key {key!r}; known keys: {', '.join(_FIELDS)}")
        try:
            values[key] = _coerce(key, value)
        except ConfigError as exc:
            raise ConfigError(f"{path}:{lines.get(key, '?')}: {exc}") from None
    return values


def run_config_values(run_dir: PathLike) -> dict[str, Any]:
    """A run directory's ``config.yaml`` as checked values, with :data:`PREDATED`'s value for every key the
    run predates: what that run did, not today's default."""
    return {**PREDATED, **load_config_file(Path(run_dir) / "config.yaml")}


def resolve_run_config(run_dir: PathLike, **overrides: Any) -> TrainConfig:
    """The configuration of the run in ``run_dir`` (as :func:`run_config_values`), then every override that is not None."""
    path = Path(run_dir) / "config.yaml"
    values = run_config_values(run_dir)
    values.update({key: _coerce(key, value) for key, value in overrides.items() if value is not None})
    try:
        return TrainConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def resolve_config(config_file: Optional[PathLike] = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the YAML file, then every override that is not None."""
    values = load_config_file(config_file) if config_file else {}
    for key, value in overrides.items():
        if key not in _FIELDS:
            raise ConfigError(f"unknown option {key!r}")
        if value is not None:
            values[key] = _coerce(key, value)
    try:
        return TrainConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"{config_file}: {exc}" if config_file else str(exc)) from None
