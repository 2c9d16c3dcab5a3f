"""Run directories as ``train`` writes them: finding and reading them, method keys, labels and colours,
and grouping runs by method for statistics over seeds.

Method keys are ``baseline``, ``dropout``, ``periodic``, ``dynamic``, ``dropout+periodic``
and ``dropout+dynamic`` (the paper's order); other keys come after these, by name. A run
trained with ``bn_recalibrate`` is evaluated differently, so its key gets :data:`RECALIBRATED`.
Both ``reports`` and ``evaluate DIR`` find and group runs here.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence, TypeVar

import numpy as np
import yaml

from fernoise.config import PREDATED
from fernoise.io import PathLike
from fernoise.runfiles import FINAL_BN_EVALUATION_FILE, FINAL_EVALUATION_FILE, METRIC_COLUMNS, TRACE_FILE, TRACE_HEADER

# The metrics.csv columns a report needs (train_f1 is not shown, so not required).
REQUIRED_METRICS = tuple(c for c in METRIC_COLUMNS if c != "train_f1")
SUMMARY_KEYS = ("best_val_f1", "best_epoch", "final_val_f1", "final_train_loss")
FINAL_MODEL = "final_model_"  # RunRecord.value's prefix for the numbers of final-evaluation.json
FINAL_MODEL_BN = "final_model_bn_"  # and of final-evaluation-bnrecal.json


class MethodInfo(NamedTuple):
    label: str  # Table 1 column header, as in the paper
    long_label: str  # legend text in figures
    color: str


METHODS: dict[str, MethodInfo] = {
    "baseline": MethodInfo("ResNet-18", "ResNet-18", "tab:blue"),
    "dropout": MethodInfo("+Dropout", "ResNet-18 + dropout", "tab:green"),
    "periodic": MethodInfo("+Periodic", "ResNet-18 + periodic noise", "tab:orange"),
    "dynamic": MethodInfo("+Dynamic", "ResNet-18 + dynamic noise", "tab:red"),
    "dropout+periodic": MethodInfo("Dropout+Periodic", "ResNet-18 + dropout + periodic noise", "tab:purple"),
    "dropout+dynamic": MethodInfo("Dropout+Dynamic", "ResNet-18 + dropout + dynamic noise", "tab:brown"),
}
_OTHER_COLORS = ("tab:pink", "tab:olive", "tab:cyan", "tab:gray")
# Suffix of the method key of a run trained with ``bn_recalibrate`` (e.g. "periodic+bn-recal").
RECALIBRATED = "+bn-recal"


class RunFormatError(ValueError):
    """A run directory is missing a file or holds a malformed one; the message names it."""


@dataclass
class RunRecord:
    path: Path
    method: str
    seed: int
    metrics: dict[str, np.ndarray]  # one float64 column per metrics.csv column
    summary: dict[str, Any]
    config: dict[str, Any]
    trace: dict[str, np.ndarray] | None = None  # autorelu_trace.csv of a dynamic run, when written
    final: dict[str, Any] | None = None  # final-evaluation.json: the final weights scored again, when done
    final_bn: dict[str, Any] | None = None  # final-evaluation-bnrecal.json: so with BatchNorm re-estimated

    @property
    def epochs(self) -> int:
        return int(self.metrics["epoch"].size)

    def value(self, field: str) -> float | None:
        """A summary.json number, or ``final_model_f1``/``final_model_acc``/``final_model_f1_<class>`` from
        final-evaluation.json (``final_model_bn_...`` from final-evaluation-bnrecal.json); None where the
        run has no such number."""
        for prefix, scores in ((FINAL_MODEL_BN, self.final_bn), (FINAL_MODEL, self.final)):
            if field.startswith(prefix):
                return _evaluation_number(scores, field.removeprefix(prefix))
        value = self.summary.get(field)
        return float(value) if is_number(value) else None

    @property
    def wall_seconds(self) -> float:
        return float(np.nansum(self.metrics["seconds"]))


# ----------------------------------------------------------------------------- loading


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise RunFormatError(f"{path}: missing (a run directory needs config.yaml, metrics.csv, summary.json)")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFormatError(f"{path}: cannot read: {exc}") from exc


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise RunFormatError(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(config, dict):
        raise RunFormatError(f"{path}: expected a mapping with 'method' and 'seed'")
    method, seed = config.get("method"), config.get("seed")
    if not isinstance(method, str) or not method:
        raise RunFormatError(f"{path}: 'method' missing or not a string")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RunFormatError(f"{path}: 'seed' missing or not an integer")
    return config


def _read_metrics(path: Path, columns: Sequence[str] = REQUIRED_METRICS, key: str | None = "epoch"
                  ) -> dict[str, np.ndarray]:
    """A numeric CSV as columns; ``key``, when given, must be an integer that increases from row to row."""
    reader = csv.reader(io.StringIO(_read_text(path)))
    header = [name.strip() for name in next(reader, [])]
    missing = [name for name in columns if name not in header]
    if missing:
        raise RunFormatError(f"{path}:1: header lacks column(s) {', '.join(missing)}")
    rows: list[list[float]] = []
    for fields in reader:
        line = reader.line_num
        if not any(field.strip() for field in fields):
            continue
        if len(fields) != len(header):
            raise RunFormatError(f"{path}:{line}: {len(fields)} fields, the header has {len(header)}")
        values = []
        for name, field in zip(header, fields):
            text = field.strip()
            try:
                values.append(float(text) if text else math.nan)  # an empty cell is a missing value
            except ValueError:
                raise RunFormatError(f"{path}:{line}: column '{name}': {text!r} is not a number") from None
        index = values[header.index(key)] if key else 0.0
        if key and (not math.isfinite(index) or index != int(index) or (rows and index <= rows[-1][header.index(key)])):
            raw = fields[header.index(key)].strip()
            raise RunFormatError(f"{path}:{line}: {key} {raw!r} is not an integer above the previous row's")
        rows.append(values)
    if not rows:
        raise RunFormatError(f"{path}: no {key or 'row'}s recorded")
    table = np.array(rows, dtype=np.float64)
    return {name: table[:, i] for i, name in enumerate(header)}


def _read_json_numbers(path: Path, keys: Sequence[str]) -> dict[str, Any]:
    """A JSON object whose ``keys`` must be numbers; errors name the file (and line)."""
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise RunFormatError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise RunFormatError(f"{path}: expected a JSON object")
    for key in keys:
        if not is_number(data.get(key)):
            raise RunFormatError(f"{path}: '{key}' missing or not a number")
    return data


def _evaluation_number(scores: dict[str, Any] | None, name: str) -> float | None:
    """``f1`` (macro), ``acc`` or ``f1_<class>`` of a final-evaluation JSON; None where it is absent."""
    if scores is None:
        return None
    value = {"f1": scores["macro_f1"], "acc": scores["accuracy"]}.get(name)
    if value is None and name.startswith("f1_"):
        value = scores["f1"].get(name.removeprefix("f1_"))
    return float(value) if is_number(value) else None


def _read_final_evaluation(path: Path) -> dict[str, Any] | None:
    """A final-evaluation JSON, checked for the numbers a report takes from it; None when absent."""
    if not path.is_file():
        return None
    final = _read_json_numbers(path, ("macro_f1", "accuracy"))
    if not isinstance(final.get("f1"), dict):
        raise RunFormatError(f"{path}: 'f1' (per-class F1 by class name) missing")
    return final


def is_number(value: Any) -> bool:
    """Numbers including NaN/inf: a diverged run is a result to report, not a malformed file."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_trace(path: PathLike) -> dict[str, np.ndarray]:
    """An ``autorelu_trace.csv`` (one row per training step) as columns."""
    return _read_metrics(Path(path), TRACE_HEADER, key=None)


def load_run(run_dir: PathLike) -> RunRecord:
    """Read one run directory; raises :class:`RunFormatError` naming the offending file (and line)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunFormatError(f"{path}: not a directory")
    config = _read_config(path / "config.yaml")
    trace_path = path / TRACE_FILE
    return RunRecord(
        path=path,
        method=method_key(config),
        seed=config["seed"],
        metrics=_read_metrics(path / "metrics.csv"),
        summary=_read_json_numbers(path / "summary.json", SUMMARY_KEYS),
        config={**PREDATED, **config},  # a key the run predates: what it did then
        trace=read_trace(trace_path) if trace_path.is_file() else None,
        final=_read_final_evaluation(path / FINAL_EVALUATION_FILE),
        final_bn=_read_final_evaluation(path / FINAL_BN_EVALUATION_FILE),
    )


def find_run_dirs(paths: Iterable[PathLike]) -> list[Path]:
    """The run directories given, or found below the given paths (any folder with a config.yaml)."""
    dirs = []
    for given in map(Path, paths):
        if (given / "config.yaml").is_file():
            dirs.append(given)
            continue
        found = sorted(p.parent for p in given.rglob("config.yaml")) if given.is_dir() else []
        if not found:
            raise RunFormatError(f"{given}: no run directories (with config.yaml) found")
        dirs.extend(found)
    return dirs


def load_runs(paths: Iterable[PathLike]) -> list[RunRecord]:
    """Load run directories; a path that is not itself a run is searched for runs below it."""
    return [load_run(path) for path in find_run_dirs(paths)]



def method_info(method: str) -> MethodInfo:
    """Labels and colour of a method; an unknown one gets its key as label and a colour fixed by its name."""
    fallback = _OTHER_COLORS[sum(map(ord, method)) % len(_OTHER_COLORS)]
    base = method.removesuffix(RECALIBRATED)
    if base != method and base in METHODS:
        info = METHODS[base]
        return MethodInfo(f"{info.label} (BN re-estimated)", f"{info.long_label}, BatchNorm re-estimated", fallback)
    return METHODS.get(method) or MethodInfo(method, method, fallback)


T = TypeVar("T")


def method_key(config: Mapping[str, Any]) -> str:
    """The method a run is grouped under: a run that re-estimated BatchNorm statistics is evaluated
    differently, so it is not a seed of the same method (its own Table 1 column, its BatchNorm section)."""
    return config["method"] + (RECALIBRATED if config.get("bn_recalibrate") else "")


def group_by_method(items: Iterable[T], method: Callable[[T], str], seed: Callable[[T], int],
                    where: Callable[[T], Path], separate: bool = False) -> dict[str, list[T]]:
    """Items grouped by method key in the paper's order (others after, by name), each group sorted by seed.

    Statistics over seeds need one run per seed: two runs of one method and seed raise ValueError
    naming both (``where``), unless ``separate`` splits such a method into one group per folder of
    runs, keyed ``"method (folder)"`` (runs of other experiments are not more seeds); a seed that
    repeats within one folder still raises.
    """
    by_method: dict[str, list[T]] = {}
    for item in items:
        by_method.setdefault(method(item), []).append(item)
    order = [m for m in METHODS if m in by_method] + sorted(m for m in by_method if m not in METHODS)
    groups: dict[str, dict[int, T]] = {}
    for key in order:
        repeats = len({seed(item) for item in by_method[key]}) < len(by_method[key])
        for item in by_method[key]:
            seeds = groups.setdefault(f"{key} ({where(item).parent.as_posix()})" if separate and repeats else key, {})
            if seed(item) in seeds:
                raise ValueError(
                    f"two runs of method {key!r} with seed {seed(item)}: {where(seeds[seed(item)])} and "
                    f"{where(item)}; statistics over seeds need one run per seed"
                )
            seeds[seed(item)] = item
    return {key: [seeds[s] for s in sorted(seeds)] for key, seeds in groups.items()}


def by_method(runs: Iterable[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs grouped by method (:func:`group_by_method`); one run per method and seed."""
    return group_by_method(runs, lambda run: run.method, lambda run: run.seed, lambda run: run.path)
