"""Table 1, the paper's figures, paired comparisons over seeds and ``report.md``.

Reads run directories as written by ``train`` (see docs/ARCHITECTURE.md). Method
keys are ``baseline``, ``dropout``, ``periodic``, ``dynamic``, ``dropout+periodic``
and ``dropout+dynamic``; other keys are reported too, after these, by name.

Statistics over seeds: means with the sample standard deviation (ddof=1, undefined
for one seed); differences to the baseline are paired by seed and get a
t-distribution confidence interval. No scipy: the t quantile is computed here.

Figures are drawn on ``matplotlib.figure.Figure`` objects rendered by Agg, so
nothing touches pyplot's global state or the user's backend.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any, Iterable, Mapping, NamedTuple, Sequence, Union

import numpy as np
import yaml
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .io import write_bytes_atomic, write_text_atomic
from .runfiles import METRIC_COLUMNS, TRACE_FILE, TRACE_HEADER

PathLike = Union[str, "os.PathLike[str]"]

# The metrics.csv columns a report needs (train_f1 is not shown, so not required).
REQUIRED_METRICS = tuple(c for c in METRIC_COLUMNS if c != "train_f1")
SUMMARY_KEYS = ("best_val_f1", "best_epoch", "final_val_f1", "final_train_loss")


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

# (loss figure, F1 figure, first method, second method) as in the paper's Figures 3-11.
# The paper's Fig. 9 shows F1 only; the loss of that pair is drawn too, under the same number.
FIGURE_PAIRS: tuple[tuple[int, int, str, str], ...] = (
    (3, 4, "baseline", "periodic"),
    (5, 6, "baseline", "dropout"),
    (7, 8, "dropout", "dropout+periodic"),
    (9, 9, "baseline", "dropout+periodic"),
    (10, 11, "periodic", "dynamic"),
)

# Table 1 rows: (key, summary.json field, row label, number format).
TABLE_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("train_loss", "final_train_loss", "Train loss (final epoch)", ".4g"),
    ("val_f1", "best_val_f1", "Validation macro-F1 (max over epochs)", ".4f"),
    ("final_val_f1", "final_val_f1", "Validation macro-F1 (final epoch)", ".4f"),
    ("test_f1", "test_f1", "Test macro-F1", ".4f"),
    ("test_acc", "test_acc", "Test accuracy", ".4f"),
)
# Paired differences to the baseline: (key, summary.json field, heading). The max over epochs is
# the paper's number but is chosen on the validation set itself; the final epoch is not.
COMPARED: tuple[tuple[str, str, str], ...] = (
    ("val_f1", "best_val_f1", "Δ max val F1"),
    ("final_val_f1", "final_val_f1", "Δ final val F1"),
    ("train_loss", "final_train_loss", "Δ final train loss"),
)




class Claim(NamedTuple):
    method: str
    reference: str
    expected: str  # "better", "not better" or "similar": the claimed sign of method - reference in max val F1
    text: str  # the paper's claim, in our words, with where it makes it


# The paper's claims about its comparison (sections 4.3-4.5); report.md checks each on the runs it has.
PAPER_CLAIMS: tuple[Claim, ...] = (
    Claim("periodic", "baseline", "better", "periodic noise improves on the baseline (section 4.3, Table 1)"),
    Claim("dropout", "baseline", "not better", "dropout alone does not improve on the baseline (section 4.4)"),
    Claim("dynamic", "periodic", "similar", "dynamic noise performs about as well as periodic noise (section 4.5)"),
    Claim("dropout+periodic", "dropout", "better",
          "periodic noise improves a network that already has dropout (section 4.4, Figs. 7-8)"),
)


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

    @property
    def epochs(self) -> int:
        return int(self.metrics["epoch"].size)

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


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise RunFormatError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    if not isinstance(summary, dict):
        raise RunFormatError(f"{path}: expected a JSON object")
    for key in SUMMARY_KEYS:
        if not _is_number(summary.get(key)):
            raise RunFormatError(f"{path}: '{key}' missing or not a number")
    return summary


def _is_number(value: Any) -> bool:
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
    # evaluated differently, so not a seed of the same method: its own column and its BatchNorm section
    method = config["method"] + (RECALIBRATED if config.get("bn_recalibrate") else "")
    return RunRecord(
        path=path,
        method=method,
        seed=config["seed"],
        metrics=_read_metrics(path / "metrics.csv"),
        summary=_read_summary(path / "summary.json"),
        config=config,
        trace=read_trace(trace_path) if trace_path.is_file() else None,
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


# What report.md's "Data" line says of the runs: (config key, how it is introduced).
_DESCRIBED = (("image_size", "image size"), ("augment", "augment"), ("epochs", "epochs"), ("batch_size", "batch"),
              ("optimizer", "optimizer"), ("lr", "lr"), ("weight_decay", "weight decay"),
              ("interval", "periodic interval T"), ("interval_unit", "interval unit"), ("precision", "precision"),
              ("bn_recalibrate", "BatchNorm statistics re-estimated on clean training batches"))
# Keys left out of the line when they are 0 in every run: an option that was not used.
_DESCRIBED_WHEN_USED = {"bn_recalibrate"}


def describe_runs(runs: Sequence[RunRecord]) -> str:
    """One line on the data and protocol of ``runs``, from their configs; differing values are joined by '/'."""
    def values(key: str) -> str:
        return "/".join(sorted({format(run.config[key], "g" if isinstance(run.config[key], float) else "")
                                for run in runs if key in run.config}))

    def used(key: str) -> bool:
        return key not in _DESCRIBED_WHEN_USED or any(run.config.get(key) for run in runs)

    parts = [f"{label} {values(key)}" for key, label in _DESCRIBED if values(key) and used(key)]
    seeds = sorted({run.seed for run in runs})
    return f"{values('data') or 'data not recorded'}: " + ", ".join(parts + [f"seeds {seeds}"])


def report_folders(paths: Sequence[PathLike], out: PathLike, command: str) -> tuple[Path, list[Path]]:
    """``report.md``, Table 1 and the figures of the finished runs under ``paths``, written into ``out``.

    Runs without ``summary.json`` (still training, or stopped) are left out and listed in the
    report; returns the report's path and those runs.
    """
    dirs = find_run_dirs(paths)
    unfinished = [path for path in dirs if not (path / "summary.json").is_file()]
    runs = [load_run(path) for path in dirs if path not in unfinished]
    if not runs:
        raise RunFormatError(f"{', '.join(map(str, paths))}: no finished runs (with summary.json) yet")
    extra = {"Not finished, left out": ", ".join(map(str, unfinished))} if unfinished else None
    return write_report(runs, out, command, describe_runs(runs), extra), unfinished


# ----------------------------------------------------------------------------- grouping and statistics


def method_info(method: str) -> MethodInfo:
    """Labels and colour of a method; an unknown one gets its key as label and a colour fixed by its name."""
    fallback = _OTHER_COLORS[sum(map(ord, method)) % len(_OTHER_COLORS)]
    base = method.removesuffix(RECALIBRATED)
    if base != method and base in METHODS:
        info = METHODS[base]
        return MethodInfo(f"{info.label} (BN re-estimated)", f"{info.long_label}, BatchNorm re-estimated", fallback)
    return METHODS.get(method) or MethodInfo(method, method, fallback)


def _by_method(runs: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs grouped by method in the paper's order, each sorted by seed; one run per (method, seed)."""
    groups: dict[str, dict[int, RunRecord]] = {}
    for run in runs:
        seeds = groups.setdefault(run.method, {})
        if run.seed in seeds:
            raise ValueError(
                f"two runs of method {run.method!r} with seed {run.seed}: {seeds[run.seed].path} and {run.path}; "
                f"statistics over seeds need one run per seed"
            )
        seeds[run.seed] = run
    known = [m for m in METHODS if m in groups]
    order = known + sorted(m for m in groups if m not in METHODS)
    return {m: [groups[m][s] for s in sorted(groups[m])] for m in order}


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1); None where undefined."""
    if not values:
        return None, None
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), (float(array.std(ddof=1)) if array.size > 1 else None)


def _t_cdf_two_sided(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer df (closed form, Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:  # odd: (2/pi) * (theta + sin * (cos + 2/3 cos^3 + 2*4/(3*5) cos^5 + ...))
        term, total = c, 0.0
        for j in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c * c * (2 * j) / (2 * j + 1)
        return 2.0 / math.pi * (theta + s * total)
    term, total = 1.0, 0.0  # even: sin * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
    for j in range(1, df // 2 + 1):
        total += term
        term *= c * c * (2 * j - 1) / (2 * j)
    return s * total


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t distribution (integer df >= 1), by bisection on the exact CDF.

    Above df 1000 the CDF series gets long and the Cornish-Fisher expansion around the normal
    quantile (Abramowitz & Stegun 26.7.5) is accurate to ~1e-12, so that is used instead.
    """
    if not 0.0 < p < 1.0 or df < 1 or int(df) != df:
        raise ValueError(f"t_quantile needs 0 < p < 1 and an integer df >= 1, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if df > 1000:
        z = NormalDist().inv_cdf(p)
        terms = (
            (z**3 + z) / 4,
            (5 * z**5 + 16 * z**3 + 3 * z) / 96,
            (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
            (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
        )
        return z + sum(term / df ** (k + 1) for k, term in enumerate(terms))
    mass = 2.0 * p - 1.0  # P(|T| <= t) at the quantile
    low, high = 0.0, 1.0
    while _t_cdf_two_sided(high, int(df)) < mass:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mid in (low, high):
            break
        low, high = (mid, high) if _t_cdf_two_sided(mid, int(df)) < mass else (low, mid)
    return 0.5 * (low + high)


def table1(runs: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One row per method in the paper's column order, with mean, std and n of each Table 1 quantity.

    Keys: ``method``, ``label``, ``n_seeds``, ``seeds`` and ``{q}_mean``, ``{q}_std``, ``{q}_n``
    for q in ``train_loss`` (final epoch), ``val_f1`` (best epoch), ``test_f1``, ``test_acc``
    (test values only from runs whose summary has them). Undefined statistics are None.
    """
    groups = _by_method(runs)
    rows = []
    for method, group in groups.items():
        row: dict[str, Any] = {
            "method": method,
            "label": method_info(method).label,
            "n_seeds": len(group),
            "seeds": [run.seed for run in group],
        }
        for key, field, _, _ in TABLE_ROWS:
            values = [run.summary[field] for run in group if _is_number(run.summary.get(field))]
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values)
            row[f"{key}_n"] = len(values)
        rows.append(row)
    return rows


def compare_to_baseline(
    runs: Sequence[RunRecord], baseline: str = "baseline", confidence: float = 0.95
) -> list[dict[str, Any]]:
    """Per method, the seed-paired difference (method - baseline) of max val F1 and final train loss.

    Pairing by seed removes the seed-to-seed variance both share. For each quantity q in
    ``val_f1``/``train_loss``: ``{q}_diff_mean``, ``{q}_diff_std`` and the t-interval
    ``{q}_diff_ci_low``/``{q}_diff_ci_high`` (None for fewer than two pairs). Empty if there
    is no baseline run.
    """
    groups = _by_method(runs)
    if baseline not in groups:
        return []
    base = {run.seed: run for run in groups[baseline]}
    rows = []
    for method, group in groups.items():
        if method == baseline:
            continue
        paired = [(run, base[run.seed]) for run in group if run.seed in base]
        row: dict[str, Any] = {
            "method": method,
            "label": method_info(method).label,
            "baseline": baseline,
            "n": len(paired),
            "seeds": [run.seed for run, _ in paired],
            "unpaired_seeds": [run.seed for run in group if run.seed not in base],
            "confidence": confidence,
        }
        for key, field, _ in COMPARED:
            diffs = [run.summary[field] - ref.summary[field] for run, ref in paired]
            mean, std = _mean_std(diffs)
            half = None
            if std is not None:
                half = t_quantile(0.5 + confidence / 2, len(diffs) - 1) * std / math.sqrt(len(diffs))
            row[f"{key}_diff_mean"], row[f"{key}_diff_std"] = mean, std
            row[f"{key}_diff_ci_low"] = None if half is None else mean - half
            row[f"{key}_diff_ci_high"] = None if half is None else mean + half
        rows.append(row)
    return rows


def check_claim(claim: Claim, runs: Sequence[RunRecord], confidence: float = 0.95) -> dict[str, Any]:
    """The seed-paired difference (method - reference) of max val F1 behind ``claim``, and a verdict.

    With an interval: ``better`` holds when it lies above 0 and is contradicted below 0;
    ``not better`` holds below 0, is contradicted above 0 and otherwise "not contradicted";
    ``similar`` is contradicted when it excludes 0 and otherwise only "not contradicted" (its width says how similar the methods are shown to be).
    Anything else, or a single pair (no interval), is "not shown" / "one seed". Keys:
    ``n``, ``mean``, ``low``, ``high`` (None where undefined) and ``verdict``.
    """
    row = next((r for r in compare_to_baseline(runs, claim.reference, confidence) if r["method"] == claim.method),
               None)
    if row is None or row["n"] == 0:
        return {"n": 0, "mean": None, "low": None, "high": None, "verdict": "not measured (no paired runs)"}
    mean, low, high = row["val_f1_diff_mean"], row["val_f1_diff_ci_low"], row["val_f1_diff_ci_high"]
    result = {"n": row["n"], "mean": mean, "low": low, "high": high}
    if low is None:
        return {**result, "verdict": "one seed: no interval, no verdict"}
    above, below = low > 0, high < 0
    if claim.expected == "better":
        verdict = "holds" if above else "contradicted: worse" if below else "not shown: the interval contains 0"
    elif claim.expected == "not better":
        # an interval around 0 fails to show a gain, which is weaker than showing there is none
        verdict = ("contradicted: better" if above else "holds: worse" if below
                   else "not contradicted: the interval contains 0")
    else:
        verdict = "contradicted: different" if above or below else "not contradicted: the interval contains 0"
    return {**result, "verdict": verdict}


def _claims_markdown(runs: Sequence[RunRecord], confidence: float = 0.95) -> str:
    lines = [f"| The paper's claim | Δ max val F1 (method − reference) | {confidence:.0%} CI | paired seeds | verdict |",
             "|---|---|---|---|---|"]
    for claim in PAPER_CLAIMS:
        c = check_claim(claim, runs, confidence)
        mean = "—" if c["mean"] is None else f"{c['mean']:+.4f}"
        interval = "n/a" if c["low"] is None else f"[{c['low']:+.4f}, {c['high']:+.4f}]"
        lines.append(f"| {claim.text} | {mean} | {interval} | {c['n']} | {c['verdict']} |")
    return ("Each claim as a seed-paired difference in max validation macro-F1 with a t interval. A verdict "
            "holds or is contradicted only when the interval says so; with few seeds most intervals are wide, "
            "so \"not shown\" is a common and honest outcome.\n\n" + "\n".join(lines))


# ----------------------------------------------------------------------------- tables


def _cell(mean: float | None, std: float | None, n: int, fmt: str) -> str:
    if mean is None:
        return "—"
    shown = f"{mean:{fmt}}"
    if std is None:
        return f"{shown} (n={n})"
    # the spread to the mean's last shown digit: 0.1417 ± 0.0018, not ± 0.001796
    spread_fmt = fmt if "e" in shown.lower() else f".{len(shown.partition('.')[2])}f"
    return f"{shown} ± {std:{spread_fmt}} (n={n})"


def mean_std_cell(values: Sequence[float], fmt: str) -> str:
    """``mean ± std (n=N)`` of ``values`` (sample std), as the tables show it."""
    return _cell(*_mean_std(values), len(values), fmt)


def _table1_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Paper layout: methods as columns, quantities as rows; test rows only when some run has them."""
    lines = [
        "| | " + " | ".join(row["label"] for row in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for key, _, title, fmt in TABLE_ROWS:
        if not any(row[f"{key}_n"] for row in rows):
            continue
        cells = [_cell(row[f"{key}_mean"], row[f"{key}_std"], row[f"{key}_n"], fmt) for row in rows]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nCells: mean ± sample std (ddof=1) over seeds, n = number of seeds.\n"


def write_table1_md(rows: Sequence[Mapping[str, Any]], path: PathLike) -> None:
    write_text_atomic(path, "# Table 1\n\n" + _table1_markdown(rows))


def write_table1_csv(rows: Sequence[Mapping[str, Any]], path: PathLike) -> None:
    """One line per method; empty cells where a statistic is undefined; seeds joined by ';'."""
    columns = ["method", "label", "n_seeds", "seeds"]
    columns += [f"{key}_{stat}" for key, *_ in TABLE_ROWS for stat in ("mean", "std", "n")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        values = {**row, "seeds": ";".join(map(str, row["seeds"]))}
        writer.writerow(["" if values[c] is None else values[c] for c in columns])
    write_text_atomic(path, buffer.getvalue())


def _comparison_markdown(rows: Sequence[Mapping[str, Any]], baseline_label: str) -> str:
    level = f"{rows[0]['confidence']:.0%}" if rows else "95%"
    header = "| Method | paired seeds | "
    header += " | ".join(f"{title} (mean ± std) | {level} CI" for _, _, title in COMPARED)
    lines = [header + " |", "|---|---|" + "---|---|" * len(COMPARED)]
    for row in rows:
        cells = [row["label"], str(row["n"])]
        for key, _, _ in COMPARED:
            mean, std = row[f"{key}_diff_mean"], row[f"{key}_diff_std"]
            cells.append("—" if mean is None else f"{mean:+.4f}" + ("" if std is None else f" ± {std:.4f}"))
            low, high = row[f"{key}_diff_ci_low"], row[f"{key}_diff_ci_high"]
            cells.append("n/a" if low is None else f"[{low:+.4f}, {high:+.4f}]")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"Δ = method − {baseline_label}, paired by seed; positive Δ F1 is better, negative Δ loss is a lower "
        f"training loss. CI: t distribution with n−1 degrees of freedom; n/a for a single pair."
    ]
    notes += [
        f"{row['label']}: seeds {row['unpaired_seeds']} have no {baseline_label} run and are left out."
        for row in rows
        if row["unpaired_seeds"]
    ]
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes)


# ----------------------------------------------------------------------------- figures


def _save(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150)
    write_bytes_atomic(path, buffer.getvalue())


def _curves(group: Sequence[RunRecord], column: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs (union over seeds) and a seeds x epochs matrix, NaN where a run has no value."""
    epochs = np.unique(np.concatenate([run.metrics["epoch"] for run in group]))
    values = np.full((len(group), epochs.size), np.nan)
    for i, run in enumerate(group):
        if column in run.metrics:
            values[i, np.searchsorted(epochs, run.metrics["epoch"])] = run.metrics[column]
    return epochs, values


def _nan_reduce(fn, values: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # an epoch where every seed is NaN stays NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(values, axis=0)


def _has_noise(group: Sequence[RunRecord]) -> bool:
    return any(np.nanmax(run.metrics["noise_on"], initial=0.0) > 0 for run in group)


def _shade_noise(ax: Any, group: Sequence[RunRecord], color: str) -> None:
    """Shade each epoch by the seed-mean of ``noise_on`` (clipped to [0, 1]); alpha grows with it."""
    epochs, values = _curves(group, "noise_on")
    level = np.clip(np.nan_to_num(_nan_reduce(np.nanmean, values)), 0.0, 1.0)
    start = 0
    for i in range(1, epochs.size + 1):  # one span per stretch of equal level
        if i == epochs.size or level[i] != level[start] or epochs[i] != epochs[i - 1] + 1:
            if level[start] > 0:
                alpha = 0.3 * level[start]
                ax.axvspan(epochs[start] - 0.5, epochs[i - 1] + 0.5, color=color, alpha=alpha, lw=0, zorder=0)
            start = i


def _plot_pair(
    groups: Mapping[str, list[RunRecord]],
    methods: tuple[str, str],
    column: str,
    ylabel: str,
    title: str,
    path: Path,
) -> None:
    """The one figure type of Figs. 3-11: seed mean and min-max band of ``column`` for two methods."""
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    noisy = [m for m in reversed(methods) if _has_noise(groups[m])]
    extra_handles = [Patch(facecolor="0.6", alpha=0.25, label="min–max over seeds")]
    if noisy:
        info = method_info(noisy[0])
        _shade_noise(ax, groups[noisy[0]], info.color)
        label = f"noise on ({info.label}; paler = fewer seeds)"
        extra_handles.append(Patch(facecolor=info.color, alpha=0.3, label=label))
    for method in methods:
        info = method_info(method)
        epochs, values = _curves(groups[method], column)
        mean = _nan_reduce(np.nanmean, values)
        ax.plot(epochs, mean, color=info.color, lw=1.8, label=f"{info.long_label} (mean, n={len(values)})")
        if len(values) > 1:
            low, high = _nan_reduce(np.nanmin, values), _nan_reduce(np.nanmax, values)
            ax.fill_between(epochs, low, high, color=info.color, alpha=0.2, lw=0)
    ax.set(xlabel="epoch", ylabel=ylabel)
    ax.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=10)  # long titles overflow the default
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(handles=ax.get_legend_handles_labels()[0] + extra_handles, fontsize=8, loc="best")
    _save(fig, path)


def _trace_epochs(trace: Mapping[str, np.ndarray]) -> np.ndarray:
    """Each traced step's position in epochs: epoch e's steps spread over (e - 1, e]."""
    epochs = trace["epoch"]
    per_epoch = {e: np.count_nonzero(epochs == e) for e in np.unique(epochs)}
    return epochs - 1 + trace["step"] / np.array([per_epoch[e] for e in epochs])


def _plot_autorelu(groups: Mapping[str, list[RunRecord]], path: Path) -> bool:
    """The common AutoReLU weight per seed, one panel per method that logs it; False if none does.

    Step by step where the run has an AutoReLU trace, else once per epoch from metrics.csv.
    """
    logged = {
        method: [run for run in group if run.trace is not None
                 or np.isfinite(run.metrics.get("autorelu_w", np.array([np.nan]))).any()]
        for method, group in groups.items()
    }
    logged = {method: group for method, group in logged.items() if group}
    if not logged:
        return False
    fig = Figure(figsize=(7.5, 3.4 * len(logged)), layout="constrained")
    for ax, (method, group) in zip(fig.subplots(len(logged), 1, squeeze=False)[:, 0], logged.items()):
        info = method_info(method)
        _shade_noise(ax, group, "0.5")
        for run in group:
            if run.trace is not None:
                ax.plot(_trace_epochs(run.trace), run.trace["w"], lw=0.8, label=f"seed {run.seed} (every step)")
            else:
                ax.plot(run.metrics["epoch"], run.metrics["autorelu_w"], lw=1.4, label=f"seed {run.seed} (end of epoch)")
        ax.axhline(0.0, color="black", lw=0.9)
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.set(xlabel="epoch", ylabel="AutoReLU weight w", title=f"Common AutoReLU weight: {info.long_label}")
        ax.grid(alpha=0.3)
        shading = Patch(facecolor="0.5", alpha=0.3, label="noise on (seed mean)")
        handles = ax.get_legend_handles_labels()[0] + [shading]
        ax.legend(handles=handles, fontsize=8, loc="best")
    _save(fig, path)
    return True


def _stretches(on: np.ndarray) -> list[int]:
    """Lengths of the runs of consecutive True values."""
    edges = np.diff(np.concatenate([[0], on.astype(np.int8), [0]]))
    return list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))


def trace_stats(trace: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """How a dynamic run's noise behaved, from its per-step trace.

    Noise is on in a step whose common weight (after the mean reset) is negative.
    Steps are counted from 1 over the whole run; ``switches`` counts every change
    between clean and noisy steps.
    """
    noisy = trace["w"] < 0
    epochs = trace["epoch"].astype(int)
    stretches = _stretches(noisy)
    return {
        "steps": int(noisy.size),
        "noisy_steps": int(noisy.sum()),
        "noisy_share": float(noisy.mean()),
        "first_noisy_step": int(np.argmax(noisy)) + 1 if noisy.any() else None,
        "switches": int(np.count_nonzero(noisy[1:] != noisy[:-1])),
        "noisy_stretches": len(stretches),
        "longest_noisy_stretch": int(max(stretches, default=0)),
        "noisy_share_per_epoch": {int(e): float(noisy[epochs == e].mean()) for e in np.unique(epochs)},
        "final_w": float(trace["w"][-1]),
    }


def plot_autorelu_trace(trace: Mapping[str, np.ndarray], path: PathLike, title: str) -> None:
    """Three panels over training steps: the common weight (noisy steps shaded), the spread of the
    weights before each reset, and the raw gradient of the weights."""
    steps = np.arange(1, trace["w"].size + 1)
    noisy = trace["w"] < 0
    fig = Figure(figsize=(8.5, 8.0), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    panels = (
        ("common w after the reset", [(trace["w"], "w", "tab:red")], "symlog"),
        ("spread before the reset", [(trace["w_max"] - trace["w_min"], "max w - min w", "tab:blue")], "log"),
        ("raw gradient of w", [(np.abs(trace["grad_mean"]), "|mean|", "tab:green"),
                               (trace["grad_absmax"], "max |g|", "tab:gray")], "log"),
    )
    for ax, (ylabel, curves, scale) in zip(axes, panels):
        ax.fill_between(steps, 0, 1, where=noisy, transform=ax.get_xaxis_transform(), color="tab:red",
                        alpha=0.15, lw=0, step="mid", label="noise on")
        for values, label, color in curves:
            ax.plot(steps, values, lw=0.8, color=color, label=label)
        for boundary in steps[np.flatnonzero(np.diff(trace["epoch"])) + 1]:
            ax.axvline(boundary - 0.5, color="0.7", lw=0.6)
        if scale == "symlog":
            ax.set_yscale("symlog", linthresh=1e-4)
        elif any(np.any(values > 0) for values, _, _ in curves):  # an exact-gradient run's zeros stay linear
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[0].axhline(0.0, color="black", lw=0.8)
    axes[-1].set_xlabel("training step (grey lines: epoch boundaries)")
    axes[0].set_title(title, fontsize=9)
    _save(fig, Path(path))


def batchnorm_effect(plain: RunRecord, recalibrated: RunRecord) -> dict[str, Any]:
    """How much of the validation drop in noisy epochs comes from BatchNorm statistics.

    ``recalibrated`` is ``plain`` trained again with ``bn_recalibrate`` (the same training steps;
    each evaluation preceded by re-estimating BatchNorm statistics on clean batches). Each run's
    drop at a noisy epoch e (``noise_on > 0``, after a clean one) is its val F1 at the last clean
    epoch before e minus its val F1 at e. Re-estimating also helps in clean epochs (the running
    statistics lag the weights), so what it recovers of the noise's drop is the difference of the
    two drops, not of the two F1s: ``recovered`` = ``total_drop`` - ``total_drop_recalibrated``,
    ``recovered_share`` = recovered / sum of plain drops (None without a drop). ``clean_gain`` is
    the mean gain of re-estimating in clean epochs, ``epochs`` the per-epoch rows, and
    ``max_train_loss_diff`` shows whether the training really was the same.
    """
    a, b = plain.metrics, recalibrated.metrics
    n = min(len(a["epoch"]), len(b["epoch"]))
    rows, clean_gains = [], []
    last_clean: tuple[float, float] | None = None
    for i in range(n):
        f1, f1_recalibrated = float(a["val_f1"][i]), float(b["val_f1"][i])
        row = {"epoch": int(a["epoch"][i]), "noise_on": float(a["noise_on"][i]), "val_f1": f1,
               "val_f1_recalibrated": f1_recalibrated, "drop": None, "drop_recalibrated": None}
        if a["noise_on"][i] <= 0:
            last_clean = (f1, f1_recalibrated)
            clean_gains.append(f1_recalibrated - f1)
        elif last_clean is not None:
            row["drop"], row["drop_recalibrated"] = last_clean[0] - f1, last_clean[1] - f1_recalibrated
        rows.append(row)
    noisy = [row for row in rows if row["drop"] is not None]
    drop = sum(row["drop"] for row in noisy)
    drop_recalibrated = sum(row["drop_recalibrated"] for row in noisy)
    return {
        "epochs": rows,
        "total_drop": drop,
        "total_drop_recalibrated": drop_recalibrated,
        "recovered": drop - drop_recalibrated,
        "recovered_share": (drop - drop_recalibrated) / drop if drop > 0 else None,
        "clean_gain": float(np.mean(clean_gains)) if clean_gains else None,
        "max_train_loss_diff": float(np.max(np.abs(a["train_loss"][:n] - b["train_loss"][:n]))) if n else None,
    }


def batchnorm_pairs(runs: Sequence[RunRecord]) -> list[tuple[RunRecord, RunRecord]]:
    """(plain, recalibrated) runs of the same method and seed, the second trained with ``bn_recalibrate``."""
    groups = _by_method(runs)
    pairs = []
    for method, group in groups.items():
        base = method.removesuffix(RECALIBRATED)
        if base != method and base in groups:
            plain = {run.seed: run for run in groups[base]}
            pairs += [(plain[run.seed], run) for run in group if run.seed in plain]
    return pairs


def _batchnorm_section(pairs: Sequence[tuple[RunRecord, RunRecord]], out: Path) -> str:
    """Per pair: how much of the noisy epochs' validation drop re-estimating BatchNorm recovers, epoch by epoch;
    per method, a figure of the paired runs' validation F1 (written into ``out``)."""
    summary = ["| Method | seed | val F1 drop in noisy epochs | drop, re-estimated | recovered (share) "
               "| mean gain in clean epochs | largest train loss difference |", "|" + "---|" * 7]
    details = []
    by_method: dict[str, list[tuple[RunRecord, RunRecord]]] = {}
    for plain, recalibrated in pairs:
        by_method.setdefault(plain.method, []).append((plain, recalibrated))
        effect = batchnorm_effect(plain, recalibrated)
        share, gain = effect["recovered_share"], effect["clean_gain"]
        label = method_info(plain.method).label
        summary.append(
            f"| {label} | {plain.seed} | {effect['total_drop']:.4f} | {effect['total_drop_recalibrated']:.4f} "
            f"| {effect['recovered']:.4f} ({'n/a' if share is None else f'{share:.0%}'}) "
            f"| {'n/a' if gain is None else f'{gain:+.4f}'} | {effect['max_train_loss_diff']:.2g} |"
        )
        rows = ["| epoch | noise on | val F1 | val F1, BatchNorm re-estimated | drop from the last clean epoch "
                "| drop, re-estimated |", "|" + "---|" * 6]
        for row in effect["epochs"]:
            drops = ["" if d is None else f"{d:+.4f}" for d in (row["drop"], row["drop_recalibrated"])]
            rows.append(f"| {row['epoch']} | {row['noise_on']:.2f} | {row['val_f1']:.4f} | "
                        f"{row['val_f1_recalibrated']:.4f} | {drops[0]} | {drops[1]} |")
        details.append(f"### {label}, seed {plain.seed}\n\n" + "\n".join(rows))
    for method, paired in by_method.items():
        # only the paired seeds: the plain method may have more
        groups = {method: [plain for plain, _ in paired], method + RECALIBRATED: [twin for _, twin in paired]}
        name, title = f"bn_recal_f1_{_slug(method)}.png", f"Validation macro-F1: {method_info(method).long_label}"
        _plot_pair(groups, (method, method + RECALIBRATED), "val_f1", "Validation macro-F1",
                   f"{title}, BatchNorm statistics as trained vs re-estimated", out / name)
        details.append(f"### {title}\n\n![{title}]({name})")
    return ("Each pair trained the same steps; the second re-estimated BatchNorm statistics on clean training "
            "batches before each evaluation (`--bn-recalibrate`). A drop is val F1 at a noisy epoch below the "
            "same run's last clean epoch; what re-estimating recovers is the difference of the two runs' drops "
            "(it also gains a little in clean epochs, where running statistics lag the weights). A train loss "
            "difference above 0 means the two trainings were not the same.\n\n"
            + "\n".join(summary) + "\n\n" + "\n\n".join(details))


def _trace_title(run: RunRecord) -> str:
    cfg = run.config
    return (f"{run.path.name}: AutoReLU grad={cfg.get('autorelu_grad', 'exact')}, init {cfg.get('autorelu_init')}, "
            f"{cfg.get('optimizer')} lr {cfg.get('lr')} wd {cfg.get('weight_decay')}, seed {run.seed}")


def write_trace_report(run_dir: PathLike) -> dict[str, Any]:
    """``autorelu_trace.png`` and ``autorelu_trace.json`` (:func:`trace_stats`) for a traced dynamic run."""
    run = load_run(run_dir)
    if run.trace is None:
        raise RunFormatError(f"{run.path / TRACE_FILE}: missing (only dynamic runs trained without --capture have one)")
    stats = trace_stats(run.trace)
    plot_autorelu_trace(run.trace, run.path / "autorelu_trace.png", _trace_title(run))
    write_text_atomic(run.path / "autorelu_trace.json", json.dumps(stats, indent=2) + "\n")
    return stats


def plot_confusion(matrix: Any, class_names: Sequence[str], path: PathLike, title: str) -> None:
    """Row-normalised confusion matrix (rows = true class) with the counts written in each cell."""
    counts = np.asarray(matrix, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    k = len(class_names)
    side = max(4.5, 0.75 * k + 2.0)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of true class")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{rates[i, j]:.2f}\n({counts[i, j]})", ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    _save(fig, Path(path))


def _slug(method: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in method.lower())


def _write_figures(
    groups: Mapping[str, list[RunRecord]], out_dir: Path
) -> tuple[list[tuple[str, str]], list[str]]:
    """Draw every figure the runs allow; returns (file name, caption) pairs and notes on skipped pairs."""
    figures: list[tuple[str, str]] = []
    skipped: list[str] = []
    for loss_no, f1_no, first, second in FIGURE_PAIRS:
        a, b = method_info(first), method_info(second)
        absent = [m for m in (first, second) if m not in groups]
        if absent:
            numbers = f"{loss_no}" if loss_no == f1_no else f"{loss_no}/{f1_no}"
            skipped.append(f"Fig. {numbers} ({a.label} vs {b.label}): no runs of {', '.join(map(repr, absent))}.")
            continue
        for number, kind, column, ylabel in (
            (loss_no, "loss", "train_loss", "Training loss"),
            (f1_no, "f1", "val_f1", "Validation macro-F1"),
        ):
            name = f"fig{number}_{kind}_{_slug(first)}_vs_{_slug(second)}.png"
            title = f"{ylabel}: {a.long_label} vs {b.long_label}"
            _plot_pair(groups, (first, second), column, ylabel, title, out_dir / name)
            note = " (the paper shows F1 only)" if number == 9 and kind == "loss" else ""
            figures.append((name, f"Fig. {number}{note}: {title}"))
    if _plot_autorelu(groups, out_dir / "autorelu_weight.png"):
        caption = "Common AutoReLU weight w over epochs (noise is injected while w < 0)"
        figures.append(("autorelu_weight.png", caption))
    return figures, skipped


# ----------------------------------------------------------------------------- report


def _dynamic_runs(runs: Sequence[RunRecord]) -> list[RunRecord]:
    return sorted((run for run in runs if "dynamic" in run.method.split("+")), key=lambda r: (r.method, r.seed))


def _write_trace_figures(dynamic: Sequence[RunRecord], out: Path) -> list[tuple[str, str]]:
    """Each traced dynamic run's per-step AutoReLU figure in ``out``, as (file name, caption)."""
    figures = []
    for run in dynamic:
        if run.trace is not None:
            name = f"autorelu_trace_{_slug(run.method)}_seed{run.seed}.png"
            plot_autorelu_trace(run.trace, out / name, _trace_title(run))
            figures.append((name, f"AutoReLU per step, {method_info(run.method).label} seed {run.seed}"))
    return figures


def _dynamic_noise_markdown(dynamic: Sequence[RunRecord], figures: Sequence[tuple[str, str]]) -> str:
    """How often each dynamic run was noisy, a warning for any that never was, and the trace figures."""
    if not dynamic:
        return ""
    lines = ["| Method | seed | AutoReLU grad, init | noisy steps | first noisy step | switches | longest noisy stretch |"
             " noisy share per epoch |", "|" + "---|" * 8]
    never = []
    for run in dynamic:
        cfg = run.config
        setting = f"{cfg.get('autorelu_grad', 'exact')}, {cfg.get('autorelu_init')}"
        shares = " ".join(f"{v:.2f}" for v in run.metrics["noise_on"])
        if run.trace is not None:
            stats = trace_stats(run.trace)
            noisy = f"{stats['noisy_steps']} of {stats['steps']} ({stats['noisy_share']:.1%})"
            first = stats["first_noisy_step"] or "never"
            switches, longest = stats["switches"], stats["longest_noisy_stretch"]
        else:  # runs from before the per-step trace: epoch shares only
            noisy, first, switches, longest = f"{float(np.nanmean(run.metrics['noise_on'])):.1%} of steps", "?", "?", "?"
        if np.nanmax(run.metrics["noise_on"], initial=0.0) == 0:
            never.append(f"{method_info(run.method).label} seed {run.seed}")
        lines.append(f"| {method_info(run.method).label} | {run.seed} | {setting} | {noisy} | {first} | {switches} | "
                     f"{longest} | {shares} |")
    text = ("Noise is on in a training step when the common AutoReLU weight is negative after the mean reset "
            "(per-step counts from each run's `autorelu_trace.csv`).\n\n" + "\n".join(lines))
    if never:
        text += ("\n\n**Warning: never noisy:** " + ", ".join(never) + ". These runs trained without any injected "
                 "noise, so they measure the baseline, not dynamic injection.")
    for name, caption in figures:
        text += f"\n\n### {caption}\n\n![{caption}]({name})"
    return text


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _fenced(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}\n{text}\n{fence}"


def write_report(
    runs: Sequence[RunRecord],
    out_dir: PathLike,
    command: str,
    data_description: str,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write table1.md/.csv, all figures and report.md into ``out_dir``; returns the report's path."""
    if not runs:
        raise ValueError("no runs to report")
    out = Path(out_dir)
    groups = _by_method(runs)
    rows = table1(runs)
    write_table1_md(rows, out / "table1.md")
    write_table1_csv(rows, out / "table1.csv")
    figures, skipped = _write_figures(groups, out)
    baseline_label = method_info("baseline").label
    comparison = compare_to_baseline(runs)

    parts = [
        "# fernoise report",
        f"## Data\n\n{data_description}",
        f"## Command\n\n{_fenced(command)}",
        "## Table 1\n\nTrain loss is the final epoch's; validation F1 both the best epoch's (the paper's \"max F1\", "
        "chosen on the validation set itself, so optimistic) and the final epoch's. F1 is macro-F1.\n\n"
        + _table1_markdown(rows) + "\nMachine-readable: [table1.csv](table1.csv).",
    ]
    if comparison:
        parts.append(f"## Difference to {baseline_label}\n\n" + _comparison_markdown(comparison, baseline_label))
    else:
        parts.append(f"## Difference to {baseline_label}\n\nNo baseline runs: comparison skipped.")
    parts.append("## The paper's claims\n\n" + _claims_markdown(runs))
    figure_text = "\n\n".join(f"### {caption}\n\n![{caption}]({name})" for name, caption in figures)
    if skipped:
        figure_text += "\n\nSkipped (methods missing):\n\n" + "\n".join(f"- {note}" for note in skipped)
    parts.append(
        "## Figures\n\nCurves: mean over seeds; band: min–max over seeds; shaded epochs: noise on "
        "(darker = on in more seeds or for more of the epoch).\n\n" + (figure_text or "No figures.")
    )
    dynamic_runs = _dynamic_runs(runs)
    dynamic = _dynamic_noise_markdown(dynamic_runs, _write_trace_figures(dynamic_runs, out))
    if dynamic:
        parts.append("## Dynamic noise\n\n" + dynamic)
    pairs = batchnorm_pairs(runs)
    if pairs:
        parts.append("## BatchNorm statistics in noisy epochs\n\n" + _batchnorm_section(pairs, out))
    run_lines = ["| Method | seed | epochs | best val F1 (epoch) | wall time | directory |", "|" + "---|" * 6]
    for method, group in groups.items():
        for run in group:
            try:
                where = os.path.relpath(run.path, out)
            except ValueError:  # another drive on Windows
                where = str(run.path)
            best = f"{run.summary['best_val_f1']:.4f} ({run.summary['best_epoch']})"
            run_lines.append(
                f"| {method_info(method).label} | {run.seed} | {run.epochs} | {best} | "
                f"{format_duration(run.wall_seconds)} | `{where}` |"
            )
    parts.append("## Runs\n\n" + "\n".join(run_lines))
    if extra:
        items = (
            f"- **{key}**: {value if isinstance(value, str) else json.dumps(value, default=str)}"
            for key, value in extra.items()
        )
        parts.append("## Notes\n\n" + "\n".join(items))
    report = out / "report.md"
    write_text_atomic(report, "\n\n".join(parts) + "\n")
    return report
