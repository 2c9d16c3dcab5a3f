"""Statistics over seeds: Table 1's numbers, paired differences to a reference method with
t intervals, the paper's claims checked, BatchNorm re-estimation's effect and AutoReLU trace statistics.

Means come with the sample standard deviation (ddof=1, undefined for one seed); differences
to a reference are paired by seed and get a t-distribution confidence interval. No scipy:
the t quantile is computed here. Nothing here draws or formats, so no matplotlib.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from fernoise.runs import FINAL_MODEL, RECALIBRATED, RunRecord, by_method, method_info

# Table 1 rows: (key, summary.json field, row label, number format).
TABLE_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("train_loss", "final_train_loss", "Train loss (final epoch)", ".4g"),
    ("val_f1", "best_val_f1", "Validation macro-F1 (max over epochs)", ".4f"),
    ("final_val_f1", "final_val_f1", "Validation macro-F1 (final epoch)", ".4f"),
    ("final_val_acc", "final_val_acc", "Validation accuracy (final epoch)", ".4f"),
    ("test_f1", "test_f1", "Test macro-F1", ".4f"),
    ("test_acc", "test_acc", "Test accuracy", ".4f"),
    ("final_model_f1", "final_model_f1", "Final model macro-F1, scored again", ".4f"),
    ("final_model_acc", "final_model_acc", "Final model accuracy, scored again", ".4f"),
    ("final_model_bn_f1", "final_model_bn_f1", "Final model macro-F1, BatchNorm re-estimated", ".4f"),
    ("final_model_bn_acc", "final_model_bn_acc", "Final model accuracy, BatchNorm re-estimated", ".4f"),
)
# Paired differences to the baseline: (key, summary.json field, heading). The max over epochs is
# the paper's number but is chosen on the validation set itself; the final epoch is not.
COMPARED: tuple[tuple[str, str, str], ...] = (
    ("val_f1", "best_val_f1", "Δ max val F1"),
    ("final_val_f1", "final_val_f1", "Δ final val F1"),
    ("final_model_f1", "final_model_f1", "Δ final model F1, scored again"),
    ("final_model_bn_f1", "final_model_bn_f1", "Δ final model F1, BatchNorm re-estimated"),
    ("train_loss", "final_train_loss", "Δ final train loss"),
)
# The quantities a claim is checked on: (key, RunRecord.value field, in words).
CLAIM_QUANTITIES: tuple[tuple[str, str, str], ...] = (
    ("val_f1", "best_val_f1", "max val F1"),
    ("final_model_f1", "final_model_f1", "final model F1, scored again"),
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


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
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
    groups = by_method(runs)
    rows = []
    for method, group in groups.items():
        row: dict[str, Any] = {
            "method": method,
            "label": method_info(method).label,
            "n_seeds": len(group),
            "seeds": [run.seed for run in group],
        }
        for key, field, _, _ in TABLE_ROWS:
            values = [value for run in group if (value := run.value(field)) is not None]
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values)
            row[f"{key}_n"] = len(values)
        rows.append(row)
    return rows


def compare_to_baseline(
    runs: Sequence[RunRecord], baseline: str = "baseline", confidence: float = 0.95,
    fields: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Per method, the seed-paired difference (method - baseline) of each :data:`COMPARED` and
    :data:`CLAIM_QUANTITIES` quantity, or of ``fields`` (key: :meth:`RunRecord.value` field) when given.

    Pairing by seed removes the seed-to-seed variance both share. For each quantity q:
    ``{q}_diff_mean``, ``{q}_diff_std`` and the t-interval ``{q}_diff_ci_low``/``{q}_diff_ci_high``
    (None for fewer than two pairs; the mean None where no pair has q, e.g. no final-evaluation.json).
    Empty if there is no baseline run.
    """
    groups = by_method(runs)
    if baseline not in groups:
        return []
    base = {run.seed: run for run in groups[baseline]}
    if fields is None:
        fields = {key: field for key, field, _ in COMPARED + CLAIM_QUANTITIES}
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
        for key, field in fields.items():
            row.update(paired_difference(paired, field, key, confidence))
        rows.append(row)
    return rows


DIFFERENCE_KEYS = ("_diff_mean", "_diff_std", "_diff_n", "_diff_ci_low", "_diff_ci_high")


def paired_difference(paired: Sequence[tuple[RunRecord, RunRecord]], field: str, key: str,
                      confidence: float = 0.95) -> dict[str, Any]:
    """Mean, std, t-interval and count of ``field`` (:meth:`RunRecord.value`) of run - reference over the pairs
    where both have it: ``{key}_diff_mean``, ``_diff_std``, ``_diff_ci_low``, ``_diff_ci_high``, ``_diff_n``."""
    diffs = [a - b for run, ref in paired if (a := run.value(field)) is not None and (b := ref.value(field)) is not None]
    mean, std = mean_std(diffs)
    half = None
    if std is not None:
        half = t_quantile(0.5 + confidence / 2, len(diffs) - 1) * std / math.sqrt(len(diffs))
    return {f"{key}_diff_mean": mean, f"{key}_diff_std": std, f"{key}_diff_n": len(diffs),
            f"{key}_diff_ci_low": None if half is None else mean - half,
            f"{key}_diff_ci_high": None if half is None else mean + half}


def check_claim(claim: Claim, runs: Sequence[RunRecord], confidence: float = 0.95, quantity: str = "val_f1"
                ) -> dict[str, Any]:
    """The seed-paired difference (method - reference) behind ``claim`` in a :data:`CLAIM_QUANTITIES` key
    (the paper's max val F1 by default), and a verdict.

    With an interval: ``better`` holds when it lies above 0 and is contradicted below 0;
    ``not better`` holds below 0, is contradicted above 0 and otherwise "not contradicted";
    ``similar`` is contradicted when it excludes 0 and otherwise only "not contradicted" (its width says how similar the methods are shown to be).
    Anything else, or a single pair (no interval), is "not shown" / "one seed"; a NaN or infinite difference (a
    run that diverged) is "undetermined", as no interval can say anything of it. Keys:
    ``n``, ``mean``, ``low``, ``high`` (None where undefined) and ``verdict``.
    """
    row = next((r for r in compare_to_baseline(runs, claim.reference, confidence) if r["method"] == claim.method),
               None)
    if row is None or row[f"{quantity}_diff_n"] == 0:
        return {"n": 0, "mean": None, "low": None, "high": None, "verdict": "not measured (no paired runs)"}
    mean, low, high = (row[f"{quantity}_diff_{stat}"] for stat in ("mean", "ci_low", "ci_high"))
    result = {"n": row[f"{quantity}_diff_n"], "mean": mean, "low": low, "high": high}
    if not math.isfinite(mean):
        return {**result, "verdict": "undetermined: a run diverged"}
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


def per_class_f1(runs: Sequence[RunRecord], baseline: str = "baseline", confidence: float = 0.95
                 ) -> tuple[list[str], list[dict[str, Any]]]:
    """The final models' per-class F1 (from final-evaluation.json; runs without it are left out): the
    classes, and per method ``n`` and for each class c ``{c}_mean``/``{c}_std`` over seeds and, for
    methods other than ``baseline``, the seed-paired difference to it (:func:`paired_difference`, key c)."""
    scored = [run for run in runs if run.final is not None]
    classes = list(dict.fromkeys(name for run in scored for name in run.final["f1"]))
    fields = {name: f"{FINAL_MODEL}f1_{name}" for name in classes}
    differences = {row["method"]: row for row in compare_to_baseline(scored, baseline, confidence, fields)}
    rows = []
    for method, group in by_method(scored).items():
        row: dict[str, Any] = {"method": method, "label": method_info(method).label, "n": len(group)}
        for name, field in fields.items():
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std([v for run in group if (v := run.value(field)) is not None])
        row.update({k: v for k, v in differences.get(method, {}).items() if k.endswith(DIFFERENCE_KEYS)})
        rows.append(row)
    return classes, rows


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



def batchnorm_effect(plain: RunRecord, recalibrated: RunRecord) -> dict[str, Any]:
    """How much of the validation drop in noisy epochs comes from BatchNorm statistics.

    ``recalibrated`` is ``plain`` trained again with ``bn_recalibrate`` (the same training steps;
    each evaluation preceded by re-estimating BatchNorm statistics on clean batches). Each run's
    drop at a noisy epoch e (``noise_on > 0``, after a clean one) is its val F1 at the last clean
    epoch before e minus its val F1 at e. Re-estimating also helps in clean epochs (the running
    statistics lag the weights), so what it recovers of the noise's drop is the difference of the
    two drops, not of the two F1s: ``recovered`` = ``total_drop`` - ``total_drop_recalibrated``,
    ``recovered_share`` = recovered / sum of plain drops (None without a drop); ``stretches`` the same
    per stretch of consecutive noisy epochs (``first`` and ``last`` epoch, both drops, the share), as
    the share can change over a run. ``clean_gain`` is the mean gain of re-estimating in clean epochs,
    ``epochs`` the per-epoch rows, and ``max_train_loss_diff`` shows whether the training really was
    the same.
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
    stretches: list[list[dict[str, Any]]] = []
    for i, row in enumerate(rows):
        if row["drop"] is not None:
            if i == 0 or rows[i - 1]["drop"] is None:
                stretches.append([])
            stretches[-1].append(row)
    return {
        "epochs": rows,
        **_drops([row for stretch in stretches for row in stretch]),
        "stretches": [{"first": stretch[0]["epoch"], "last": stretch[-1]["epoch"], **_drops(stretch)}
                      for stretch in stretches],
        "clean_gain": float(np.mean(clean_gains)) if clean_gains else None,
        "max_train_loss_diff": float(np.max(np.abs(a["train_loss"][:n] - b["train_loss"][:n]))) if n else None,
    }


def _drops(noisy: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The summed drops of noisy epochs' rows, as trained and re-estimated, and the share re-estimating recovers."""
    drop = sum(row["drop"] for row in noisy)
    drop_recalibrated = sum(row["drop_recalibrated"] for row in noisy)
    return {"total_drop": drop, "total_drop_recalibrated": drop_recalibrated, "recovered": drop - drop_recalibrated,
            "recovered_share": (drop - drop_recalibrated) / drop if drop > 0 else None}


def batchnorm_pairs(runs: Sequence[RunRecord]) -> list[tuple[RunRecord, RunRecord]]:
    """(plain, recalibrated) runs of the same method and seed, the second trained with ``bn_recalibrate``."""
    groups = by_method(runs)
    pairs = []
    for method, group in groups.items():
        base = method.removesuffix(RECALIBRATED)
        if base != method and base in groups:
            plain = {run.seed: run for run in groups[base]}
            pairs += [(plain[run.seed], run) for run in group if run.seed in plain]
    return pairs
