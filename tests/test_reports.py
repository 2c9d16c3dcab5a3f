"""Reports from synthetic run directories: files, table values, paired CIs, error messages."""
from __future__ import annotations

import csv
import json
import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fernoise import reports
from fernoise.reports import (
    PAPER_CLAIMS,
    RunFormatError,
    RunRecord,
    batchnorm_effect,
    batchnorm_pairs,
    check_claim,
    compare_to_baseline,
    describe_runs,
    load_run,
    load_runs,
    mean_std_cell,
    method_info,
    plot_confusion,
    t_quantile,
    table1,
    write_report,
)

COLUMNS = ["epoch", "train_loss", "val_loss", "val_f1", "val_acc", "noise_on", "lr", "seconds"]
PERIODIC_NOISE = [0, 0, 1, 1, 1, 0]


def make_run(
    root: Path,
    method: str,
    seed: int,
    epochs: int = 6,
    noise: list[float] | None = None,
    autorelu: bool = False,
    test: bool = False,
) -> Path:
    """A run directory in the train contract with seeded synthetic curves; summary consistent with them."""
    rng = np.random.default_rng(abs(hash((method, seed))) % 2**32)
    run = root / f"{method}-s{seed}"
    run.mkdir(parents=True)
    e = np.arange(1, epochs + 1)
    noise_on = np.array(noise if noise is not None else [0] * epochs, dtype=float)
    train_loss = 2.0 * np.exp(-e / 3) + 0.3 * noise_on + rng.uniform(0, 0.1, epochs)
    val_f1 = 0.3 + 0.05 * np.log(e) - 0.05 * noise_on + rng.uniform(0, 0.02, epochs)
    columns = {
        "epoch": e,
        "train_loss": train_loss,
        "val_loss": train_loss + 0.2,
        "val_f1": val_f1,
        "val_acc": val_f1 + 0.1,
        "noise_on": noise_on,
        "lr": np.full(epochs, 1e-4),
        "seconds": rng.uniform(50, 70, epochs),
    }
    if autorelu:
        columns["autorelu_w"] = np.where(noise_on > 0, -0.01, 0.05) * rng.uniform(0.5, 1.5, epochs)
    with open(run / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        cells = [[int(v) if k == "epoch" else repr(float(v)) for v in col] for k, col in columns.items()]
        writer.writerows(zip(*cells))
    (run / "config.yaml").write_text(yaml.safe_dump({"method": method, "seed": seed, "epochs": epochs}))
    summary = {
        "best_val_f1": float(val_f1.max()),
        "best_epoch": int(e[val_f1.argmax()]),
        "final_val_f1": float(val_f1[-1]),
        "final_train_loss": float(train_loss[-1]),
    }
    if test:
        summary.update(test_f1=float(val_f1[-1] - 0.01), test_acc=float(val_f1[-1] + 0.05))
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def full_grid(tmp_path: Path) -> Path:
    """All paper methods: 3 seeds each (dropout+periodic 2, one baseline seed stops early)."""
    root = tmp_path / "runs"
    for seed in (0, 1, 2):
        make_run(root, "baseline", seed, epochs=5 if seed == 2 else 6, test=True)
        make_run(root, "dropout", seed)
        make_run(root, "periodic", seed, noise=PERIODIC_NOISE, test=True)
        make_run(root, "dynamic", seed, noise=[0, 1, 0, 0, 1, 1] if seed else [0, 0, 1, 1, 0, 1], autorelu=True)
        if seed < 2:
            make_run(root, "dropout+periodic", seed, noise=PERIODIC_NOISE)
    return root


def assert_plot(image: Image.Image, colors: list[str]) -> None:
    """Axes drawn (long dark horizontal and vertical lines) and a curve in each of ``colors``."""
    from matplotlib.colors import to_rgb

    rgb = np.asarray(image.convert("RGB")).astype(int)
    dark = rgb.max(axis=2) < 90
    assert dark.mean(axis=1).max() > 0.4 and dark.mean(axis=0).max() > 0.25, "no axes"
    border = np.concatenate([dark[:2].ravel(), dark[-2:].ravel(), dark[:, :2].ravel(), dark[:, -2:].ravel()])
    assert not border.any(), "something (a title, a label) is cut off at the image's edge"
    for color in colors:
        target = np.array(to_rgb(color)) * 255
        assert (np.abs(rgb - target).max(axis=2) < 12).sum() > 300, f"no curve in {color}"


def _summaries(root: Path, method: str) -> list[dict]:
    return [json.loads((p / "summary.json").read_text()) for p in sorted(root.glob(f"{method}-s*"))]


EXPECTED_FIGURES = [
    "fig3_loss_baseline_vs_periodic.png",
    "fig4_f1_baseline_vs_periodic.png",
    "fig5_loss_baseline_vs_dropout.png",
    "fig6_f1_baseline_vs_dropout.png",
    "fig7_loss_dropout_vs_dropout-periodic.png",
    "fig8_f1_dropout_vs_dropout-periodic.png",
    "fig9_loss_baseline_vs_dropout-periodic.png",
    "fig9_f1_baseline_vs_dropout-periodic.png",
    "fig10_loss_periodic_vs_dynamic.png",
    "fig11_f1_periodic_vs_dynamic.png",
    "autorelu_weight.png",
]


def test_write_report_writes_everything(full_grid: Path, tmp_path: Path):
    out = tmp_path / "report"
    command = "fernoise report runs/ --out report"
    path = write_report(load_runs([full_grid]), out, command, "synthetic faces, 6 epochs", extra={"device": "cpu"})
    assert path == out / "report.md"
    for name in ["table1.md", "table1.csv", "report.md", *EXPECTED_FIGURES]:
        assert (out / name).is_file(), name
    for name in EXPECTED_FIGURES:
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width >= 800 and image.height >= 400
            methods = name.split("_", 2)[2].removesuffix(".png").split("_vs_") if name.startswith("fig") else []
            assert_plot(image, [method_info(m.replace("dropout-periodic", "dropout+periodic")).color
                                for m in methods])
    report = path.read_text()
    for name in EXPECTED_FIGURES:
        assert f"]({name})" in report
    assert command in report and "synthetic faces" in report and "**device**: cpu" in report
    assert "Skipped" not in report
    assert "| Method | seed | epochs | best val F1 (epoch) | wall time | directory |\n|---|---|---|---|---|---|\n" in report
    assert "`../runs/baseline-s2`" in report  # run list with relative directory
    wall = float(np.loadtxt(full_grid / "baseline-s2" / "metrics.csv", delimiter=",", skiprows=1)[:, 7].sum())
    assert "| ResNet-18 | 2 | 5 | " in report
    minutes, seconds = divmod(int(round(wall)), 60)
    assert f"{minutes}m {seconds:02d}s" in report
    # Dropout+Periodic has no seed 2 -> its comparison uses two pairs.
    assert "| Dropout+Periodic | 2 |" in report
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_table1_matches_hand_computed_statistics(full_grid: Path, tmp_path: Path):
    rows = table1(load_runs([full_grid]))
    assert [row["method"] for row in rows] == ["baseline", "dropout", "periodic", "dynamic", "dropout+periodic"]
    assert [row["label"] for row in rows] == ["ResNet-18", "+Dropout", "+Periodic", "+Dynamic", "Dropout+Periodic"]
    for row in rows:
        summaries = _summaries(full_grid, row["method"])
        losses = np.array([s["final_train_loss"] for s in summaries])
        f1s = np.array([s["best_val_f1"] for s in summaries])
        finals = np.array([s["final_val_f1"] for s in summaries])
        assert row["n_seeds"] == len(summaries)
        assert row["train_loss_mean"] == pytest.approx(losses.mean())
        assert row["train_loss_std"] == pytest.approx(losses.std(ddof=1))
        assert row["val_f1_mean"] == pytest.approx(f1s.mean())
        assert row["val_f1_std"] == pytest.approx(f1s.std(ddof=1))
        assert row["final_val_f1_mean"] == pytest.approx(finals.mean())
        assert row["final_val_f1_std"] == pytest.approx(finals.std(ddof=1))
        tests = np.array([s["test_f1"] for s in summaries if "test_f1" in s])
        assert row["test_f1_n"] == tests.size
        assert row["test_f1_mean"] == (pytest.approx(tests.mean()) if tests.size else None)

    write_report(load_runs([full_grid]), tmp_path / "r", "cmd", "data")
    with open(tmp_path / "r" / "table1.csv", newline="") as handle:
        records = list(csv.DictReader(handle))
    assert list(records[0])[:8] == ["method", "label", "n_seeds", "seeds", "train_loss_mean", "train_loss_std",
                                    "train_loss_n", "val_f1_mean"]
    for record, row in zip(records, rows):
        assert record["method"] == row["method"] and int(record["n_seeds"]) == row["n_seeds"]
        assert float(record["val_f1_mean"]) == row["val_f1_mean"]  # full precision
        assert float(record["train_loss_std"]) == row["train_loss_std"]
        assert record["test_acc_mean"] == ("" if row["test_acc_mean"] is None else repr(row["test_acc_mean"]))
    table = (tmp_path / "r" / "table1.md").read_text()
    base = rows[0]
    assert f"{base['val_f1_mean']:.4f} ± {base['val_f1_std']:.4f} (n=3)" in table
    assert f"| Validation macro-F1 (final epoch) | {base['final_val_f1_mean']:.4f} ± " in table
    assert "Test macro-F1" in table and "—" in table


@pytest.mark.parametrize("values, fmt, cell", [
    ([0.1438, 0.1406, 0.1408], ".4g", "0.1417 ± 0.0018 (n=3)"),  # std to the mean's last digit
    ([1.0146, 1.0059, 1.0041], ".4g", "1.008 ± 0.006 (n=3)"),
    ([41.2, 40.1], ".4g", "40.65 ± 0.78 (n=2)"),
    ([0.5347, 0.5510], ".4f", "0.5429 ± 0.0115 (n=2)"),
    ([0.4013, 0.4187], ".4g", "0.4100 ± 0.0123 (n=2)"),  # a mean ending in 0 keeps its digits, and so the spread
    ([2.0, 2.0], ".4g", "2.000 ± 0.000 (n=2)"),
    ([1234.0, 1236.0], ".4g", "1235 ± 1 (n=2)"),
    ([0.5], ".4f", "0.5000 (n=1)"),
    ([], ".4f", "—"),
])
def test_table_cells_give_the_spread_as_many_decimals_as_the_mean(values, fmt, cell):
    assert mean_std_cell(values, fmt) == cell


def test_compare_to_baseline_paired_by_seed(full_grid: Path):
    runs = load_runs([full_grid])
    rows = {row["method"]: row for row in compare_to_baseline(runs)}
    assert set(rows) == {"dropout", "periodic", "dynamic", "dropout+periodic"}
    base = {s: json.loads((full_grid / f"baseline-s{s}" / "summary.json").read_text()) for s in (0, 1, 2)}
    for method, row in rows.items():
        seeds = [s for s in (0, 1, 2) if (full_grid / f"{method}-s{s}").exists()]
        for key, field in (("val_f1", "best_val_f1"), ("final_val_f1", "final_val_f1"),
                           ("train_loss", "final_train_loss")):
            diffs = np.array(
                [json.loads((full_grid / f"{method}-s{s}" / "summary.json").read_text())[field] - base[s][field]
                 for s in seeds]
            )
            assert row["n"] == len(seeds) and row["seeds"] == seeds
            assert row[f"{key}_diff_mean"] == pytest.approx(diffs.mean())
            assert row[f"{key}_diff_std"] == pytest.approx(diffs.std(ddof=1))
            stats = pytest.importorskip("scipy.stats")
            low, high = stats.t.interval(0.95, len(diffs) - 1, loc=diffs.mean(), scale=stats.sem(diffs))
            assert row[f"{key}_diff_ci_low"] == pytest.approx(low, rel=1e-9)
            assert row[f"{key}_diff_ci_high"] == pytest.approx(high, rel=1e-9)


def test_single_seed_has_no_ci(tmp_path: Path):
    make_run(tmp_path, "baseline", 0)
    make_run(tmp_path, "periodic", 0, noise=PERIODIC_NOISE)
    make_run(tmp_path, "periodic", 1, noise=PERIODIC_NOISE)
    runs = load_runs([tmp_path])
    (row,) = compare_to_baseline(runs)
    assert row["n"] == 1 and row["unpaired_seeds"] == [1]
    assert row["val_f1_diff_std"] is None and row["val_f1_diff_ci_low"] is None
    report = write_report(runs, tmp_path / "out", "cmd", "data").read_text()
    assert "n/a" in report and "seeds [1] have no ResNet-18 run" in report


def _runs_with_best_f1(root: Path, best: dict[str, list[float]]) -> list:
    """One run per method and seed whose summary's best val F1 is the given value."""
    for method, values in best.items():
        for seed, value in enumerate(values):
            run = make_run(root, method, seed)
            summary = json.loads((run / "summary.json").read_text())
            (run / "summary.json").write_text(json.dumps({**summary, "best_val_f1": value}))
    return load_runs([root])


def test_the_papers_claims_get_verdicts_from_paired_intervals(tmp_path: Path):
    base = np.array([0.50, 0.40, 0.45])
    runs = _runs_with_best_f1(tmp_path / "runs", {
        "baseline": list(base),
        "periodic": list(base + [0.04, 0.05, 0.06]),  # clearly better: holds
        "dropout": list(base + [-0.03, -0.02, -0.025]),  # clearly worse: "not better" holds
        "dynamic": list(base + [0.04, 0.05, 0.06] + [0.01, -0.01, 0.005]),  # around periodic: not contradicted
        "dropout+periodic": list(base + [-0.03, -0.02, -0.025] + [-0.05, -0.06, -0.055]),  # worse than dropout
    })
    claims = {claim.method: check_claim(claim, runs) for claim in PAPER_CLAIMS}
    assert claims["periodic"]["verdict"] == "holds"
    assert claims["dropout"]["verdict"] == "holds: worse"
    assert claims["dynamic"]["verdict"] == "not contradicted: the interval contains 0"
    assert claims["dropout+periodic"]["verdict"] == "contradicted: worse"
    diffs = np.array([0.01, -0.01, 0.005])  # dynamic - periodic, by seed
    half = 4.303 * diffs.std(ddof=1) / math.sqrt(3)  # t(0.975, 2 df)
    assert claims["dynamic"]["n"] == 3 and claims["dynamic"]["mean"] == pytest.approx(diffs.mean())
    assert claims["dynamic"]["low"] == pytest.approx(diffs.mean() - half, rel=1e-3)
    assert claims["dynamic"]["high"] == pytest.approx(diffs.mean() + half, rel=1e-3)
    report = write_report(runs, tmp_path / "out", "cmd", "data").read_text()
    section = report.split("## The paper's claims")[1].split("\n## ")[0]
    assert section.count("| holds") == 2 and section.count("| contradicted: worse |") == 1
    assert "| not contradicted: the interval contains 0 |" in section


def test_claims_without_an_interval_get_no_verdict(tmp_path: Path):
    runs = _runs_with_best_f1(tmp_path / "runs", {
        "baseline": [0.4, 0.5],
        "periodic": [0.9],  # one pair: no interval, however large the gain
        "dropout": [0.41, 0.52],  # better on both seeds, but the interval contains 0
    })
    claims = {claim.method: check_claim(claim, runs) for claim in PAPER_CLAIMS}
    assert claims["periodic"]["verdict"] == "one seed: no interval, no verdict" and claims["periodic"]["n"] == 1
    assert claims["dropout"]["verdict"] == "not contradicted: the interval contains 0" and claims["dropout"]["low"] < 0
    assert claims["dynamic"]["verdict"] == "not measured (no paired runs)" and claims["dynamic"]["n"] == 0
    assert claims["dropout+periodic"]["verdict"] == "not measured (no paired runs)"


def test_a_diverged_run_leaves_its_claim_undetermined(tmp_path: Path):
    runs = _runs_with_best_f1(tmp_path / "runs", {"baseline": [0.4, 0.5, 0.45], "periodic": [math.nan, 0.6, 0.55]})
    claim = next(claim for claim in PAPER_CLAIMS if claim.method == "periodic")
    assert check_claim(claim, runs)["verdict"] == "undetermined: a run diverged"


def test_report_command_reports_the_finished_runs_and_names_the_unfinished(
        full_grid: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    from fernoise.cli import main

    (full_grid / "dynamic-s2" / "summary.json").unlink()  # still training
    for run in full_grid.iterdir():
        config = yaml.safe_load((run / "config.yaml").read_text())
        epochs = 4 if run.name == "periodic-s0" else 6
        (run / "config.yaml").write_text(yaml.safe_dump({**config, "data": "fer.tar.gz", "lr": 1e-4, "epochs": epochs}))
    out = tmp_path / "out"
    assert main(["report", str(full_grid), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"not finished, left out: {full_grid / 'dynamic-s2'}" in printed
    report = (out / "report.md").read_text()
    assert "fer.tar.gz: " in report and "lr 0.0001" in report and "epochs 4/6" in report
    assert "seeds [0, 1, 2]" in report and f"Not finished, left out**: {full_grid / 'dynamic-s2'}" in report
    assert "| +Dynamic | 2 |" in report  # two finished dynamic runs paired with the baseline
    with open(out / "table1.csv", newline="") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert rows["dynamic"]["seeds"] == "0;1" and rows["periodic"]["seeds"] == "0;1;2"
    assert (out / "fig11_f1_periodic_vs_dynamic.png").is_file()


def test_report_beside_another_set_of_runs_puts_their_claims_side_by_side(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    from fernoise.cli import main

    base = [0.50, 0.40, 0.45]
    _runs_with_best_f1(tmp_path / "recipe", {"baseline": base, "periodic": [b + 0.05 for b in base]})
    _runs_with_best_f1(tmp_path / "paper", {"baseline": base, "periodic": [b - 0.05 for b in base]})
    make_run(tmp_path / "paper", "dropout", 0)
    (tmp_path / "paper" / "dropout-s0" / "summary.json").unlink()  # still training
    out = tmp_path / "out"
    assert main(["report", str(tmp_path / "recipe"), "--beside", str(tmp_path / "paper"), "--out", str(out)]) == 0
    assert f"not finished, left out: {tmp_path / 'paper' / 'dropout-s0'}" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert f"--beside {tmp_path / 'paper'}" in report  # the command that regenerates it
    section = report.split("## The paper's claims beside paper\n")[1].split("\n## ")[0]
    assert "**recipe**: " in section and "**paper**: " in section and "| recipe: Δ |" in section
    periodic = [line for line in section.splitlines() if line.startswith("| periodic noise improves on the baseline")]
    # max over epochs, then the final epoch's F1, which both sets have; no final model was scored again in either
    assert [line.split(" | ")[1] for line in periodic] == ["max val F1", "final val F1"]
    assert periodic[0].split(" | ")[2:] == ["+0.0500", "[+0.0500, +0.0500]", "3", "holds", "-0.0500",
                                             "[-0.0500, -0.0500]", "3", "contradicted: worse |"]
    dropout = next(line for line in section.splitlines() if line.startswith("| dropout alone"))
    assert dropout.endswith("| 0 | not measured (no paired runs) |")  # neither set has a finished dropout run
    missing = tmp_path / "none"
    assert main(["report", str(tmp_path / "recipe"), "--beside", str(missing), "--out", str(tmp_path / "x")]) == 2
    assert f"{missing}: no run directories" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_report_command_without_finished_runs_says_so(tmp_path: Path, capsys: pytest.CaptureFixture):
    from fernoise.cli import main

    run = make_run(tmp_path / "runs", "baseline", 0)
    (run / "summary.json").unlink()
    assert main(["report", str(tmp_path / "runs")]) == 2
    assert "no finished runs (with summary.json) yet" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "report.md").exists()


def test_batchnorm_effect_shares_the_noisy_epochs_drop(tmp_path: Path):
    def run(val_f1: list[float], train_loss: list[float]) -> RunRecord:
        metrics = {"epoch": np.arange(1.0, 7.0), "noise_on": np.array([0, 0, 1, 1, 0.5, 0.0]),
                   "val_f1": np.array(val_f1), "train_loss": np.array(train_loss)}
        return RunRecord(tmp_path, "periodic", 0, metrics, {}, {})

    loss = [1.5, 1.2, 1.4, 1.3, 1.2, 0.9]
    plain = run([0.30, 0.35, 0.25, 0.28, 0.30, 0.40], loss)
    # re-estimating gains 0.01 in clean epochs, so the noisy epochs' F1 gains overstate what it recovers
    effect = batchnorm_effect(plain, run([0.31, 0.36, 0.31, 0.33, 0.34, 0.41], loss))
    # plain drops from the last clean epoch (0.35): 0.10, 0.07, 0.05; re-estimated (from 0.36): 0.05, 0.03, 0.02
    assert [row["drop"] for row in effect["epochs"]] == pytest.approx([None, None, 0.10, 0.07, 0.05, None])
    assert [row["drop_recalibrated"] for row in effect["epochs"]] == pytest.approx(
        [None, None, 0.05, 0.03, 0.02, None])
    assert effect["total_drop"] == pytest.approx(0.22) and effect["recovered"] == pytest.approx(0.12)
    assert effect["recovered_share"] == pytest.approx(0.12 / 0.22) and effect["clean_gain"] == pytest.approx(0.01)
    assert effect["max_train_loss_diff"] == 0
    assert effect["stretches"] == [{"first": 3, "last": 5, **{key: pytest.approx(effect[key]) for key in (
        "total_drop", "total_drop_recalibrated", "recovered", "recovered_share")}}]
    assert batchnorm_effect(plain, run([0.30] * 6, [1.0] * 6))["max_train_loss_diff"] == pytest.approx(0.5)
    # two stretches, epochs 2 and 4-5: each its own share (0.05 of 0.10 then 0.02 of 0.02 + 0.04)
    plain.metrics["noise_on"] = np.array([0, 1, 0, 1, 1, 0.0])
    plain.metrics["val_f1"] = np.array([0.30, 0.20, 0.35, 0.33, 0.31, 0.40])
    two = batchnorm_effect(plain, run([0.31, 0.26, 0.36, 0.35, 0.33, 0.41], loss))
    assert [(s["first"], s["last"]) for s in two["stretches"]] == [(2, 2), (4, 5)]
    assert [s["recovered_share"] for s in two["stretches"]] == pytest.approx([0.5, 1 / 3])
    assert two["recovered_share"] == pytest.approx((0.05 + 0.02) / 0.16)
    clean = run([0.3] * 6, loss)
    clean.metrics["noise_on"] = np.zeros(6)
    assert batchnorm_effect(clean, clean)["recovered_share"] is None


def test_report_pairs_a_recalibrated_run_with_its_plain_twin(tmp_path: Path, monkeypatch):
    plain = make_run(tmp_path / "runs", "periodic", 0, noise=PERIODIC_NOISE)
    make_run(tmp_path / "runs", "periodic", 1, noise=PERIODIC_NOISE)  # no twin: not in the pair's figure
    twin = tmp_path / "runs-bnrecal" / "periodic-s0"
    shutil.copytree(plain, twin)
    config = yaml.safe_load((twin / "config.yaml").read_text())
    (twin / "config.yaml").write_text(yaml.safe_dump({**config, "bn_recalibrate": 20}))
    with open(twin / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:  # re-estimating recovers half of every noisy epoch's loss of F1
        row["val_f1"] = repr(float(row["val_f1"]) + 0.025 * float(row["noise_on"]))
    with open(twin / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    runs = load_runs([tmp_path / "runs", twin])
    assert sorted(run.method for run in runs) == ["periodic", "periodic", "periodic+bn-recal"]
    assert method_info("periodic+bn-recal").label == "+Periodic (BN re-estimated)"
    (pair,) = batchnorm_pairs(runs)
    assert [run.path for run in pair] == [plain, twin]
    effect = batchnorm_effect(*pair)
    drops = [row["drop"] for row in effect["epochs"] if row["drop"] is not None]
    assert len(drops) == 3 and effect["max_train_loss_diff"] == 0  # epochs 3-5 of PERIODIC_NOISE
    assert effect["recovered"] == pytest.approx(0.025 * len(drops))
    plotted = {}
    plot_pair = reports.plot_pair

    def spy(groups, methods, column, ylabel, title, path):
        plotted[path.name] = {method: [run.seed for run in groups[method]] for method in methods}
        plot_pair(groups, methods, column, ylabel, title, path)

    monkeypatch.setattr(reports, "plot_pair", spy)
    report = write_report(runs, tmp_path / "out", "cmd", "data").read_text()
    assert plotted["bn_recal_f1_periodic.png"] == {"periodic": [0], "periodic+bn-recal": [0]}
    assert "| +Periodic | +Periodic (BN re-estimated) |" in report  # its own Table 1 column
    assert "+Periodic | 1 |" not in report.split("## BatchNorm statistics")[1].split("## Runs")[0]
    section = report.split("## BatchNorm statistics in noisy epochs")[1].split("\n## ")[0]
    share = effect["recovered"] / effect["total_drop"]
    assert f"| +Periodic | 0 | {effect['total_drop']:.4f} |" in section and f"({share:.0%})" in section
    assert f"| {share:.0%} (3-5) |" in section  # PERIODIC_NOISE's one stretch
    table_lines = [line for line in section.splitlines() if line.startswith("|")]
    assert "### +Periodic, seed 0" in section and len(table_lines) == 3 + 2 + len(effect["epochs"])
    assert "](bn_recal_f1_periodic.png)" in section
    with Image.open(tmp_path / "out" / "bn_recal_f1_periodic.png") as image:
        assert_plot(image, [method_info("periodic").color, method_info("periodic+bn-recal").color])
    # without the plain twin there is nothing to pair, and no section
    assert "BatchNorm statistics" not in write_report(load_runs([twin]), tmp_path / "o2", "c", "d").read_text()


def test_describe_runs_names_precision_and_a_used_bn_recalibration(tmp_path: Path):
    runs = []
    for method, seed, extra in (("periodic", 0, {}), ("periodic", 1, {"precision": "bf16"}), ("dropout", 0, {})):
        run = make_run(tmp_path, method, seed)
        config = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**config, "precision": "fp32", "bn_recalibrate": 0, **extra}))
        runs.append(load_run(run))
    line = describe_runs(runs)
    assert "precision bf16/fp32" in line and "epochs 6" in line and line.endswith("seeds [0, 1]")
    assert "BatchNorm" not in line  # 0 in every run: the option was not used
    config = yaml.safe_load((runs[0].path / "config.yaml").read_text())
    (runs[0].path / "config.yaml").write_text(yaml.safe_dump({**config, "bn_recalibrate": 20}))
    runs[0] = load_run(runs[0].path)
    assert "BatchNorm statistics re-estimated on clean training batches 0/20" in describe_runs(runs)


def test_t_quantile_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 41), 60, 100, 250, 1000]:
        for p in (0.9, 0.95, 0.975, 0.995, 0.9995, 0.05):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9, abs=1e-9)
    for df in (2000, 10**5):  # Cornish-Fisher branch
        assert t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-10)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_t_quantile_known_values():
    # Textbook two-sided 95% critical values; independent of scipy.
    for df, value in ((1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228), (30, 2.042)):
        assert t_quantile(0.975, df) == pytest.approx(value, abs=5e-4)


def test_the_statistics_and_run_reading_need_no_matplotlib():
    code = ("import sys; import fernoise.stats, fernoise.runs; "
            "print(sorted(m for m in sys.modules if m.startswith('matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_pair_is_noted_not_fatal(tmp_path: Path):
    make_run(tmp_path / "runs", "baseline", 0)
    make_run(tmp_path / "runs", "periodic", 0, noise=PERIODIC_NOISE)
    out = tmp_path / "out"
    report = write_report(load_runs([tmp_path / "runs"]), out, "cmd", "data").read_text()
    assert (out / "fig3_loss_baseline_vs_periodic.png").is_file()
    assert not (out / "fig5_loss_baseline_vs_dropout.png").exists()
    assert not (out / "autorelu_weight.png").exists()
    assert "Fig. 5/6 (ResNet-18 vs +Dropout): no runs of 'dropout'" in report
    assert "Fig. 10/11 (+Periodic vs +Dynamic): no runs of 'dynamic'" in report


def test_report_without_baseline(tmp_path: Path):
    make_run(tmp_path, "dynamic", 3, noise=PERIODIC_NOISE, autorelu=True)
    report = write_report([load_run(tmp_path / "dynamic-s3")], tmp_path / "out", "cmd", "data").read_text()
    assert "No baseline runs" in report and "autorelu_weight.png" in report


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace("0.00042", "abc", 1), r"metrics\.csv:3: column 'lr': 'abc' is not a number"),
        (lambda text: text + "7,1.0\n", r"metrics\.csv:8: 2 fields, the header has 8"),
        (lambda text: text.replace("val_f1,", "", 1), r"metrics\.csv:1: header lacks column\(s\) val_f1"),
        (lambda text: text.replace("\n3,", "\n2,", 1), r"metrics\.csv:4: epoch '2' is not an integer"),
        (lambda text: text.splitlines()[0] + "\n", r"metrics\.csv: no epochs recorded"),
    ],
)
def test_malformed_metrics_names_file_and_line(tmp_path: Path, edit, message):
    run = make_run(tmp_path, "baseline", 0)
    metrics = run / "metrics.csv"
    lines = metrics.read_text().splitlines()
    fields = lines[2].split(",")
    lines[2] = ",".join([*fields[:6], "0.00042", *fields[7:]])  # a unique lr text on line 3
    metrics.write_text(edit("\n".join(lines) + "\n"))
    with pytest.raises(RunFormatError, match=message) as info:
        load_run(run)
    assert str(metrics) in str(info.value)


def test_other_malformed_files(tmp_path: Path):
    run = make_run(tmp_path, "baseline", 0)
    (run / "summary.json").write_text('{\n  "best_val_f1": 0.3,\n  oops\n}')
    with pytest.raises(RunFormatError, match=r"summary\.json:3: invalid JSON"):
        load_run(run)
    (run / "summary.json").write_text(json.dumps({"best_val_f1": 0.3}))
    with pytest.raises(RunFormatError, match=r"summary\.json: 'best_epoch' missing"):
        load_run(run)
    (run / "config.yaml").write_text("method: baseline\n")
    with pytest.raises(RunFormatError, match=r"config\.yaml: 'seed' missing"):
        load_run(run)
    (run / "config.yaml").unlink()
    with pytest.raises(RunFormatError, match=r"config\.yaml: missing"):
        load_run(run)
    with pytest.raises(RunFormatError, match="no run directories"):
        load_runs([tmp_path / "nothing-here"])


def test_diverged_run_is_reported_not_rejected(tmp_path: Path):
    run = make_run(tmp_path, "periodic", 0, noise=PERIODIC_NOISE)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "final_train_loss": float("nan")}))
    (row,) = table1([load_run(run)])
    assert math.isnan(row["train_loss_mean"])


def test_duplicate_seed_is_refused(tmp_path: Path):
    make_run(tmp_path / "a", "baseline", 0)
    make_run(tmp_path / "b", "baseline", 0)
    with pytest.raises(ValueError, match="two runs of method 'baseline' with seed 0"):
        table1(load_runs([tmp_path]))


def test_plot_confusion(tmp_path: Path):
    names = ["anger", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    matrix = np.random.default_rng(0).integers(0, 50, (7, 7))
    matrix[1] = 0  # a class with no samples must not produce NaN
    plot_confusion(matrix, names, tmp_path / "cm.png", "Confusion (test)")
    with Image.open(tmp_path / "cm.png") as image:
        assert image.format == "PNG" and min(image.size) > 500
    assert not math.isnan(float(np.asarray(Image.open(tmp_path / "cm.png")).mean()))


def _write_trace(run: Path, w: list[float], steps_per_epoch: int) -> None:
    lines = ["epoch,step,w,w_min,w_max,grad_mean,grad_absmax"]
    for i, value in enumerate(w):
        epoch, step = divmod(i, steps_per_epoch)
        lines.append(f"{epoch + 1},{step + 1},{value},{value - 1e-6},{value + 1e-6},{(i + 1) * 1e-9},{(i + 2) * 1e-8}")
    (run / "autorelu_trace.csv").write_text("\n".join(lines) + "\n")


def test_report_counts_the_noisy_steps_of_dynamic_runs_and_warns_about_silent_ones(tmp_path: Path):
    from fernoise.reports import trace_stats, write_trace_report

    noisy = make_run(tmp_path, "dynamic", 0, epochs=2, noise=[0.5, 0.25], autorelu=True)
    _write_trace(noisy, [0.1, 0.05, -0.01, -0.02, 0.03, 0.01, 0.02, -0.01], steps_per_epoch=4)
    silent = make_run(tmp_path, "dynamic", 1, epochs=2, noise=[0, 0], autorelu=True)
    _write_trace(silent, [0.1, 0.09, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03], steps_per_epoch=4)
    with open(silent / "config.yaml", "a") as config:
        config.write("autorelu_adam_lr: 0.0001\n")  # the AutoReLU weights' own Adam: the table names it
    stats = trace_stats(load_run(noisy).trace)
    assert stats["noisy_steps"] == 3 and stats["first_noisy_step"] == 3 and stats["switches"] == 3
    assert stats["longest_noisy_stretch"] == 2 and stats["noisy_share_per_epoch"] == {1: 0.5, 2: 0.25}
    assert trace_stats(load_run(silent).trace)["first_noisy_step"] is None
    report = write_report(load_runs([tmp_path]), tmp_path / "out", "cmd", "data").read_text()
    assert "## Dynamic noise" in report and "| +Dynamic | 0 | exact, None | 3 of 8 (37.5%) | 3 | 3 | 2 |" in report
    assert "| +Dynamic | 1 | exact, None, own Adam lr 0.0001 | 0 of 8 (0.0%) |" in report
    assert "**Warning: never noisy:** +Dynamic seed 1." in report
    for seed in (0, 1):  # each traced run's per-step figure, linked from the report
        assert f"![AutoReLU per step, +Dynamic seed {seed}](autorelu_trace_dynamic_seed{seed}.png)" in report
        with Image.open(tmp_path / "out" / f"autorelu_trace_dynamic_seed{seed}.png") as image:
            assert_plot(image, ["tab:red", "tab:green"])  # (a flat spread line can fall between pixel rows)
    summary = write_trace_report(noisy)
    assert summary == json.loads((noisy / "autorelu_trace.json").read_text()) | {"noisy_share_per_epoch": {1: 0.5,
                                                                                                          2: 0.25}}
    with Image.open(noisy / "autorelu_trace.png") as image:
        assert_plot(image, ["tab:red", "tab:blue", "tab:green"])


def test_a_run_from_before_autorelu_grad_reads_as_the_exact_gradient_it_used(tmp_path: Path):
    from fernoise.runs import load_run

    old = make_run(tmp_path, "dynamic", 0, autorelu=True)  # its config.yaml has no autorelu_grad
    assert load_run(old).config["autorelu_grad"] == "exact"
    new = make_run(tmp_path / "new", "dynamic", 0, autorelu=True)
    config = yaml.safe_load((new / "config.yaml").read_text())
    (new / "config.yaml").write_text(yaml.safe_dump({**config, "autorelu_grad": "autograd"}))
    assert load_run(new).config["autorelu_grad"] == "autograd"


def test_curves_join_the_validated_epochs_of_a_run_that_skips_some(tmp_path: Path, monkeypatch):
    from matplotlib.axes import Axes

    from fernoise import figures

    def run(method: str, seed: int, val_f1: list[float]) -> RunRecord:
        metrics = {"epoch": np.arange(1.0, 7.0), "noise_on": np.zeros(6), "val_f1": np.array(val_f1)}
        return RunRecord(tmp_path, method, seed, metrics, {}, {})

    nan = float("nan")
    every_other = [nan, 0.3, nan, 0.4, nan, 0.5]  # val_every 2
    groups = {"baseline": [run("baseline", 0, every_other), run("baseline", 1, every_other)],
              "dropout": [run("dropout", 0, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])]}
    drawn = {}
    real_plot = Axes.plot

    def spy(self, x, y, *args, **kwargs):
        drawn[kwargs.get("label", "")] = (list(x), list(y))
        return real_plot(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", spy)
    figures.plot_pair(groups, ("baseline", "dropout"), "val_f1", "F1", "title", tmp_path / "pair.png")
    baseline = next(v for k, v in drawn.items() if "n=2" in k)
    assert baseline == ([2.0, 4.0, 6.0], pytest.approx([0.3, 0.4, 0.5]))  # one line, no NaN gaps
    assert next(v for k, v in drawn.items() if "n=1" in k)[0] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert (tmp_path / "pair.png").stat().st_size > 0


def _write_final(run: Path, macro_f1: float, fear: float) -> None:
    f1 = {"neutral": 0.6, "happy": 0.8, "fear": fear}
    (run / "final-evaluation.json").write_text(json.dumps({
        "macro_f1": macro_f1, "accuracy": macro_f1 + 0.05, "f1": f1, "views": {"flip": True, "shift": 0, "zoom": 0.1}}))


def test_final_models_scored_again_get_rows_claims_and_per_class_f1(tmp_path: Path):
    from fernoise.stats import per_class_f1

    root = tmp_path / "runs"
    for seed, (base, gain) in enumerate([(0.60, 0.020), (0.62, 0.030), (0.58, 0.025)]):
        _write_final(make_run(root, "baseline", seed), base, 0.50 + seed / 100)
        _write_final(make_run(root, "periodic", seed), base + gain, 0.40 + seed / 100)
        make_run(root, "dynamic", seed, autorelu=True)  # small files from before final scoring: none
    runs = load_runs([root])
    claim = next(c for c in PAPER_CLAIMS if c.method == "periodic")
    final = check_claim(claim, runs, quantity="final_model_f1")
    assert final["n"] == 3 and final["mean"] == pytest.approx(0.025) and final["verdict"] == "holds"
    assert check_claim(next(c for c in PAPER_CLAIMS if c.method == "dynamic"), runs,
                       quantity="final_model_f1")["verdict"] == "not measured (no paired runs)"
    classes, rows = per_class_f1(runs)
    periodic = next(row for row in rows if row["method"] == "periodic")
    assert classes == ["neutral", "happy", "fear"] and [row["method"] for row in rows] == ["baseline", "periodic"]
    assert periodic["fear_mean"] == pytest.approx(0.41) and periodic["fear_diff_mean"] == pytest.approx(-0.10)
    assert periodic["fear_diff_ci_low"] == pytest.approx(-0.10) and periodic["happy_diff_n"] == 3
    report = write_report(runs, tmp_path / "out", "cmd", "data").read_text()
    assert "| Final model macro-F1, scored again | 0.6000 ± 0.0200 (n=3) | 0.6250 ± 0.0229 (n=3) | — |" in report
    assert "6 views (the face, its mirror image, zoomed by ±0.1)" in report
    assert "Not scored again (no checkpoint where the report was made): +Dynamic seed 0, +Dynamic seed 1" in report
    assert "| +Periodic | 3 | +0.0000 [+0.0000, +0.0000] | +0.0000 [+0.0000, +0.0000] | -0.1000 [-0.1000, -0.1000] |" \
        in report


def test_final_models_with_batchnorm_re_estimated_get_their_rows_and_difference(tmp_path: Path):
    root = tmp_path / "runs"
    for seed, (base, bn_gain) in enumerate([(0.60, 0.05), (0.62, 0.07)]):
        for method, noisy in (("baseline", 0.0), ("dynamic", 0.10)):
            run = make_run(root, method, seed, autorelu=method == "dynamic")
            _write_final(run, base - noisy, 0.5)
            gain = bn_gain if method == "dynamic" else 0.0  # statistics of noisy steps: only dynamic gains
            (run / "final-evaluation-bnrecal.json").write_text(json.dumps({
                "macro_f1": base - noisy + gain, "accuracy": 0.7, "f1": {"fear": 0.5}, "bn_recalibrate": 20}))
    runs = load_runs([root])
    dynamic = next(run for run in runs if run.method == "dynamic" and run.seed == 1)
    assert dynamic.value("final_model_bn_f1") == pytest.approx(0.59) and dynamic.value("final_model_f1") == \
        pytest.approx(0.52) and dynamic.value("final_model_bn_f1_fear") == pytest.approx(0.5)
    report = write_report(runs, tmp_path / "out", "cmd", "data").read_text()
    assert "| Final model macro-F1, BatchNorm re-estimated | 0.6100 ± 0.0141 (n=2) | 0.5700 ± 0.0283 (n=2) |" in report
    assert "Δ final model F1, BatchNorm re-estimated" in report and "on 20 clean train batches" in report
    # scored again: -0.10 in both pairs; re-estimated: -0.05 and -0.03, so -0.04 [-0.167, +0.087]
    assert "| +Dynamic | 2 | " in report and "-0.1000 ± 0.0000 | [-0.1000, -0.1000] | -0.0400 ± 0.0141 | [-0.1671, +0.0871]" \
        in report
    without = tmp_path / "plain"  # no re-estimated scoring anywhere: neither rows nor words
    make_run(without, "baseline", 0)
    assert "BatchNorm re-estimated" not in write_report(load_runs([without]), tmp_path / "out2", "cmd", "data").read_text()


def test_a_final_evaluation_without_per_class_f1_is_named(tmp_path: Path):
    run = make_run(tmp_path, "baseline", 0)
    (run / "final-evaluation.json").write_text(json.dumps({"macro_f1": 0.5, "accuracy": 0.6}))
    with pytest.raises(RunFormatError, match=r"final-evaluation.json: 'f1' \(per-class F1"):
        load_run(run)


REPO = Path(__file__).resolve().parents[1]


def _report_command(report: Path) -> str:
    """The first line of the report's "## Command" block: the command that wrote it."""
    return report.read_text(encoding="utf-8").split("## Command\n\n```\n", 1)[-1].split("\n", 1)[0]


def _committed_reports() -> list[Path]:
    """Tracked ``results/*/report.md`` written by ``fernoise report`` (not by a training command)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        return []
    listed = subprocess.run(["git", "ls-files", "results/*/report.md"], cwd=REPO, capture_output=True, text=True)
    return [REPO / name for name in listed.stdout.split() if _report_command(REPO / name).startswith("fernoise report ")]


@pytest.mark.parametrize("committed", _committed_reports(), ids=lambda path: path.parent.name)
def test_a_committed_report_is_what_the_committed_small_files_give(committed, tmp_path, monkeypatch):
    """RESULTS.md quotes these reports: regenerating one from the tracked run files alone (no checkpoints,
    no untracked runs) must give it back to the byte, so that a code change that alters a published table
    shows up here."""
    tracked = subprocess.run(["git", "ls-files", "results"], cwd=REPO, capture_output=True, text=True).stdout.split()
    for name in tracked:
        if len(Path(name).parts) > 3:  # results/SET/RUN/FILE: a run's own files, not a set's report or figures
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    out = committed.parent.relative_to(REPO)
    assert not (tmp_path / out / "report.md").exists()  # the copy holds run files only, not the report
    from fernoise.cli import main

    assert main(shlex.split(_report_command(committed))[1:]) == 0
    assert (tmp_path / out / "report.md").read_text(encoding="utf-8") == committed.read_text(encoding="utf-8")
    assert (tmp_path / out / "table1.csv").read_text(encoding="utf-8") == (committed.parent / "table1.csv").read_text(
        encoding="utf-8")
