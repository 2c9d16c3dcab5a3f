"""reproduce --jobs: which GPU each worker gets, and what an interrupt stops and cleans up; and
scripts/commit_runs.sh, which commits a grid's small files as its runs finish."""
from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from data_fixtures import make_folders

from fernoise import reproduce
from fernoise.reproduce import FinalScoring
from fernoise.config import TrainConfig

TINY = dict(train_limit=64, val_limit=32, image_size=32, batch_size=32, device="cpu", epochs=1)


def test_runs_on_the_cpu_get_no_gpu_even_where_there_are_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cpu, auto = TrainConfig(device="cpu"), TrainConfig(device="auto")
    assert reproduce._gpus_for([cpu, cpu]) == [None, None]
    assert reproduce._gpus_for([auto, cpu, auto, auto]) == [0, None, 1, 0]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert reproduce._gpus_for([auto]) == [None]


def test_an_interrupt_stops_only_its_own_workers_and_removes_their_temporary_files(tmp_path, monkeypatch):
    todo = [(TrainConfig(method=method, **TINY), tmp_path / method) for method in ("baseline", "periodic")]
    leftover = tmp_path / "baseline" / "checkpoints" / ".last.pt.x1y2.tmp"  # a write the kill cut short
    bystander = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,))
    bystander.start()

    def interrupted(futures):
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(concurrent.futures, "as_completed", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            reproduce._train_concurrently(todo, 2, True, lambda _: None)
        bystander.join(timeout=1)  # returns at once should it have been terminated
        assert bystander.is_alive(), "a child that is not a worker was terminated"
        assert [child for child in multiprocessing.active_children() if child is not bystander] == []  # workers gone
        assert not leftover.exists()
    finally:
        bystander.terminate()
        bystander.join()


def test_commit_runs_commits_a_report_that_has_no_figures(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "scripts" / "commit_runs.sh", repo / "scripts")
    run = repo / "results" / "grid" / "baseline-seed0"
    (run / "checkpoints").mkdir(parents=True)
    for path in (run / "config.yaml", run / "metrics.csv", run / "summary.json", run / "checkpoints" / "last.pt",
                 run.parent / "report.md", run.parent / "table1.md", run.parent / "table1.csv"):  # no *.png
        path.write_text("x\n")
    env = {**os.environ, "EVERY": "0", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org"}
    subprocess.run(["git", "init", "-q"], cwd=repo, env=env, check=True)
    done = subprocess.run(["bash", "scripts/commit_runs.sh", "results/grid"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, env=env, capture_output=True, text=True).stdout.split()
    assert tracked == [f"results/grid/{name}" for name in (
        "baseline-seed0/config.yaml", "baseline-seed0/metrics.csv", "baseline-seed0/summary.json",
        "report.md", "table1.csv", "table1.md")]


def test_final_models_are_scored_again_once_per_view_set_and_reported_per_class(tmp_path):
    out, logs = tmp_path / "grid", []
    faces = make_folders(tmp_path / "faces", per_class=16)  # a val split of 64 faces, all scored
    overrides = dict(TINY, val_limit=None, tta_flip=True, cache_dir=str(tmp_path / "cache"))
    reproduce.reproduce(out, data=str(faces), methods=("baseline", "periodic"), seeds=1, overrides=overrides,
                        quiet=True, log=logs.append, command="test", final_tta_zoom=0.0)
    run = out / "periodic-seed0"
    final, summary = run / "final-evaluation.json", json.loads((run / "summary.json").read_text())
    first = json.loads(final.read_text())
    # the run's own views on its own validation split: the last epoch's score again
    assert first["views"] == {"flip": True, "shift": 0, "zoom": 0.0} and first["n"] == 64
    assert first["macro_f1"] == pytest.approx(summary["final_val_f1"], abs=1e-6)
    assert first["accuracy"] == pytest.approx(summary["final_val_acc"], abs=1e-6)
    report = (out / "report.md").read_text()
    assert "Final model macro-F1, scored again" in report and "Δ final model F1, scored again" in report
    per_class = report.split("### Per-class F1 of the final models")[1]
    assert "| +Periodic | 1 |" in per_class and "| sad |" in per_class

    cfg = TrainConfig(**yaml.safe_load((run / "config.yaml").read_text()))
    reproduce.score_final_model(cfg, run, FinalScoring(0.1), True, logs.append)  # other views: scored again
    zoomed = json.loads(final.read_text())
    assert zoomed["views"]["zoom"] == 0.1 and zoomed["n"] == 64 and zoomed["epoch"] == 1
    assert sum(map(sum, zoomed["confusion"])) == 64
    stamp, logs[:] = final.stat().st_mtime_ns, []
    reproduce.score_final_model(cfg, run, FinalScoring(0.1), True, logs.append)  # the same views: kept as it is
    assert final.stat().st_mtime_ns == stamp and logs == []
    bn_file = run / "final-evaluation-bnrecal.json"
    reproduce.score_final_model(cfg, run, FinalScoring(0.1, bn_recalibrate=2), True, logs.append)
    bn = json.loads(bn_file.read_text())  # the same weights and views, BatchNorm re-estimated first
    assert bn["bn_recalibrate"] == 2 and "(2 batches)" in bn["bn_recalibrated"] and bn["views"] == zoomed["views"]
    assert final.stat().st_mtime_ns == stamp and "BatchNorm re-estimated on 2 batches" in logs[0]
    bn_stamp, logs[:] = bn_file.stat().st_mtime_ns, []
    reproduce.score_final_model(cfg, run, FinalScoring(0.1, bn_recalibrate=2), True, logs.append)
    assert bn_file.stat().st_mtime_ns == bn_stamp and logs == []
    base_run = out / "baseline-seed0"  # as if it re-estimated in its validation: one scoring, done that way
    base_cfg = TrainConfig(**{**yaml.safe_load((base_run / "config.yaml").read_text()), "bn_recalibrate": 1})
    reproduce.score_final_model(base_cfg, base_run, FinalScoring(0.0, 2), True, logs.append)
    assert json.loads((base_run / "final-evaluation.json").read_text())["bn_recalibrate"] == 1
    assert not (base_run / "final-evaluation-bnrecal.json").exists()
    (run / "checkpoints" / "last.pt").unlink()  # small files from another machine
    logs[:] = []
    reproduce.score_final_model(cfg, run, FinalScoring(0.2), True, logs.append)
    assert "last.pt is not here" in logs[0] and json.loads(final.read_text())["views"]["zoom"] == 0.1


def test_an_unfinished_run_without_its_checkpoint_is_named_and_left_as_it_is(tmp_path):
    """A run folder copied to another machine without checkpoints: neither resumed nor overwritten."""
    out = tmp_path / "grid"
    reproduce.reproduce(out, methods=("baseline",), seeds=1, overrides=dict(TINY, epochs=2), quiet=True,
                        log=lambda _: None, command="test")
    run = out / "baseline-seed0"
    (run / "summary.json").unlink()
    shutil.rmtree(run / "checkpoints")
    metrics = (run / "metrics.csv").read_text()
    with pytest.raises(reproduce.TrainingError, match=r"baseline-seed0 already holds a run but no checkpoints/last.pt .* delete"):
        reproduce.reproduce(out, methods=("baseline",), seeds=1, overrides=dict(TINY, epochs=2), quiet=True,
                            log=lambda _: None, command="test")
    assert (run / "metrics.csv").read_text() == metrics
    shutil.rmtree(run)
    reproduce.reproduce(out, methods=("baseline",), seeds=1, overrides=dict(TINY, epochs=2), quiet=True,
                        log=lambda _: None, command="test")
    assert (run / "summary.json").is_file()
