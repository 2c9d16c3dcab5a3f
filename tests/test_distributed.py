"""torchrun: two CPU processes with gloo against one process with the same global batch."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

ARGS = ["--method", "periodic", "--interval", "1", "--epochs", "2", "--train-limit", "128", "--val-limit", "64",
        "--image-size", "32", "--batch-size", "32", "--augment", "none", "--device", "cpu", "--quiet"]


def _rows(run):
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups are tested on POSIX")
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, multi = tmp_path / "single", tmp_path / "ddp"
    subprocess.run([sys.executable, "-m", "fernoise", "train", *ARGS, "--out", str(single)],
                   check=True, env=env, timeout=600)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "fernoise", "train", *ARGS, "--out", str(multi)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = _rows(single), _rows(multi)
    assert len(two) == 2, "only rank 0 writes, once per epoch"
    assert len(list(multi.glob("events.out.tfevents.*"))) == 1
    assert [r["noise_on"] for r in two] == [r["noise_on"] for r in one]
    # Same samples in every global batch and averaged gradients; on CPUs each rank normalises
    # with its own half-batch statistics (no SyncBatchNorm for gloo), so losses agree closely,
    # not bit for bit.
    for a, b in zip(one, two):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=0.03)
        assert float(b["val_loss"]) == pytest.approx(float(a["val_loss"]), rel=0.03)
    assert (multi / "summary.json").is_file() and (multi / "checkpoints" / "best.pt").is_file()
