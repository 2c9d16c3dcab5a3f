"""The model that ships with fernoise: where its file lies, and what it is (its card's facts, read from the file).

``predict``, ``evaluate`` and ``export`` (and ``Predictor()``) use it when no checkpoint is given.
It is one float16 inference checkpoint, package data at :data:`BUNDLED_MODEL`, read like any
other through :func:`fernoise.checkpoint.load_checkpoint` (``weights_only=True``), and written by
``scripts/bundle_model.sh RUN_DIR`` from a run's final model. That script adds a ``card`` entry:
the run, the training command, the final epoch's recorded scores and, given the data, the scores
of the float16 file itself. :func:`model_info` builds the text of ``fernoise models`` and
``fernoise predict --model-info`` from the checkpoint alone (its model, input, classes,
provenance and card), so what it says is what the file holds; docs/MODEL.md is the full card.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from fernoise.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from fernoise.io import PathLike
from fernoise.views import Views

__all__ = ["BUNDLED_NAME", "BUNDLED_MODEL", "bundled_model_path", "model_info", "LIMITS"]

BUNDLED_NAME = "fer2013-fast"
BUNDLED_MODEL = Path(__file__).resolve().parent / "weights" / f"{BUNDLED_NAME}.pt"

LIMITS = (
    "frontal and near-frontal faces: FER2013's faces are mostly frontal; faces turned far away are misread",
    "7 classes: neutral, happy, sad, surprise, fear, disgust, anger; no contempt, and every face gets one of them",
    "FER2013's demographic coverage (age, gender, skin tone, culture) is unknown: it was never documented, so "
    "accuracy on any group is unmeasured",
    "the input is a 48x48 grey face as FER2013's: subtle expressions and colour are lost",
    "it reads the look of a face, not what a person feels; do not use it for decisions about people",
)
FER2013_TERMS = (
    "FER2013 (Goodfellow et al., ICML 2013 workshop challenge, faces found by web image search) is distributed for "
    "research; the people shown did not consent to other uses. Use this model for research."
)
_STEMS = {"imagenet": "ImageNet stem (7x7/2 + max-pool)", "half": "half stem (3x3/2)",
          "deep": "deep stem (3x3/1, then 3x3/2)", "small": "small stem (3x3/1)"}


def bundled_model_path() -> Path:
    """The bundled model's file; a clear error when the installation lacks it."""
    if not BUNDLED_MODEL.is_file():
        raise CheckpointError(
            f"{BUNDLED_MODEL}: the bundled model is missing from this installation of fernoise (a build without "
            "its package data?); reinstall it with `pip install .` from a clone, or name a checkpoint: --model PATH"
        )
    return BUNDLED_MODEL


def is_bundled(path: PathLike) -> bool:
    return Path(path).resolve() == BUNDLED_MODEL


def model_info(path: Optional[PathLike] = None) -> str:
    """What a checkpoint is, in lines: the bundled model's card facts when ``path`` is None."""
    path = bundled_model_path() if path is None else Path(path)
    checkpoint = load_checkpoint(path)
    bundled = is_bundled(path)
    card = checkpoint.get("card") if isinstance(checkpoint.get("card"), dict) else {}
    config = checkpoint.get("config") or {}
    source = str((checkpoint.get("data") or {}).get("source") or config.get("data") or "not recorded")
    weights = checkpoint.get("weights_dtype", "float32")
    name = f"fernoise's bundled model {card.get('name', BUNDLED_NAME)}" if bundled else f"model {path}"
    lines = [name, f"file: {path} ({path.stat().st_size / 1e6:.1f} MB, {weights} weights, run in float32)"]
    if source == "synthetic":
        lines.append("STAND-IN: trained on fernoise's synthetic faces to test the packaging, not on real faces: its "
                     "expressions mean nothing. A model trained on FER2013 replaces it (scripts/bundle_model.sh).")
    lines += [_architecture(checkpoint, path), _input(checkpoint), _classes(checkpoint), f"training data: {source}"]
    if "fer2013" in source.lower():
        lines.append(f"  {FER2013_TERMS}")
    lines += _training(checkpoint, card, config) + _scores(checkpoint, card, config)
    if bundled:
        lines += ["limits:"] + [f"  - {limit}" for limit in LIMITS]
        lines.append("model card: docs/MODEL.md in fernoise's source")
    return "\n".join(lines)


def _architecture(checkpoint: dict[str, Any], path: Path) -> str:
    model = checkpoint["model"]
    parts = [str(model.get("name", "?"))]
    if model.get("stem"):
        parts.append(_STEMS.get(model["stem"], f"{model['stem']} stem"))
    if model.get("width"):
        parts.append(f"width {model['width']}")
    count = sum(p.numel() for p in model_from_checkpoint(checkpoint, path).parameters())
    noise = model.get("noise", "none")
    trained = f"trained with {noise} noise, none at inference" if noise != "none" else "no noise"
    return f"architecture: {', '.join(parts)}; {count:,} parameters; {trained}"


def _input(checkpoint: dict[str, Any]) -> str:
    spec = checkpoint["input"]
    colour = "grey" if int(spec["channels"]) == 1 else "RGB"
    stats = ", ".join(f"{m:.3f}/{s:.3f}" for m, s in zip(spec["mean"], spec["std"]))
    return (f"input: one face, {spec['size']}x{spec['size']} {colour}, normalised by mean/std {stats}; `predict` "
            "finds faces with the detector and cuts each out framed as FER2013's faces (docs/PREDICT.md)")


def _classes(checkpoint: dict[str, Any]) -> str:
    classes = [str(c) for c in checkpoint["classes"]]
    return f"classes ({len(classes)}): {', '.join(classes)}" + ("" if "contempt" in classes else " (no contempt)")


def _training(checkpoint: dict[str, Any], card: dict[str, Any], config: dict[str, Any]) -> list[str]:
    lines = []
    if card.get("command"):
        lines.append(f"training command: {card['command']}")
    facts = [f"method {config['method']}" if config.get("method") else "",
             f"seed {config['seed']}" if config.get("seed") is not None else ""]
    epoch, epochs = checkpoint.get("epoch"), config.get("epochs")
    if epoch is not None:
        facts.append(f"epoch {epoch}" + (f" of {epochs}" if epochs else "")
                     + (" (the final model)" if card.get("final") else ""))
    if config.get("ema"):
        facts.append(f"weights: the average over steps (EMA {config['ema']})")
    if card.get("run"):
        facts.append(f"run {card['run']}")
    if any(facts):
        lines.append("training: " + "; ".join(f for f in facts if f))
    return lines


def _scores(checkpoint: dict[str, Any], card: dict[str, Any], config: dict[str, Any]) -> list[str]:
    lines = []
    final, best = card.get("final"), checkpoint.get("best")
    if isinstance(final, dict) and "val_f1" in final:
        lines.append(f"recorded in training, final epoch {final.get('epoch')}, validation split, {Views.of(config).words()}: "
                     f"macro-F1 {final['val_f1']:.4f}, accuracy {final.get('val_acc', float('nan')):.4f}")
    elif isinstance(best, dict) and "val_f1" in best:
        held = checkpoint.get("epoch")
        which = "this file's epoch" if held == best.get("epoch") else f"not this file's epoch {held}"
        lines.append(f"recorded in training: best validation macro-F1 {best['val_f1']:.4f} at epoch {best.get('epoch')} "
                     f"({which}; {Views.of(config).words()})")
    evaluation = card.get("evaluation")
    if isinstance(evaluation, dict) and "macro_f1" in evaluation:
        lines += _evaluation_lines(evaluation)
    return lines


def _evaluation_lines(scores: dict[str, Any]) -> list[str]:
    names = list(scores.get("classes") or [])
    lines = [f"scores of this file on {scores.get('data')} [{scores.get('split')}], n={scores.get('n')}, one view per "
             f"face as `predict` classifies: accuracy {scores['accuracy']:.4f}, macro-F1 {scores['macro_f1']:.4f}"]
    f1 = scores.get("f1") or {}
    if f1:
        lines.append("  per-class F1: " + ", ".join(f"{name} {f1[name]:.3f}" for name in names if name in f1))
    confusion = scores.get("confusion")
    if confusion and len(confusion) == len(names):
        width = max(7, *(len(n) for n in names)) + 1
        lines.append("  confusion matrix (rows: true, columns: predicted)")
        lines.append("  " + " " * width + " ".join(f"{n[:7]:>7}" for n in names))
        lines += ["  " + f"{name:<{width}}" + " ".join(f"{int(v):7d}" for v in row) for name, row in zip(names, confusion)]
    return lines
