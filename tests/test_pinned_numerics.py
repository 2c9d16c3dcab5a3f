"""Exact numbers of short CPU runs, captured from the code before the issue-15 refactor.

Restructuring the training loop, the noise modules and their fast paths must not change
a single value: each case trains 2 epochs of 3 steps on synthetic faces and compares
metrics.csv (train_loss, val_loss, val_f1, noise_on[, autorelu_w]), autorelu_trace.csv
(epoch, step, w, w_min, w_max, grad_mean, grad_absmax) and the sum of the final weights
with the literals below, exactly. One intra-op thread, so that no reduction order depends
on the machine's core count.
"""
from __future__ import annotations

import csv

import pytest
import torch

from fernoise.checkpoint import load_checkpoint
from fernoise.config import TrainConfig
from fernoise.train import train

TINY = dict(train_limit=96, val_limit=64, image_size=32, batch_size=32, eval_batch_size=64, device="cpu", epochs=2,
            interval=1, autorelu_init=1e-4, lr=1e-3)
CASES = {
    "periodic": dict(method="periodic"),
    "dynamic": dict(method="dynamic"),  # autorelu_grad: autograd, the default
    "dynamic-exact": dict(method="dynamic", autorelu_grad="exact"),
    "dropout+periodic": dict(method="dropout+periodic"),
    "periodic-step": dict(method="periodic", interval=2, interval_unit="step"),
}
METRICS = ("train_loss", "val_loss", "val_f1", "noise_on", "autorelu_w")

PINNED = {
    'dropout+periodic': {
        "metrics": [
            (1.9223831097284954, 1.8848161697387695, 0.13352826510721247, 0.0),
            (1.8075629870096843, 1.8019733428955078, 0.05733005733005733, 1.0),
        ],
        "trace": [
        ],
        "weights": 8649.230158831993,
    },
    'dynamic': {
        "metrics": [
            (1.996444304784139, 1.8804646730422974, 0.1280808080808081, 0.6666666666666666, -9.986531949834898e-05),
            (1.6388662656148274, 1.7332868576049805, 0.10877192982456141, 1.0, -0.00011360614007571712),
        ],
        "trace": [
            (1.0, 1.0, 9.99999684e-05, 9.99999975e-05, 9.99999975e-05, 6.5925218e-07, 0.000183105469),
            (1.0, 2.0, -8.17264663e-05, -0.000899945386, 0.00109991792, 7.68775749e-07, 0.000213623047),
            (1.0, 3.0, -0.000105087434, -0.00108169718, 0.000919349492, -4.96705354e-07, 0.000183105469),
            (2.0, 1.0, -9.98653195e-05, -0.00110666407, 0.000894607976, -6.69993483e-07, 0.000244140625),
            (2.0, 2.0, -0.000106495441, -0.00110005017, 0.000899832754, -4.62013617e-07, 0.000122070312),
            (2.0, 3.0, -0.000107699001, -0.00108902564, 0.000869727868, 8.14658904e-07, 0.000152587891),
        ],
        "weights": 8578.427339148695,
    },
    'dynamic-exact': {
        "metrics": [
            (2.0693910121917725, 1.8979623317718506, 0.10880839041758582, 0.3333333333333333, 0.0003028676728717983),
            (1.6704130570093791, 1.757323145866394, 0.12567049808429118, 0.0, -0.00016520667122676969),
        ],
        "trace": [
            (1.0, 1.0, 9.99999684e-05, 9.99999975e-05, 9.99999975e-05, 0.0, 0.0),
            (1.0, 2.0, -0.000399999815, -0.000399999873, -0.000399999873, 0.0, 0.0),
            (1.0, 3.0, 1.66317313e-05, 1.66317332e-05, 1.66317332e-05, 0.0, 0.0),
            (2.0, 1.0, 0.000302867673, 0.000302867702, 0.000302867702, 0.0, 0.0),
            (2.0, 2.0, 0.00024834997, 0.00024834997, 0.00024834997, 0.0, 0.0),
            (2.0, 3.0, 3.58711332e-05, 3.58711404e-05, 3.58711404e-05, 0.0, 0.0),
        ],
        "weights": 8483.351607272838,
    },
    'periodic': {
        "metrics": [
            (2.136958678563436, 1.8832958936691284, 0.14676788589832065, 0.0),
            (1.7576552232106526, 1.8259735107421875, 0.08834244080145719, 1.0),
        ],
        "trace": [
        ],
        "weights": 8452.602380402774,
    },
    'periodic-step': {
        "metrics": [
            (1.9976142247517903, 1.8803147077560425, 0.13290043290043288, 0.6666666666666666),
            (1.6802773078282673, 1.7447444200515747, 0.10112359550561799, 0.3333333333333333),
        ],
        "trace": [
        ],
        "weights": 8537.904125892055,
    },
}


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("case", list(CASES))
def test_short_runs_keep_their_exact_numbers(tmp_path, one_thread, case):
    run = tmp_path / case
    train(TrainConfig(**{**TINY, **CASES[case]}), run, quiet=True, log=lambda _: None)
    metrics = [tuple(float(row[k]) for k in METRICS if k in row) for row in _csv(run / "metrics.csv")]
    trace_path = run / "autorelu_trace.csv"
    trace = [tuple(float(v) for v in row.values()) for row in _csv(trace_path)] if trace_path.is_file() else []
    state = load_checkpoint(run / "checkpoints" / "last.pt")["state_dict"]
    weights = sum(float(t.double().sum()) for t in state.values() if t.is_floating_point())
    assert metrics == PINNED[case]["metrics"]
    assert trace == PINNED[case]["trace"]
    assert weights == PINNED[case]["weights"]
