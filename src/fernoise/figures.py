"""The report's figures (PNG): the paper's Figures 3-11 as pairs of methods over epochs, the common
AutoReLU weight, a dynamic run's per-step AutoReLU trace and a confusion matrix.

Figures are drawn on ``matplotlib.figure.Figure`` objects rendered by Agg, so
nothing touches pyplot's global state or the user's backend.
"""
from __future__ import annotations

import io
import textwrap
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from fernoise.io import PathLike, write_bytes_atomic
from fernoise.runs import RunRecord, method_info

# (loss figure, F1 figure, first method, second method) as in the paper's Figures 3-11.
# The paper's Fig. 9 shows F1 only; the loss of that pair is drawn too, under the same number.
FIGURE_PAIRS: tuple[tuple[int, int, str, str], ...] = (
    (3, 4, "baseline", "periodic"),
    (5, 6, "baseline", "dropout"),
    (7, 8, "dropout", "dropout+periodic"),
    (9, 9, "baseline", "dropout+periodic"),
    (10, 11, "periodic", "dynamic"),
)


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


def plot_pair(
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
        scored = ~np.isnan(values).all(axis=0)  # epochs left unvalidated (val_every) would break the line
        epochs, values = epochs[scored], values[:, scored]
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


def plot_run_trace(run: RunRecord, path: PathLike) -> None:
    """:func:`plot_autorelu_trace` of a traced dynamic run, titled with its AutoReLU and optimizer settings."""
    cfg = run.config
    title = (f"{run.path.name}: AutoReLU grad={cfg['autorelu_grad']}, init {cfg.get('autorelu_init')}, "
             f"{cfg.get('optimizer')} lr {cfg.get('lr')} wd {cfg.get('weight_decay')}, seed {run.seed}")
    plot_autorelu_trace(run.trace, path, title)


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


def slug(method: str) -> str:
    """A method key as part of a file name ("dropout+periodic" -> "dropout-periodic")."""
    return "".join(ch if ch.isalnum() else "-" for ch in method.lower())


def write_figures(
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
            name = f"fig{number}_{kind}_{slug(first)}_vs_{slug(second)}.png"
            title = f"{ylabel}: {a.long_label} vs {b.long_label}"
            plot_pair(groups, (first, second), column, ylabel, title, out_dir / name)
            note = " (the paper shows F1 only)" if number == 9 and kind == "loss" else ""
            figures.append((name, f"Fig. {number}{note}: {title}"))
    if _plot_autorelu(groups, out_dir / "autorelu_weight.png"):
        caption = "Common AutoReLU weight w over epochs (noise is injected while w < 0)"
        figures.append(("autorelu_weight.png", caption))
    return figures, skipped


def write_trace_figures(dynamic: Sequence[RunRecord], out: Path) -> list[tuple[str, str]]:
    """Each traced dynamic run's per-step AutoReLU figure in ``out``, as (file name, caption)."""
    figures = []
    for run in dynamic:
        if run.trace is not None:
            name = f"autorelu_trace_{slug(run.method)}_seed{run.seed}.png"
            plot_run_trace(run, out / name)
            figures.append((name, f"AutoReLU per step, {method_info(run.method).label} seed {run.seed}"))
    return figures
