"""The command line, driven as a user would: subprocesses and exit codes."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_runner import fernoise
from PIL import Image

TINY = ["--train-limit", "64", "--val-limit", "64", "--image-size", "32", "--batch-size", "32", "--quiet"]


def _metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_help_lists_commands():
    out = fernoise("--help").stdout
    for command in ("prepare", "train", "evaluate", "reproduce", "predict", "export", "models"):
        assert command in out
    assert "--interval" in fernoise("train", "--help").stdout


@pytest.mark.parametrize("method", ["baseline", "dropout", "periodic", "dynamic", "dropout+periodic", "dropout+dynamic"])
def test_train_each_method_two_epochs(tmp_path, method):
    run = tmp_path / "run"
    # T = 1 makes epoch 2 noisy; an AutoReLU init of 1e-4 at lr 1e-3 turns negative within the first steps
    noisy = ["--interval", "1", "--autorelu-init", "1e-4", "--lr", "1e-3"]
    result = fernoise("train", "--method", method, "--epochs", "2", "--out", str(run), *TINY, *noisy)
    assert "best val F1" in result.stdout
    rows = _metrics(run)
    assert len(rows) == 2 and all(float(r["train_loss"]) > 0 for r in rows)
    assert ("autorelu_w" in rows[0]) == method.endswith("dynamic")
    assert (sum(float(r["noise_on"]) for r in rows) > 0) == method.endswith(("periodic", "dynamic"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == method


def test_dynamic_with_one_autorelu_weight_per_unit(tmp_path):
    from fernoise.checkpoint import load_checkpoint, model_from_checkpoint
    from fernoise.noise import AutoReLU

    run = tmp_path / "run"
    fernoise("train", "--method", "dynamic", "--no-autorelu-per-channel", "--epochs", "1", "--out", str(run), *TINY)
    assert yaml.safe_load((run / "config.yaml").read_text())["autorelu_per_channel"] is False
    model = model_from_checkpoint(load_checkpoint(run / "checkpoints" / "best.pt"))
    weights = [m.weight for m in model.modules() if isinstance(m, AutoReLU)]
    assert len(weights) == 8 and all(w.numel() == 1 for w in weights)  # one per residual block of ResNet-18


def test_periodic_noise_column_follows_algorithm_1(tmp_path):
    run = tmp_path / "run"
    fernoise("train", "--method", "periodic", "--interval", "3", "--epochs", "8", "--out", str(run),
             "--train-limit", "32", "--val-limit", "32", "--image-size", "16", "--batch-size", "32", "--quiet")
    assert [float(r["noise_on"]) for r in _metrics(run)] == [0, 0, 1, 1, 1, 0, 0, 0]


def test_resume_after_a_stop_matches_an_uninterrupted_run(tmp_path):
    common = ["--method", "periodic", "--interval", "1", *TINY]
    # one thread: the comparison is bit for bit (conftest.one_thread)
    fernoise("train", "--epochs", "3", "--out", str(tmp_path / "a"), *common, threads=1)
    fernoise("train", "--epochs", "2", "--out", str(tmp_path / "b"), *common, threads=1)
    fernoise("train", "--resume", str(tmp_path / "b"), "--epochs", "3", "--quiet", threads=1)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(_metrics(tmp_path / "b")) == drop(_metrics(tmp_path / "a"))


def test_a_run_from_before_autorelu_grad_existed_resumes(tmp_path):
    from fernoise.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "old"
    fernoise("train", "--method", "dynamic", "--autorelu-grad", "exact", "--epochs", "1", "--out", str(run), *TINY)
    config = yaml.safe_load((run / "config.yaml").read_text())
    del config["autorelu_grad"]  # as written before the key existed: such runs used the exact gradient
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    state = load_checkpoint(run / "checkpoints" / "last.pt", resume=True)
    del state["config"]["autorelu_grad"]
    save_checkpoint(run / "checkpoints" / "last.pt", state)
    fernoise("train", "--resume", str(run), "--epochs", "2", "--quiet")
    assert [int(r["epoch"]) for r in _metrics(run)] == [1, 2]


def test_reproduce_tiny_grid_writes_the_report(tmp_path):
    out = tmp_path / "grid"
    args = ["reproduce", "--methods", "baseline", "periodic", "dynamic", "--seeds", "2", "--epochs", "2",
            "--interval", "1", "--out", str(out), *TINY]
    fernoise(*args)
    for name in ("table1.md", "table1.csv", "report.md", "fig3_loss_baseline_vs_periodic.png",
                 "fig4_f1_baseline_vs_periodic.png", "autorelu_weight.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "fernoise reproduce" in report and "+Periodic" in report
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*-seed*/summary.json")}
    assert len(mtimes) == 6
    result = fernoise(*args)  # finished runs are reused, not retrained
    assert result.stdout.count("reused") == 6
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.glob("*-seed*/summary.json")}
    # a clone holds only what git keeps of a run (config.yaml, metrics.csv, summary.json, the trace):
    # the grid goes on from those files alone, without checkpoints or TensorBoard events
    import shutil

    for run in out.glob("*-seed*"):
        shutil.rmtree(run / "checkpoints")
        for events in run.glob("events.out.tfevents.*"):
            events.unlink()
    shutil.rmtree(out / "periodic-seed1")  # one run was never finished there
    result = fernoise(*args)
    assert result.stdout.count("reused") == 5 and "[periodic-seed1] training" in result.stdout
    assert {p: p.stat().st_mtime_ns for p in mtimes if p.parent.name != "periodic-seed1"} == {
        p: t for p, t in mtimes.items() if p.parent.name != "periodic-seed1"}
    assert "| +Dynamic | 1 | exact, 0.001 |" in (out / "report.md").read_text()  # the quick preset


def _folder_dataset(root: Path, classes: dict[str, int]) -> Path:
    from fernoise.data.synthetic import render_faces

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for offset, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            faces = render_faces(np.full(6, classes[name]), 32, 1, rng)
            for i, face in enumerate(faces):
                Image.fromarray(face[..., 0]).save(folder / f"{name}_{i}.png")
    return root


def test_evaluate_across_data_sets_counts_unknown_classes(tmp_path):
    run = tmp_path / "run"
    fernoise("train", "--epochs", "1", "--out", str(run), *TINY)
    other = _folder_dataset(tmp_path / "faces", {"happy": 1, "sad": 2, "contempt": 0})
    report = tmp_path / "eval.json"
    result = fernoise("evaluate", str(run / "checkpoints" / "best.pt"), "--data", str(other), "--json", str(report),
                      "--cache-dir", str(tmp_path / "cache"), "--quiet")
    scores = json.loads(report.read_text())
    assert scores["excluded"] == {"contempt": 6} and scores["n"] == 12
    assert "the val split: 18 images (val 18); scored 12, left out 6 of classes the model does not know (contempt: 6)" \
        in result.stdout.splitlines()[0]
    assert (tmp_path / "eval.confusion.png").is_file()


def test_evaluate_reproduces_the_logged_validation_score(tmp_path):
    run = tmp_path / "run"
    fernoise("train", "--epochs", "2", "--out", str(run), "--train-limit", "64", "--image-size", "32", "--quiet")
    summary = json.loads((run / "summary.json").read_text())
    report = tmp_path / "eval.json"
    fernoise("evaluate", str(run / "checkpoints" / "best.pt"), "--json", str(report), "--quiet")
    assert json.loads(report.read_text())["macro_f1"] == pytest.approx(summary["best_val_f1"], abs=1e-9)


def test_bad_config_gives_file_and_line_without_traceback(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("epochs: 2\nlernrate: 0.1\n")
    result = fernoise("train", "--config", str(config), "--out", str(tmp_path / "r"), check=False)
    assert result.returncode == 2
    assert "bad.yaml:2: unknown key 'lernrate'" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_data_path_is_a_clear_error(tmp_path):
    result = fernoise("train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"), check=False)
    assert result.returncode == 2 and "nowhere" in result.stderr and "Traceback" not in result.stderr


def test_output_piped_into_head_ends_quietly():
    # a command printing more than the reader takes (`fernoise evaluate ... | head -1`)
    code = ("import fernoise.cli as cli\n"
            "cli.COMMANDS['report'] = lambda args: [print('row ' * 30) for _ in range(100_000)] and 0\n"
            "raise SystemExit(cli.main(['report', 'runs']))")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.read(100).startswith(b"row row")
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141
    assert stderr == "", stderr
