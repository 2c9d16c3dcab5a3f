"""The per-epoch and per-step CSV files of a run directory: their names, columns and writing.

``metrics.csv`` holds one row per epoch (:data:`METRIC_COLUMNS`, then ``skipped_steps``
and ``autorelu_w`` where a run has them); ``autorelu_trace.csv`` one row per training step
of a dynamic run (``epoch``, ``step`` and :data:`fernoise.noise.TRACE_COLUMNS`). Both are
written whole and atomically after every epoch. :mod:`fernoise.runs` reads them, and
``final-evaluation.json`` where ``reproduce --final-tta-zoom`` scored the final weights again
(``final-evaluation-bnrecal.json`` where ``--final-bn-recalibrate`` did so with BatchNorm re-estimated).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from fernoise.io import write_text_atomic
from fernoise.noise import TRACE_COLUMNS

METRICS_FILE = "metrics.csv"
TRACE_FILE = "autorelu_trace.csv"  # dynamic runs: one row per training step (AutoReLUTrace)
FINAL_EVALUATION_FILE = "final-evaluation.json"  # the final weights scored again (reproduce --final-tta-zoom)
FINAL_BN_EVALUATION_FILE = "final-evaluation-bnrecal.json"  # and with BatchNorm re-estimated (--final-bn-recalibrate)
TRACE_HEADER = ("epoch", "step", *TRACE_COLUMNS)
METRIC_COLUMNS = ["epoch", "train_loss", "train_f1", "val_loss", "val_f1", "val_acc", "noise_on", "lr", "seconds"]


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def write_trace(path: Path, rows: list[list[Any]]) -> None:
    """Rows of ``[epoch, step, *TRACE_COLUMNS]``, the values with 9 significant digits (float32's)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TRACE_HEADER)
    writer.writerows([r[:2] + [f"{v:.9g}" for v in r[2:]] for r in rows])
    write_text_atomic(path, buffer.getvalue())


def trace_rows_before(path: Path, before_epoch: int) -> list[list[Any]]:
    """The trace rows of the epochs before ``before_epoch`` (a resumed run repeats the later ones)."""
    if before_epoch == 1 or not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = [[int(r["epoch"]), int(r["step"]), *(float(r[c]) for c in TRACE_COLUMNS)] for r in csv.DictReader(handle)]
    return [r for r in rows if r[0] < before_epoch]
