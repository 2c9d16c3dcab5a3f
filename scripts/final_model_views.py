"""What the weight average and the test-time views add to a finished run's final model.

    python scripts/final_model_views.py RUN_DIR [RUN_DIR ...] [--shift 2] [--zoom 0.1] [--crop 40] [--json OUT.json]

For each run, its ``checkpoints/last.pt`` holds the final weights; a run trained with ``ema`` holds
the averaged weights (what the run validated and saved) and the trained ones (``train_state_dict``).
Each is scored on the run's own validation data with one view, with the mirror image (flip), with
flip plus zoomed views and with flip plus shifted views, so the recipe's evaluation-side ingredients
are measured on the very same training, at no training cost. With ``--crop C`` (for runs trained with ``--train-crop``), also
the centre C x C window with its mirror image, and ten crops (four corners and centre, each with its
mirror image) instead of the whole face. Prints a Markdown table: accuracy and macro-F1 per weights
and views, and the seconds each evaluation took.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fernoise.checkpoint import load_checkpoint, model_from_checkpoint
from fernoise.config import resolve_run_config
from fernoise.data import Augmenter, iterate_batches
from fernoise.evaluate import evaluate_arrays, scores_from_logits
from fernoise.train import prepare_data
from fernoise.views import Views


def crops(inputs: torch.Tensor, side: int, ten: bool) -> list[torch.Tensor]:
    """The centre ``side`` x ``side`` window of a batch and its mirror image; with ``ten``, the four corners too."""
    size = inputs.shape[-1]
    far, mid = size - side, (size - side) // 2
    corners = [(mid, mid)] + ([(0, 0), (0, far), (far, 0), (far, far)] if ten else [])
    windows = [inputs[..., y:y + side, x:x + side] for y, x in corners]
    return windows + [w.flip(3) for w in windows]


@torch.no_grad()
def crop_scores(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, classes: list[str],
                augment: Augmenter, side: int, ten: bool) -> dict:
    model.eval()
    logits = []
    for batch, _ in iterate_batches(images, np.zeros(len(images), dtype=np.int64), 256, shuffle=False):
        views = crops(augment(batch, train=False), side, ten)
        logits.append(torch.stack([model(v).softmax(1) for v in views]).mean(0).log())
    return scores_from_logits(torch.cat(logits), labels, classes)


def score_views(run: Path, shift: int, zoom: float, crop: int | None) -> list[dict]:
    state = load_checkpoint(run / "checkpoints" / "last.pt", resume=True)
    if "train_state_dict" in state:
        weights = {"averaged (ema)": state["state_dict"], "trained (no ema)": state["train_state_dict"]}
    else:
        weights = {"final": state["state_dict"]}
    cfg = resolve_run_config(run)
    data = prepare_data(cfg, progress=False)
    spec = state["input"]
    augment = Augmenter("none", spec["size"], spec["channels"], spec["mean"], spec["std"])
    rows = []
    for name, state_dict in weights.items():
        model = model_from_checkpoint({**state, "state_dict": state_dict}, run)
        sets = {"1": Views(), "flip (2)": Views(flip=True), f"flip + zoom {zoom:g} (6)": Views(flip=True, zoom=zoom),
                f"flip + shift {shift} (10)": Views(flip=True, shift=shift)}
        for views, chosen in sets.items():
            start = time.perf_counter()
            scores = evaluate_arrays(model, data.val_images, data.val_labels, len(state["classes"]), augment,
                                     torch.device("cpu"), cfg.eval_batch_size, chosen)
            rows.append(_row(run, name, views, scores, start))
        for views, ten in ({f"centre {crop} + flip (2)": False, f"ten crops of {crop} (10)": True}.items() if crop else ()):
            start = time.perf_counter()
            scores = crop_scores(model, data.val_images, data.val_labels, list(state["classes"]), augment, crop, ten)
            rows.append(_row(run, name, views, scores, start))
    return rows


def _row(run: Path, weights: str, views: str, scores: dict, start: float) -> dict:
    return {"run": run.name, "weights": weights, "views": views, "accuracy": scores["accuracy"],
            "macro_f1": scores["macro_f1"], "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--shift", type=int, default=2, help="pixels of the shifted views (default 2)")
    parser.add_argument("--zoom", type=float, default=0.1, help="zoom of the zoomed views (default 0.1)")
    parser.add_argument("--crop", type=int, help="also score centre and ten-crop views of this many pixels")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    rows = [row for run in args.runs for row in score_views(run, args.shift, args.zoom, args.crop)]
    print("| run | weights | views | accuracy | macro-F1 | seconds |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['weights']} | {r['views']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
              f"{r['seconds']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
