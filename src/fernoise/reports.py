"""``report.md``: the prose around the tables and figures of a set of runs, and a dynamic run's trace report.

Reads run directories as written by ``train`` (see docs/ARCHITECTURE.md) through
:mod:`fernoise.runs`; the numbers come from :mod:`fernoise.stats`, the tables from
:mod:`fernoise.table` and the figures from :mod:`fernoise.figures`. The names other
modules used from here before that split are still importable from here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fernoise.figures import plot_confusion, plot_pair, plot_run_trace, slug, write_figures, write_trace_figures
from fernoise.io import PathLike, write_text_atomic
from fernoise.runfiles import TRACE_FILE
from fernoise.runs import (
    RECALIBRATED, RunFormatError, RunRecord, by_method, find_run_dirs, load_run, load_runs, method_info,
)
from fernoise.stats import (
    PAPER_CLAIMS, batchnorm_effect, batchnorm_pairs, check_claim, compare_to_baseline, per_class_f1, t_quantile,
    table1, trace_stats,
)
from fernoise.table import (
    claims_beside_markdown, claims_markdown, comparison_markdown, mean_std_cell, per_class_markdown, table1_markdown,
    write_table1_csv, write_table1_md,
)
from fernoise.views import Views

__all__ = [
    "describe_runs", "format_duration", "report_folders", "write_report", "write_trace_report",
    # from the modules reports.py was split into, for those that import them from here
    "PAPER_CLAIMS", "RunFormatError", "RunRecord", "batchnorm_effect", "batchnorm_pairs", "check_claim",
    "compare_to_baseline", "load_run", "load_runs", "mean_std_cell", "method_info", "plot_confusion", "t_quantile",
    "table1", "trace_stats",
]

# What report.md's "Data" line says of the runs: (config key, how it is introduced).
_DESCRIBED = (("image_size", "image size"), ("augment", "augment"), ("train_crop", "training crop"), ("epochs", "epochs"), ("batch_size", "batch"),
              ("optimizer", "optimizer"), ("lr", "lr"), ("weight_decay", "weight decay"),
              ("interval", "periodic interval T"), ("interval_unit", "interval unit"), ("precision", "precision"),
              ("bn_recalibrate", "BatchNorm statistics re-estimated on clean training batches"))
# Keys left out of the line when they are 0 in every run: an option that was not used.
_DESCRIBED_WHEN_USED = {"bn_recalibrate", "train_crop"}


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


def _finished_runs(paths: Sequence[PathLike]) -> tuple[list[RunRecord], list[Path]]:
    """The finished runs under ``paths`` and the run folders without ``summary.json`` (still training, or stopped)."""
    dirs = find_run_dirs(paths)
    unfinished = [path for path in dirs if not (path / "summary.json").is_file()]
    runs = [load_run(path) for path in dirs if path not in unfinished]
    if not runs:
        raise RunFormatError(f"{', '.join(map(str, paths))}: no finished runs (with summary.json) yet")
    return runs, unfinished


def report_folders(paths: Sequence[PathLike], out: PathLike, command: str, beside: PathLike | None = None
                   ) -> tuple[Path, list[Path]]:
    """``report.md``, Table 1 and the figures of the finished runs under ``paths``, written into ``out``;
    with ``beside``, also the paper's claims checked on the finished runs under that folder, side by side.

    Unfinished runs are left out and listed in the report; returns the report's path and those runs.
    """
    runs, unfinished = _finished_runs(paths)
    other = None
    if beside is not None:
        other_runs, other_unfinished = _finished_runs([beside])
        unfinished += other_unfinished
        other = (_set_names(paths, beside), other_runs)
    extra = {"Not finished, left out": ", ".join(map(str, unfinished))} if unfinished else None
    return write_report(runs, out, command, describe_runs(runs), extra, other), unfinished


def _set_names(paths: Sequence[PathLike], beside: PathLike) -> tuple[str, str]:
    """The two sets' names in the side-by-side table: their folders' names, unless those are alike."""
    here, there = ", ".join(Path(path).name or str(path) for path in paths), Path(beside).name or str(beside)
    return (here, there) if here != there else ("these runs", str(beside))


def _beside_part(runs: Sequence[RunRecord], names: tuple[str, str], other: Sequence[RunRecord]) -> str:
    """The paper's claims on ``runs`` beside those on ``other``, with what each set of runs is."""
    return (f"## The paper's claims beside {names[1]}\n\n**{names[0]}**: {describe_runs(runs)}.\n\n"
            f"**{names[1]}**: {describe_runs(other)}.\n\n" + claims_beside_markdown(runs, other, names))


def _share(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.0%}"


def _batchnorm_section(pairs: Sequence[tuple[RunRecord, RunRecord]], out: Path) -> str:
    """Per pair: how much of the noisy epochs' validation drop re-estimating BatchNorm recovers, epoch by epoch;
    per method, a figure of the paired runs' validation F1 (written into ``out``)."""
    summary = ["| Method | seed | val F1 drop in noisy epochs | drop, re-estimated | recovered (share) "
               "| share by noisy stretch (epochs) | mean gain in clean epochs | largest train loss difference |",
               "|" + "---|" * 8]
    details = []
    per_method: dict[str, list[tuple[RunRecord, RunRecord]]] = {}
    for plain, recalibrated in pairs:
        per_method.setdefault(plain.method, []).append((plain, recalibrated))
        effect = batchnorm_effect(plain, recalibrated)
        gain = effect["clean_gain"]
        label = method_info(plain.method).label
        by_stretch = ", ".join(f"{_share(stretch['recovered_share'])} ({stretch['first']}-{stretch['last']})"
                               for stretch in effect["stretches"])
        summary.append(
            f"| {label} | {plain.seed} | {effect['total_drop']:.4f} | {effect['total_drop_recalibrated']:.4f} "
            f"| {effect['recovered']:.4f} ({_share(effect['recovered_share'])}) | {by_stretch or 'n/a'} "
            f"| {'n/a' if gain is None else f'{gain:+.4f}'} | {effect['max_train_loss_diff']:.2g} |"
        )
        rows = ["| epoch | noise on | val F1 | val F1, BatchNorm re-estimated | drop from the last clean epoch "
                "| drop, re-estimated |", "|" + "---|" * 6]
        for row in effect["epochs"]:
            drops = ["" if d is None else f"{d:+.4f}" for d in (row["drop"], row["drop_recalibrated"])]
            rows.append(f"| {row['epoch']} | {row['noise_on']:.2f} | {row['val_f1']:.4f} | "
                        f"{row['val_f1_recalibrated']:.4f} | {drops[0]} | {drops[1]} |")
        details.append(f"### {label}, seed {plain.seed}\n\n" + "\n".join(rows))
    for method, paired in per_method.items():
        # only the paired seeds: the plain method may have more
        groups = {method: [plain for plain, _ in paired], method + RECALIBRATED: [twin for _, twin in paired]}
        name, title = f"bn_recal_f1_{slug(method)}.png", f"Validation macro-F1: {method_info(method).long_label}"
        plot_pair(groups, (method, method + RECALIBRATED), "val_f1", "Validation macro-F1",
                   f"{title}, BatchNorm statistics as trained vs re-estimated", out / name)
        details.append(f"### {title}\n\n![{title}]({name})")
    return ("Each pair trained the same steps; the second re-estimated BatchNorm statistics on clean training "
            "batches before each evaluation (`--bn-recalibrate`). A drop is val F1 at a noisy epoch below the "
            "same run's last clean epoch; what re-estimating recovers is the difference of the two runs' drops "
            "(it also gains a little in clean epochs, where running statistics lag the weights). A train loss "
            "difference above 0 means the two trainings were not the same.\n\n"
            + "\n".join(summary) + "\n\n" + "\n\n".join(details))


def write_trace_report(run_dir: PathLike) -> dict[str, Any]:
    """``autorelu_trace.png`` and ``autorelu_trace.json`` (:func:`trace_stats`) for a traced dynamic run."""
    run = load_run(run_dir)
    if run.trace is None:
        raise RunFormatError(f"{run.path / TRACE_FILE}: missing (only dynamic runs trained without --capture have one)")
    stats = trace_stats(run.trace)
    plot_run_trace(run, run.path / "autorelu_trace.png")
    write_text_atomic(run.path / "autorelu_trace.json", json.dumps(stats, indent=2) + "\n")
    return stats



def _dynamic_runs(runs: Sequence[RunRecord]) -> list[RunRecord]:
    return sorted((run for run in runs if "dynamic" in run.method.split("+")), key=lambda r: (r.method, r.seed))



def _dynamic_noise_markdown(dynamic: Sequence[RunRecord], figures: Sequence[tuple[str, str]]) -> str:
    """How often each dynamic run was noisy, a warning for any that never was, and the trace figures."""
    if not dynamic:
        return ""
    lines = ["| Method | seed | AutoReLU grad, init | noisy steps | first noisy step | switches | longest noisy stretch |"
             " noisy share per epoch |", "|" + "---|" * 8]
    never = []
    for run in dynamic:
        cfg = run.config
        setting = f"{cfg['autorelu_grad']}, {cfg.get('autorelu_init')}"
        if cfg.get("autorelu_adam_lr"):
            setting += f", own Adam lr {cfg['autorelu_adam_lr']:g}"
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


def _comparison_part(runs: Sequence[RunRecord]) -> str:
    baseline_label = method_info("baseline").label
    comparison = compare_to_baseline(runs)
    if not comparison:
        return f"## Difference to {baseline_label}\n\nNo baseline runs: comparison skipped."
    return f"## Difference to {baseline_label}\n\n" + comparison_markdown(comparison, baseline_label)


def _final_models_part(runs: Sequence[RunRecord]) -> str:
    """How the final models were scored again, and their per-class F1; empty when none was."""
    scored = [run for run in runs if run.final is not None]
    if not scored:
        return ""
    views = sorted({Views.from_record(run.final.get("views") or {}).words() for run in scored})
    missing = [f"{method_info(run.method).label} seed {run.seed}" for run in runs if run.final is None]
    text = (f"Each run's final weights (checkpoints/last.pt), scored once more on the whole validation split "
            f"with {' / '.join(views)}, the logits averaged over the views' softmax (final-evaluation.json; "
            f"`fernoise reproduce --final-tta-zoom`). These are the \"scored again\" rows above: the model a "
            f"user would keep, with no choice of epoch on the validation set.")
    if missing:
        text += f" Not scored again (no checkpoint where the report was made): {', '.join(missing)}."
    batches = sorted({str(run.final_bn.get("bn_recalibrate", "?")) for run in runs if run.final_bn is not None})
    if batches:
        text += (f" The \"BatchNorm re-estimated\" rows score the same weights with the same views after "
                 f"re-estimating the BatchNorm statistics on {' / '.join(batches)} clean train batches "
                 f"(final-evaluation-bnrecal.json; `--final-bn-recalibrate`): what is left of a method's "
                 f"difference once the statistics gathered in noisy steps are gone.")
    classes, rows = per_class_f1(runs)
    return text + "\n\n### Per-class F1 of the final models\n\n" + per_class_markdown(
        classes, rows, method_info("baseline").label)


def _figures_part(groups: Mapping[str, list[RunRecord]], out: Path) -> str:
    """The paper's figures, drawn into ``out``, with captions and the pairs that could not be drawn."""
    figures, skipped = write_figures(groups, out)
    figure_text = "\n\n".join(f"### {caption}\n\n![{caption}]({name})" for name, caption in figures)
    if skipped:
        figure_text += "\n\nSkipped (methods missing):\n\n" + "\n".join(f"- {note}" for note in skipped)
    return ("## Figures\n\nCurves: mean over seeds; band: min–max over seeds; shaded epochs: noise on "
            "(darker = on in more seeds or for more of the epoch).\n\n" + (figure_text or "No figures."))


def _runs_part(groups: Mapping[str, list[RunRecord]], out: Path) -> str:
    """Every run with its length, best epoch, wall time and directory (relative to the report)."""
    lines = ["| Method | seed | epochs | best val F1 (epoch) | wall time | directory |", "|" + "---|" * 6]
    for method, group in groups.items():
        for run in group:
            try:
                where = os.path.relpath(run.path, out)
            except ValueError:  # another drive on Windows
                where = str(run.path)
            best = f"{run.summary['best_val_f1']:.4f} ({run.summary['best_epoch']})"
            lines.append(
                f"| {method_info(method).label} | {run.seed} | {run.epochs} | {best} | "
                f"{format_duration(run.wall_seconds)} | `{where}` |"
            )
    return "## Runs\n\n" + "\n".join(lines)


def _notes_part(extra: Mapping[str, Any]) -> str:
    items = (
        f"- **{key}**: {value if isinstance(value, str) else json.dumps(value, default=str)}"
        for key, value in extra.items()
    )
    return "## Notes\n\n" + "\n".join(items)


def write_report(
    runs: Sequence[RunRecord],
    out_dir: PathLike,
    command: str,
    data_description: str,
    extra: Mapping[str, Any] | None = None,
    beside: tuple[tuple[str, str], Sequence[RunRecord]] | None = None,
) -> Path:
    """Write table1.md/.csv, all figures and report.md into ``out_dir``; returns the report's path.

    ``beside``: the names of ``runs`` and of another set of runs, and those runs, whose claims go side by side.
    """
    if not runs:
        raise ValueError("no runs to report")
    out = Path(out_dir)
    groups = by_method(runs)
    rows = table1(runs)
    write_table1_md(rows, out / "table1.md")
    write_table1_csv(rows, out / "table1.csv")
    parts = [
        "# fernoise report",
        f"## Data\n\n{data_description}",
        f"## Command\n\n{_fenced(command)}",
        "## Table 1\n\nTrain loss is the final epoch's; validation F1 both the best epoch's (the paper's \"max F1\", "
        "chosen on the validation set itself, so optimistic) and the final epoch's. F1 is macro-F1.\n\n"
        + table1_markdown(rows) + "\nMachine-readable: [table1.csv](table1.csv).",
        _comparison_part(runs),
        "## The paper's claims\n\n" + claims_markdown(runs),
    ]
    if beside is not None:
        parts.append(_beside_part(runs, *beside))
    final_models = _final_models_part(runs)
    if final_models:
        parts.append("## Final models\n\n" + final_models)
    parts.append(_figures_part(groups, out))
    dynamic_runs = _dynamic_runs(runs)
    dynamic = _dynamic_noise_markdown(dynamic_runs, write_trace_figures(dynamic_runs, out))
    if dynamic:
        parts.append("## Dynamic noise\n\n" + dynamic)
    pairs = batchnorm_pairs(runs)
    if pairs:
        parts.append("## BatchNorm statistics in noisy epochs\n\n" + _batchnorm_section(pairs, out))
    parts.append(_runs_part(groups, out))
    if extra:
        parts.append(_notes_part(extra))
    report = out / "report.md"
    write_text_atomic(report, "\n\n".join(parts) + "\n")
    return report
