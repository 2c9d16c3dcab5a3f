"""Evaluation: scores of a model on arrays, of a checkpoint on any data set, and of a grid of runs.

Across data sets, classes are matched by canonical name: a sample whose class
the model does not know is left out and counted (``excluded``), never scored
silently as wrong or right. Preprocessing (size, channels, mean, std) always comes
from the checkpoint, never from the evaluated data.

Which images are scored (``split=None``): the data set's own val split; else its own
test split; else, when it has no split folders of its own (a val split fernoise
carved out does not count), every image. ``split="all"`` scores every image of
every split.

``bn_recalibrate=N`` re-estimates the BatchNorm running statistics on N clean batches of the
evaluated data set's train split before scoring (a model whose training ended in noisy steps
carries their statistics; on another data set this adapts the statistics to it, as AdaBN does).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from fernoise.batchnorm import recalibrate_on_images
from fernoise.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from fernoise.data import Augmenter, PackedData, iterate_batches, load_data
from fernoise.data.packed import SPLITS
from fernoise.distributed import resolve_device
from fernoise.io import PathLike, write_text_atomic
from fernoise.metrics import classification_scores
from fernoise.runs import find_run_dirs, group_by_method, method_key
from fernoise.table import mean_std_cell
from fernoise.views import Views


@torch.no_grad()
def predict_arrays(
    model: nn.Module,
    images: np.ndarray,
    augment: Augmenter,
    device: torch.device,
    batch_size: int = 256,
    views: Views = Views(),
) -> torch.Tensor:
    """Logits (on the CPU) for uint8 (N, H, W, C) images, in order, in eval mode.

    ``augment`` resizes and converts grey/colour to the model's channels, so images of
    another data set can be scored as they are. With more than one test-time view
    (:class:`~fernoise.views.Views`) the logits are the log of the views' mean softmax.
    """
    model.eval()
    outputs = []
    dummy = np.zeros(len(images), dtype=np.int64)
    black = augment.normalize_black().to(device)
    for batch, _ in iterate_batches(images, dummy, batch_size, shuffle=False, device=device):
        outputs.append(views.logits(model, augment(batch, train=False), black).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0, 0)


def scores_from_logits(logits: torch.Tensor, labels: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Loss, macro-F1, accuracy and per-class scores of logits against integer labels."""
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    loss = float(nn.functional.cross_entropy(logits, targets)) if len(targets) else float("nan")
    scores = classification_scores(targets.numpy(), logits.argmax(1).numpy(), len(class_names), list(class_names))
    scores["loss"] = loss
    return scores


def evaluate_arrays(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    augment: Augmenter,
    device: torch.device,
    batch_size: int = 256,
    views: Views = Views(),
    class_names: Optional[list[str]] = None,
) -> dict[str, Any]:
    """Loss, macro-F1, accuracy and per-class scores of ``model`` on labelled arrays."""
    logits = predict_arrays(model, images, augment, device, batch_size, views)
    return scores_from_logits(logits, labels, class_names or [str(i) for i in range(num_classes)])


# --------------------------------------------------------------------------- which images


def own_splits(packed: PackedData) -> list[str]:
    """The splits the source defines itself: not a val split that fernoise carved out of train."""
    if "source_splits" in packed.meta:
        return [s for s in packed.meta["source_splits"] if s in packed.splits]
    # caches written before source_splits was recorded: the carving left a note
    carved = any(str(note).startswith("no val split in the source") for note in packed.meta.get("notes", []))
    return [s for s in SPLITS if s in packed.splits and not (carved and s == "val")]


def choose_splits(packed: PackedData, split: Optional[str], data: str) -> tuple[list[str], str]:
    """The splits to score and, in words, why those (see the module docstring)."""
    present = [s for s in SPLITS if s in packed.splits]
    own = own_splits(packed)
    if split == "all":
        return present, "every split (--split all)"
    if split is not None:
        if split not in packed.splits:
            raise ValueError(f"{data}: no '{split}' split (it has {', '.join(present)}); --split all scores every image")
        return [split], f"the {split} split"
    if "val" in own:
        return ["val"], "the val split"
    if "test" in own:
        return ["test"], "the test split (it has no val split of its own)"
    return present, "every image, as it has no split folders of its own"


def _split_counts(packed: PackedData, splits: Sequence[str]) -> str:
    own = own_splits(packed)
    return " + ".join(f"{s} {len(packed.splits[s])}" + ("" if s in own else " carved by fernoise") for s in splits)


# --------------------------------------------------------------------------- one checkpoint


def _load_packed(data: str, size: int, data_format: Optional[str], cache_dir: Optional[str], progress: bool,
                 prepared: Optional[dict[int, PackedData]] = None) -> PackedData:
    """The data set at ``size``, prepared once per size when ``prepared`` memoises it."""
    if prepared is not None and size in prepared:
        return prepared[size]
    packed = load_data(data, size=size, format=data_format, cache_dir=cache_dir, progress=progress)
    if prepared is not None:
        prepared[size] = packed
    return packed


def evaluate_checkpoint(
    checkpoint_path: PathLike,
    data: str,
    *,
    split: Optional[str] = None,
    data_format: Optional[str] = None,
    cache_dir: Optional[str] = None,
    device: str = "auto",
    batch_size: int = 256,
    views: Views = Views(),
    bn_recalibrate: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a checkpoint on a data set, matching classes by name.

    ``split``: ``train``, ``val``, ``test``, ``all``, or None for the default (module docstring).
    """
    checkpoint = load_checkpoint(checkpoint_path)
    packed = _load_packed(data, checkpoint["input"]["size"], data_format, cache_dir, progress)
    return score_checkpoint(checkpoint, checkpoint_path, packed, data, split, device=device, batch_size=batch_size,
                            views=views, bn_recalibrate=bn_recalibrate)


def score_checkpoint(
    checkpoint: dict[str, Any],
    checkpoint_path: PathLike,
    packed: PackedData,
    data: str,
    split: Optional[str] = None,
    *,
    device: str = "auto",
    batch_size: int = 256,
    views: Views = Views(),
    bn_recalibrate: int = 0,
) -> dict[str, Any]:
    """:func:`evaluate_checkpoint` for a loaded checkpoint and a prepared data set."""
    model_classes = list(checkpoint["classes"])
    spec = checkpoint["input"]
    splits, chosen = choose_splits(packed, split, data)
    labels = np.concatenate([np.asarray(packed.splits[s].labels) for s in splits])
    known, mapped, excluded = _match_classes(labels, packed.classes, model_classes, data, f"the model {checkpoint_path}")
    torch_device = resolve_device(device)
    model = model_from_checkpoint(checkpoint, checkpoint_path).to(torch_device)
    augment = Augmenter("none", spec["size"], spec["channels"], spec["mean"], spec["std"]).to(torch_device)
    config = checkpoint.get("config") or {}
    recalibrated = ""  # in words, for the line saying what was scored
    if bn_recalibrate:
        recalibrated = _recalibrate_on_train(model, packed, data, augment, torch_device, bn_recalibrate,
                                             int(config.get("batch_size") or 64))
    # every image is run (unknown classes too, then dropped), so no split is copied out of its memory map
    logits = torch.cat([
        predict_arrays(model, packed.splits[s].images, augment, torch_device, batch_size, views) for s in splits
    ])
    scores = scores_from_logits(logits[torch.from_numpy(known)], mapped, model_classes)
    excluded_total = int(sum(excluded.values()))
    left_out = (f"left out {excluded_total} of classes the model does not know "
                f"({', '.join(f'{k}: {v}' for k, v in excluded.items())})" if excluded_total else "none left out")
    scores.update(
        checkpoint=str(checkpoint_path),
        data=str(data),
        split="+".join(splits),
        splits={s: len(packed.splits[s]) for s in splits},
        chosen=f"{data}: {chosen}: {len(labels)} images ({_split_counts(packed, splits)})",
        classes=model_classes,
        excluded=excluded,
        excluded_total=excluded_total,
        method=method_key(config) if config.get("method") else None,
        seed=config.get("seed"),
        epoch=checkpoint.get("epoch"),
        bn_recalibrate=bn_recalibrate,
        bn_recalibrated=recalibrated,
        views=views.record(),
    )
    scores["selection"] = "; ".join(filter(None, [scores["chosen"], f"scored {scores['n']}, {left_out}", recalibrated]))
    return scores


def _match_classes(labels: np.ndarray, data_classes: Sequence[str], model_classes: Sequence[str], data: str,
                   model: str) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Classes matched by canonical name: per image whether the model knows its class, the model's
    label of each known image, and the number of images of each class the model does not know."""
    to_model = {i: model_classes.index(name) for i, name in enumerate(data_classes) if name in model_classes}
    known = np.isin(labels, list(to_model))
    if not known.any():
        raise ValueError(f"{data}: none of its classes ({', '.join(data_classes)}) is known to {model} "
                         f"({', '.join(model_classes)})")
    excluded = {name: int((labels == i).sum()) for i, name in enumerate(data_classes)
                if i not in to_model and (labels == i).any()}
    return known, np.vectorize(to_model.get, otypes=[np.int64])(labels[known]), excluded


def _recalibrate_on_train(model: nn.Module, packed: PackedData, data: str, augment: Augmenter,
                          device: torch.device, batches: int, batch_size: int) -> str:
    """Re-estimate ``model``'s BatchNorm statistics on ``batches`` clean batches of the train split; says so in words.

    The batches are a fixed shuffle (seed 0) of every train image, unknown classes included:
    the statistics describe the inputs, not the labels.
    """
    if batches < 0:
        raise ValueError(f"--bn-recalibrate must be a number of batches >= 0, got {batches}")
    if "train" not in packed.splits:
        present = ", ".join(s for s in SPLITS if s in packed.splits)
        raise ValueError(f"{data}: no train split to re-estimate BatchNorm statistics from (it has {present})")
    train = packed.splits["train"]
    recalibrate_on_images(model, train.images, train.labels, augment, batches, batch_size,
                          torch.Generator().manual_seed(0), device=device)
    used = min(batches * batch_size, len(train))
    count = -(-used // batch_size)
    return f"BatchNorm statistics re-estimated on {used} clean train images ({count} batch{'es' if count > 1 else ''})"


def format_scores(scores: dict[str, Any]) -> str:
    """A readable report: which images, headline scores, per-class table and confusion matrix."""
    names = scores["classes"]
    width = max(9, *(len(n) for n in names)) + 1
    lines = [
        scores["selection"],
        f"{scores['data']} [{scores['split']}]  n={scores['n']}  macro-F1 {scores['macro_f1']:.4f}  "
        f"accuracy {scores['accuracy']:.4f}  loss {scores['loss']:.4f}",
    ]
    lines.append(f"{'class':<{width}} precision  recall     f1  support")
    for name in names:
        lines.append(
            f"{name:<{width}} {scores['precision'][name]:9.4f} {scores['recall'][name]:7.4f} "
            f"{scores['f1'][name]:6.4f} {scores['support'][name]:8d}"
        )
    lines.append("confusion matrix (rows: true, columns: predicted)")
    lines.append(" " * width + " ".join(f"{n[:7]:>7}" for n in names))
    for name, row in zip(names, scores["confusion"]):
        lines.append(f"{name:<{width}}" + " ".join(f"{v:7d}" for v in row))
    return "\n".join(lines)


def write_evaluation(scores: dict[str, Any], json_path: Optional[PathLike], confusion_png: Optional[PathLike]) -> None:
    if json_path:
        write_text_atomic(json_path, json.dumps(scores, indent=2) + "\n")
    if confusion_png:
        from fernoise.figures import plot_confusion

        plot_confusion(
            np.asarray(scores["confusion"]), scores["classes"], Path(confusion_png),
            title=f"{Path(scores['checkpoint']).name} on {scores['data']} [{scores['split']}]",
        )


# --------------------------------------------------------------------------- a directory of runs

TABLE_COLUMNS = ("run", "method", "seed", "epoch", "macro_f1", "accuracy", "n", "excluded")


def table_row(run: str, scores: dict[str, Any]) -> dict[str, Any]:
    """One line of the runs table (:data:`TABLE_COLUMNS`), plus the full scores under ``scores``."""
    return {"run": run, **{k: scores[k] for k in TABLE_COLUMNS[1:-1]}, "excluded": scores["excluded_total"],
            "scores": scores}


def evaluate_runs(
    directory: PathLike,
    data: str,
    *,
    split: Optional[str] = None,
    data_format: Optional[str] = None,
    cache_dir: Optional[str] = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    **options: Any,
) -> dict[str, Any]:
    """Score ``checkpoints/best.pt`` of every run folder in ``directory`` on one data set.

    The data set is prepared once (per input size). A run without ``best.pt``, or whose
    checkpoint cannot be used, is reported through ``log`` and listed in ``skipped``
    (``error`` tells the two apart); ``options`` go to :func:`score_checkpoint`.
    """
    directory = Path(directory)
    prepared: dict[int, PackedData] = {}
    rows, skipped = [], []

    def skip(run: str, reason: str, error: bool) -> None:
        skipped.append({"run": run, "reason": reason, "error": error})
        log(f"skipped {run}: {reason}")

    for run in find_run_dirs([directory]):
        name = run.relative_to(directory).as_posix() if run != directory else run.name
        best = run / "checkpoints" / "best.pt"
        if not best.is_file():
            skip(name, f"{best}: no such file (no epoch finished yet?)", error=False)
            continue
        try:
            checkpoint = load_checkpoint(best)
        except CheckpointError as exc:
            skip(name, str(exc), error=True)
            continue
        packed = _load_packed(data, checkpoint["input"]["size"], data_format, cache_dir, progress, prepared)
        choose_splits(packed, split, data)  # a missing split is the data set's fault, not a run's: raise
        try:
            rows.append(table_row(name, score_checkpoint(checkpoint, best, packed, data, split, **options)))
        except (CheckpointError, ValueError) as exc:
            skip(name, str(exc), error=True)
    if not rows:
        raise ValueError(f"{directory}: no run could be scored ({'; '.join(s['reason'] for s in skipped)})")
    first = rows[0]["scores"]
    selection = first["chosen"] + (f"; {first['bn_recalibrated']} per run" if first["bn_recalibrated"] else "")
    return {"directory": str(directory), "data": str(data), "selection": selection, "runs": rows, "skipped": skipped}


def _by_method(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped as ``reports`` groups runs (method plus BatchNorm re-estimation, one run per seed),
    but a method whose seeds repeat is split by the folder its runs are in: ``evaluate results/`` must
    not pool the same seed of different experiments as if they were more seeds."""
    return group_by_method(rows, lambda row: str(row["method"]), lambda row: row["seed"],
                           lambda row: Path(row["run"]), separate=True)


def runs_markdown(result: dict[str, Any]) -> str:
    """The per-run table and, per method (see :func:`_by_method`), mean ± sample std over its runs."""
    lines = [f"Scored on {result['selection']}", "",
             "| run | method | seed | epoch | macro-F1 | accuracy | n | left out |", "|---|---|---|---|---|---|---|---|"]
    for row in result["runs"]:
        lines.append(f"| {row['run']} | {row['method']} | {row['seed']} | {row['epoch']} | {row['macro_f1']:.4f} | "
                     f"{row['accuracy']:.4f} | {row['n']} | {row['excluded']} |")
    lines += ["", "| method | macro-F1 | accuracy |", "|---|---|---|"]
    for method, group in _by_method(result["runs"]).items():
        f1 = mean_std_cell([r["macro_f1"] for r in group], ".4f")
        acc = mean_std_cell([r["accuracy"] for r in group], ".4f")
        lines.append(f"| {method} | {f1} | {acc} |")
    lines.append("\nPer method: mean ± sample std (ddof=1) over its runs, n = number of runs; runs that re-estimated "
                 "BatchNorm statistics are a method of their own (+bn-recal), and a method whose seeds repeat is "
                 "shown once per folder of runs.")
    for entry in result["skipped"]:
        lines.append(f"skipped {entry['run']}: {entry['reason']}")
    return "\n".join(lines)


def write_runs(result: dict[str, Any], json_path: Optional[PathLike], csv_path: Optional[PathLike]) -> None:
    """The table as JSON (with every run's full scores) and as CSV (one line per run), atomically."""
    if json_path:
        write_text_atomic(json_path, json.dumps(result, indent=2) + "\n")
    if csv_path:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(TABLE_COLUMNS), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(result["runs"])
        write_text_atomic(csv_path, buffer.getvalue())


# --------------------------------------------------------------------------- the command


def evaluate_command(args: Any) -> int:
    """``fernoise evaluate``: one checkpoint (full report) or a directory of runs (one table).

    Exit status 2 when a run's checkpoint could not be used (the others are still scored).
    """
    options = dict(data_format=args.data_format, cache_dir=args.cache_dir, progress=not args.quiet)
    scoring = dict(device=args.device, views=Views(args.tta_flip, args.tta_shift, args.tta_zoom),
                   bn_recalibrate=args.bn_recalibrate)
    if Path(args.checkpoint).is_dir():
        if args.confusion:
            raise ValueError(f"--confusion needs one checkpoint file; {args.checkpoint} is a directory of runs")
        result = evaluate_runs(args.checkpoint, args.data, split=args.split, log=lambda _: None, **options, **scoring)
        write_runs(result, args.json, args.csv)  # first: the scores are kept should the grouping refuse the runs
        print(runs_markdown(result))
        return 2 if any(entry["error"] for entry in result["skipped"]) else 0
    scores = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, **options, **scoring)
    print(format_scores(scores))
    confusion = args.confusion or (str(Path(args.json).with_suffix(".confusion.png")) if args.json else None)
    write_evaluation(scores, args.json, confusion)
    write_runs({"runs": [table_row(str(args.checkpoint), scores)]}, None, args.csv)
    return 0
