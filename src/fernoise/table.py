"""The report's tables as Markdown and CSV: Table 1 (the paper's layout), the paired differences
to the baseline and the paper's claims (also two sets of runs side by side).

A cell shows ``mean ± std (n=N)``, the spread to the mean's last shown digit.
"""
from __future__ import annotations

import csv
import io
from typing import Any, Mapping, Optional, Sequence

from fernoise.io import PathLike, write_text_atomic
from fernoise.runs import RunRecord
from fernoise.stats import CLAIM_QUANTITIES, COMPARED, PAPER_CLAIMS, TABLE_ROWS, Claim, check_claim, mean_std


def _cell(mean: float | None, std: float | None, n: int, fmt: str) -> str:
    if mean is None:
        return "—"
    # '#' keeps a general format's trailing zeros (0.4100, not 0.41), so the spread below gets every digit
    shown = f"{mean:#{fmt}}".rstrip(".")
    if std is None:
        return f"{shown} (n={n})"
    # the spread to the mean's last shown digit: 0.1417 ± 0.0018, not ± 0.001796
    spread_fmt = fmt if "e" in shown.lower() else f".{len(shown.partition('.')[2])}f"
    return f"{shown} ± {std:{spread_fmt}} (n={n})"


def mean_std_cell(values: Sequence[float], fmt: str) -> str:
    """``mean ± std (n=N)`` of ``values`` (sample std), as the tables show it."""
    return _cell(*mean_std(values), len(values), fmt)


def table1_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
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
    write_text_atomic(path, "# Table 1\n\n" + table1_markdown(rows))


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


def _interval(low: Optional[float], high: Optional[float]) -> str:
    """A difference's interval, ``n/a`` where a single pair leaves it undefined."""
    return "n/a" if low is None else f"[{low:+.4f}, {high:+.4f}]"


def _difference_cells(row: Mapping[str, Any], key: str, spread: bool = True) -> list[str]:
    """``mean ± std`` (or the mean alone) and ``[low, high]`` of a paired difference."""
    mean, std = row[f"{key}_diff_mean"], row[f"{key}_diff_std"]
    shown = "—" if mean is None else f"{mean:+.4f}" + ("" if std is None or not spread else f" ± {std:.4f}")
    return [shown, _interval(row[f"{key}_diff_ci_low"], row[f"{key}_diff_ci_high"])]


def comparison_markdown(rows: Sequence[Mapping[str, Any]], baseline_label: str) -> str:
    """The paired differences; a quantity no pair has (final models not scored again) is left out."""
    level = f"{rows[0]['confidence']:.0%}" if rows else "95%"
    compared = [(key, title) for key, _, title in COMPARED if any(row[f"{key}_diff_n"] for row in rows)]
    header = "| Method | paired seeds | "
    header += " | ".join(f"{title} (mean ± std) | {level} CI" for _, title in compared)
    lines = [header + " |", "|---|---|" + "---|---|" * len(compared)]
    for row in rows:
        cells = [row["label"], str(row["n"])]
        for key, _ in compared:
            cells += _difference_cells(row, key)
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


def _claim_quantities(quantities: Sequence[tuple[str, str, str]], *run_sets: Sequence[RunRecord]
                      ) -> list[tuple[str, str]]:
    """(key, words) of ``quantities`` measured in any of ``run_sets``: max val F1 always, final models where
    scored again."""
    return [(key, words) for key, field, words in quantities
            if key == "val_f1" or any(run.value(field) is not None for runs in run_sets for run in runs)]


# Side by side, a claim is checked on every F1 the differences table has: two protocols may share only some.
_BESIDE_QUANTITIES = tuple((key, field, title.removeprefix("Δ ")) for key, field, title in COMPARED if "f1" in key)


def _claim_cells(claim: Claim, runs: Sequence[RunRecord], confidence: float, key: str) -> list[str]:
    """Δ, interval, paired seeds and verdict of ``claim`` on ``runs`` in the quantity ``key``."""
    c = check_claim(claim, runs, confidence, key)
    return ["—" if c["mean"] is None else f"{c['mean']:+.4f}", _interval(c["low"], c["high"]), str(c["n"]),
            c["verdict"]]


_CLAIMS_INTRO = ("Each claim as a seed-paired difference in validation macro-F1 with a t interval. A verdict holds "
                 "or is contradicted only when the interval says so; with few seeds most intervals are wide, so "
                 "\"not shown\" is a common and honest outcome.")


def claims_markdown(runs: Sequence[RunRecord], confidence: float = 0.95) -> str:
    """Each paper claim checked on max val F1 and, where final models were scored again, on those too."""
    quantities = _claim_quantities(CLAIM_QUANTITIES, runs)
    header = "| The paper's claim | " + " | ".join(
        f"Δ {words} (method − reference) | {confidence:.0%} CI | paired seeds | verdict" for _, words in quantities)
    lines = [header + " |", "|---|" + "---|---|---|---|" * len(quantities)]
    for claim in PAPER_CLAIMS:
        cells = [claim.text] + [cell for key, _ in quantities for cell in _claim_cells(claim, runs, confidence, key)]
        lines.append("| " + " | ".join(cells) + " |")
    return _CLAIMS_INTRO + "\n\n" + "\n".join(lines)


def claims_beside_markdown(runs: Sequence[RunRecord], other: Sequence[RunRecord], names: tuple[str, str],
                           confidence: float = 0.95) -> str:
    """Each paper claim checked on two sets of runs (two recipes or protocols), one row per claim and F1 measured
    in either (max over epochs, final epoch, final model): ``names`` label the sets' columns."""
    quantities = _claim_quantities(_BESIDE_QUANTITIES, runs, other)
    level = f"{confidence:.0%}"
    header = "| The paper's claim | compared on | " + " | ".join(
        f"{name}: Δ | {level} CI | seeds | verdict" for name in names)
    lines = [header + " |", "|---|---|" + "---|---|---|---|" * 2]
    for claim in PAPER_CLAIMS:
        for key, words in quantities:
            cells = [claim.text, words, *_claim_cells(claim, runs, confidence, key),
                     *_claim_cells(claim, other, confidence, key)]
            lines.append("| " + " | ".join(cells) + " |")
    return _CLAIMS_INTRO + " Δ = method − reference, paired by seed within each set.\n\n" + "\n".join(lines)


def per_class_markdown(classes: Sequence[str], rows: Sequence[Mapping[str, Any]], baseline_label: str,
                       confidence: float = 0.95) -> str:
    """The final models' per-class F1 per method (:func:`fernoise.stats.per_class_f1`), then each method's
    seed-paired difference to the baseline per class with its interval."""
    lines = ["| Method | seeds | " + " | ".join(classes) + " |", "|---|---|" + "---|" * len(classes)]
    for row in rows:
        cells = [_cell(row[f"{name}_mean"], row[f"{name}_std"], row["n"], ".3f").removesuffix(f" (n={row['n']})")
                 for name in classes]
        lines.append(f"| {row['label']} | {row['n']} | " + " | ".join(cells) + " |")
    text = "Mean ± sample std over seeds.\n\n" + "\n".join(lines)
    compared = [row for row in rows if row.get(f"{classes[0]}_diff_n")] if classes else []  # methods with pairs
    if compared:
        lines = [f"| Method − {baseline_label} | paired seeds | " + " | ".join(classes) + " |",
                 "|---|---|" + "---|" * len(classes)]
        for row in compared:
            cells = [" ".join(_difference_cells(row, name, spread=False)) for name in classes]
            lines.append(f"| {row['label']} | {row[f'{classes[0]}_diff_n']} | " + " | ".join(cells) + " |")
        text += (f"\n\nSeed-paired difference in per-class F1 to {baseline_label}, with its {confidence:.0%} "
                 "t interval (n/a for a single pair).\n\n" + "\n".join(lines))
    return text
