"""The ``fernoise`` command's arguments: one parser per command, and the training flags they share.

:func:`build_parser` is the whole command line; :func:`config_overrides` turns the training flags given
into :class:`fernoise.config.TrainConfig` fields. What each command does is in :mod:`fernoise.cli`.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from fernoise.config import CHOICES, PAPER_METHODS, TrainConfig
from fernoise.version import __version__


def _train_options(parser: argparse.ArgumentParser) -> None:
    """Flags that override TrainConfig fields, in groups; None means 'not given'."""
    d = TrainConfig()
    parser.add_argument("--config", help="YAML config file, or a preset name: paper, fer2013-paper, fer2013-fast, quick")
    _optimisation_options(parser.add_argument_group("optimisation (override --config)"), d)
    _noise_options(parser.add_argument_group("noise injection (override --config)"), d)
    _model_data_options(parser.add_argument_group("network and data (override --config)"), d)
    _speed_options(parser.add_argument_group("speed options (same results up to rounding)"))


def _optimisation_options(g: Any, d: TrainConfig) -> None:
    g.add_argument("--epochs", type=int, help=f"number of epochs (default {d.epochs})")
    g.add_argument("--batch-size", type=int, help=f"batch size (default {d.batch_size})")
    g.add_argument("--lr", type=float, help=f"learning rate (default {d.lr:g})")
    g.add_argument("--weight-decay", type=float, help=f"weight decay (default {d.weight_decay:g})")
    g.add_argument("--optimizer", choices=CHOICES["optimizer"], help=f"optimizer (default {d.optimizer})")
    g.add_argument("--scheduler", choices=CHOICES["scheduler"],
                   help="learning-rate schedule: none (default), cosine (per epoch) or onecycle (per step: linear "
                        "warm-up over --warmup-epochs, then linear decay to zero)")
    g.add_argument("--warmup-epochs", type=float, help="onecycle: epochs of linear warm-up (default 0)")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum for --optimizer sgd (default off)")
    g.add_argument("--ema", type=float, metavar="DECAY",
                   help="evaluate and save an exponential moving average of the weights with this decay per step, "
                        "e.g. 0.999 (default 0: off)")
    g.add_argument("--label-smoothing", type=float, help="label smoothing (default 0)")
    g.add_argument("--balanced-sampler", action="store_true", default=None, help="draw class-balanced batches")
    g.add_argument("--class-weighted-loss", action="store_true", default=None, help="inverse-frequency class weights")
    g.add_argument("--nonfinite", choices=CHOICES["nonfinite"], help="on a non-finite loss: stop (default) or skip the step")


def _noise_options(g: Any, d: TrainConfig) -> None:
    g.add_argument("--interval", type=int, help=f"periodic interval T (default {d.interval})")
    g.add_argument("--interval-unit", choices=CHOICES["interval_unit"], help="what T counts (default epoch, as in the paper)")
    g.add_argument("--position", choices=CHOICES["position"], help="injection point in each block (default bn1)")
    g.add_argument("--dropout", type=float, help=f"dropout probability of the dropout methods (default {d.dropout}, as in Wide ResNets)")
    g.add_argument("--autorelu-init", type=float, help=f"initial AutoReLU weight, in (0, 1) (default {d.autorelu_init})")
    g.add_argument("--autorelu-constant", type=float, help=f"CliffReLU constant (default {d.autorelu_constant:g})")
    g.add_argument("--autorelu-grad", choices=CHOICES["autorelu_grad"],
                   help=f"AutoReLU backward: autograd of the paper's formula, or the exact zero gradient of w "
                        f"(cheaper; w then follows weight decay alone) (default {d.autorelu_grad})")
    g.add_argument("--autorelu-per-channel", action=argparse.BooleanOptionalAction, default=None,
                   help="one AutoReLU weight per channel (default), or --no-autorelu-per-channel: one per unit; "
                        "either way all are reset to their common mean before each step")
    g.add_argument("--autorelu-adam-lr", type=float, metavar="LR",
                   help="give the AutoReLU weights an Adam of their own at this constant lr (the run's weight decay, "
                        "coupled) beside the run's optimizer: with sgd, whose tiny steps never move the common "
                        "weight through zero, dynamic noise then switches as under the paper's Adam (default: unset)")
    g.add_argument("--bn-recalibrate", type=int, metavar="N",
                   help="before each evaluation, re-estimate BatchNorm statistics on N clean training batches "
                        "(default 0: off, as in the paper; the statistics then include noisy steps)")


def _model_data_options(g: Any, d: TrainConfig) -> None:
    g.add_argument("--model", help="resnet18 (default), resnet34, torchvision:<name> or timm:<name>")
    g.add_argument("--stem", choices=CHOICES["stem"],
                   help="ResNet stem: imagenet 7x7/2 + max-pool (default; 48x48 faces reach layer1 at 12x12), "
                        "half 3x3/2 (24x24) or small 3x3/1 (48x48)")
    g.add_argument("--width", type=int, help=f"ResNet: channels of the first stage, doubled per stage (default {d.width})")
    g.add_argument("--image-size", type=int, help=f"face size in pixels (default {d.image_size})")
    g.add_argument("--channels", type=int, choices=[1, 3], help="input channels (default: from the data)")
    g.add_argument("--augment", choices=CHOICES["augment"], help="augmentation preset (default paper: flip only; light: flip, small zoom and shift; fer: also rotation, brightness, contrast, erasing)")
    g.add_argument("--train-crop", type=int, metavar="PIXELS",
                   help="train on random PIXELS x PIXELS crops of each face (after the augmentation's own moves); "
                        "evaluation and prediction see the whole face (default: off)")
    g.add_argument("--train-limit", type=int, help="train on a fixed random subset of this many images")
    g.add_argument("--val-limit", type=int, help="validate on a fixed random subset of this many images")
    g.add_argument("--format", dest="data_format", help="data layout, when detection is not wanted")
    g.add_argument("--cache-dir", help="where prepared caches live (default $FERNOISE_CACHE or ~/.cache/fernoise)")
    g.add_argument("--device", choices=CHOICES["device"], help="device (default auto)")
    g.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="evaluate on each face and its mirror image, averaging the predictions (default off)")
    g.add_argument("--tta-shift", type=int, metavar="PIXELS",
                   help="evaluate also on each view moved this many pixels left, right, up and down (default 0: off)")
    g.add_argument("--tta-zoom", type=float, metavar="FRACTION",
                   help="evaluate also on each view zoomed in and out by this fraction of the side (default 0: off)")
    g.add_argument("--val-every", type=int, metavar="N", help="validate after every N epochs and the last (default 1)")


def _speed_options(f: Any) -> None:
    f.add_argument("--precision", choices=CHOICES["precision"],
                   help="autocast precision of the forward pass (default fp32); auto: bf16 with channels_last where "
                        "it pays (a GPU with bf16, a CPU with AMX), else fp32")
    f.add_argument("--channels-last", action="store_true", default=None, help="NHWC memory layout for model and batches")
    f.add_argument("--capture", action="store_true", default=None,
                   help="record the whole train step in a CUDA graph and replay it (CUDA only)")
    f.add_argument("--data-on-device", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the training images in device memory (default: on a GPU when they fit)")


def config_overrides(args: argparse.Namespace) -> dict:
    """The TrainConfig fields given as flags (None: not given); data, method and seed are passed apart."""
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("data", "method", "seed")]
    return {name: getattr(args, name) for name in fields if hasattr(args, name)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fernoise",
        description="Facial expression recognition with periodic and dynamic noise injection (Hong & Jeong, CVPRW 2023).",
    )
    parser.add_argument("--version", action="version", version=f"fernoise {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_prepare, add_train_parser, _add_evaluate, _add_reproduce, _add_report, _add_trace_autorelu, _add_predict,
                _add_export, _add_models):
        add(sub)
    return parser


def _add_prepare(sub: Any) -> None:
    p = sub.add_parser("prepare", help="read a data set once into a packed cache", description="Decode a data set where it lies into a packed uint8 cache that training streams.")
    p.add_argument("data", help="data set path (folder tree, CSV, archive) or 'synthetic'")
    p.add_argument("--size", type=int, default=48, help="face size in pixels (default 48)")
    p.add_argument("--out", required=True, help="cache directory to write")
    p.add_argument("--format", help="layout: affectnet, affectnet2021, fer2013-csv, folders (default: detected)")
    p.add_argument("--channels", type=int, choices=[1, 3], help="1 (grey) or 3 (colour); default: from the images")
    p.add_argument("--margin", type=float, default=0.0, help="AffectNet: extra margin around the face box, as a fraction")
    p.add_argument("--affectnet-classes", type=int, choices=[7, 8], default=7, help="7 (paper) or 8 (with contempt)")
    p.add_argument("--class-map", help="numbered class folders: a named map such as rafdb")
    p.add_argument("--val-fraction", type=float, default=0.1, help="stratified val share when the data has no val split")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (reported) instead of stopping")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_train_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="train one method", description="Train ResNet-18 (or another CNN) with one method on one data set.")
    t.add_argument("--data", help="data set path or 'synthetic' (default: the built-in synthetic faces)")
    t.add_argument("--method", choices=CHOICES["method"], help="baseline (default), dropout, periodic, dynamic, dropout+periodic, dropout+dynamic")
    t.add_argument("--out", help="run directory (default runs/<method>-seed<seed>)")
    t.add_argument("--seed", type=int, help="random seed (default 0)")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR where it stopped")
    t.add_argument("--quiet", action="store_true", help="no progress bars (for logs)")
    _train_options(t)


def _add_evaluate(sub: Any) -> None:
    from fernoise.evaluate import SPLITS

    e = sub.add_parser("evaluate", help="score a checkpoint on a data set", description="Macro-F1, accuracy, per-class scores and confusion matrix of a checkpoint (by default the model bundled with fernoise); for a directory of runs, one table of every run's best.pt.")
    e.add_argument("checkpoint", nargs="?",
                   help="a fernoise checkpoint (.pt), or a directory of run folders: each run's best.pt is scored "
                   "(the same as --model; default: the bundled model)")
    _model_option(e)
    e.add_argument("--data", default="synthetic", help="data set path or 'synthetic' (default)")
    e.add_argument("--split", choices=[*SPLITS, "all"],
                   help="split to score, or all (default: its own val split, else its own test split, else every image)")
    e.add_argument("--json", help="write all scores to this JSON file")
    e.add_argument("--csv", help="write the table (run, method, seed, macro-F1, accuracy, ...) to this CSV file")
    e.add_argument("--confusion", help="write the confusion matrix PNG here (default: beside --json, if given)")
    e.add_argument("--format", dest="data_format", help="data layout, when detection is not wanted")
    e.add_argument("--cache-dir", help="where prepared caches live")
    e.add_argument("--tta-flip", action="store_true", help="average predictions with the mirrored face")
    e.add_argument("--tta-shift", type=int, default=0, metavar="PIXELS",
                   help="average also over each view moved this many pixels left, right, up and down (default 0: off)")
    e.add_argument("--tta-zoom", type=float, default=0.0, metavar="FRACTION",
                   help="average also over each view zoomed in and out by this fraction of the side (default 0: off)")
    e.add_argument("--bn-recalibrate", type=int, default=0, metavar="N",
                   help="first re-estimate BatchNorm statistics on N clean batches of the data's train split "
                        "(default 0: the statistics saved in the checkpoint)")
    e.add_argument("--device", default="auto", choices=CHOICES["device"])
    e.add_argument("--quiet", action="store_true")


def _add_reproduce(sub: Any) -> None:
    r = sub.add_parser("reproduce", help="the paper's comparison, all methods x seeds, with Table 1 and figures",
        description="Run baseline, +dropout, +periodic, +dynamic and dropout+periodic for several seeds and write "
        "table1.md/csv, the paper's figures and report.md. With no arguments: a quick run on the synthetic faces.")
    r.add_argument("--data", default="synthetic", help="data set path or 'synthetic' (default)")
    r.add_argument("--methods", nargs="+", choices=CHOICES["method"], default=list(PAPER_METHODS), help="methods to run")
    r.add_argument("--seeds", type=int, help="number of seeds (default 2 in quick mode, else 3)")
    r.add_argument("--out", help="output directory (default runs/reproduce-<data name>)")
    r.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, in separate processes sharing the device(s) (default 1)")
    r.add_argument("--final-tta-zoom", type=float, metavar="F", help="score each final model again (its views, "
                   "also zoomed by F) into final-evaluation.json, for the report's final-model rows and per-class F1")
    r.add_argument("--final-bn-recalibrate", type=int, default=0, metavar="N", help="and once more with BatchNorm "
                   "re-estimated on N clean train batches (final-evaluation-bnrecal.json): the effect of noisy statistics")
    r.add_argument("--quiet", action="store_true")
    _train_options(r)


def _add_report(sub: Any) -> None:
    r = sub.add_parser(
        "report", help="Table 1, figures and report.md from run folders, as reproduce writes them",
        description="Write table1.md/csv, the paper's figures and report.md (paired differences, the paper's claims, "
        "dynamic noise) from the finished runs found under the given folders: a grid still training, runs trained "
        "one by one with `train` or torchrun, or runs gathered from several machines. Unfinished runs are left out "
        "and named.",
    )
    r.add_argument("runs", nargs="+", metavar="RUNS", help="run folders, or folders to search for them")
    r.add_argument("--out", help="where to write (default: the first RUNS folder)")
    r.add_argument("--beside", metavar="FOLDER", help="also check the paper's claims on the finished runs under FOLDER "
                   "(another recipe or protocol) and set them beside these claims, one table")


def _add_trace_autorelu(sub: Any) -> None:
    a = sub.add_parser(
        "trace-autorelu", help="train with dynamic noise and trace AutoReLU's weights step by step",
        description="Train one dynamic-injection run (as `train --method dynamic`) and write, per training step, the "
        "common AutoReLU weight, the spread of the weights before each mean reset, their raw gradient and whether "
        "noise was on (autorelu_trace.csv), a figure (autorelu_trace.png) and a summary (autorelu_trace.json: first "
        "noisy step, switches, noisy share per epoch). A finished run in --out is reused, a stopped one resumed.",
    )
    a.add_argument("--data", help="data set path or 'synthetic' (default)")
    a.add_argument("--out", help="run directory (default runs/trace-<grad>-init<init>-seed<seed>)")
    a.add_argument("--seed", type=int, help="random seed (default 0)")
    a.add_argument("--quiet", action="store_true", help="no progress bars (for logs)")
    _train_options(a)


def _add_predict(sub: Any) -> None:
    from fernoise.detect import DETECTORS
    from fernoise.predict import DEFAULT_BATCH, DEFAULT_DETECTOR, OLD_DETECTOR_NAMES

    p = sub.add_parser(
        "predict", help="expressions of the faces in photos, folders and videos",
        description="Find faces (YuNet, or the Haar cascade), classify their expression with the model bundled with "
        "fernoise (`fernoise models` says what it is) or with --model CHECKPOINT, and print a table. Exit code 2 "
        "when any input failed; the others are still processed. The older form `fernoise predict CHECKPOINT.pt "
        "INPUT...` still works.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="image files (JPEG, PNG, WebP, BMP, TIFF), folders (searched recursively) or video files")
    _model_option(p)
    p.add_argument("--model-info", action="store_true", help="print what the model is (its card's facts) and exit")
    p.set_defaults(usage_error=p.error)
    p.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    p.add_argument("--annotate", metavar="DIR", help="write copies with boxes and labels drawn into DIR")
    p.add_argument("--every", type=_positive_int, default=1, metavar="K", help="videos: every K-th frame (default 1)")
    p.add_argument("--detector", choices=[*DETECTORS, "none", *OLD_DETECTOR_NAMES], default=DEFAULT_DETECTOR,
                   help="face detector: yunet (default; finds tilted, partly covered and small faces), haar "
                   "(OpenCV's frontal-face cascade; 'opencv' is its old name), or none: each input is one "
                   "pre-cropped face")
    p.add_argument("--margin", type=float, default=None, metavar="F",
                   help="crop each face box grown by F of its size on each side, upright, instead of the default "
                   "FER2013 framing (see docs/PREDICT.md)")
    p.add_argument("--tta", action="store_true", help="six views of each face averaged (mirror image, zoomed in and "
                   "out by 10%%): more accurate (docs/MODEL.md), six times the compute")
    p.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH, help=f"faces at once (default {DEFAULT_BATCH})")
    p.add_argument("--device", default="auto", choices=CHOICES["device"], help="device (default auto)")
    p.add_argument("--engine", default="torch", choices=["torch", "onnx"],
                   help="run the network in PyTorch (default) or in ONNX Runtime on the CPU (faster; needs fernoise[onnx])")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_export(sub: Any) -> None:
    from fernoise.export import DEFAULT_OPSET

    e = sub.add_parser(
        "export", help="write a checkpoint for sharing (--pt, --half) or the model as ONNX",
        description="--pt: a checkpoint with only what inference needs (weights, classes, preprocessing, noise "
        "settings, provenance), float16 weights with --half (they load back as float32). --onnx: the model (eval "
        "form, no noise) as ONNX: input 'faces' float32 (N, C, size, size) normalised as in training, output "
        "'logits'; class names and input description in metadata_props.",
    )
    e.add_argument("checkpoint", nargs="?", help="a fernoise checkpoint (.pt) (the same as --model; default: the bundled model)")
    _model_option(e)
    e.add_argument("--pt", metavar="FILE", help="checkpoint file to write, without optimizer or other resume state")
    e.add_argument("--half", action="store_true", help="with --pt: store the weights as float16 (half the size)")
    e.add_argument("--onnx", metavar="FILE", help="ONNX file to write")
    e.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")


def _add_models(sub: Any) -> None:
    sub.add_parser(
        "models", help="what the model bundled with fernoise is",
        description="Print what the model bundled with fernoise is, read from its file: architecture, input, "
        "classes, training data and its terms, training command, recorded scores and known limits (the full card: "
        "docs/MODEL.md). predict, evaluate and export use it when no --model is given.",
    )


def _model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="PATH",
                        help="a fernoise checkpoint (.pt) (default: the model bundled with fernoise; see `fernoise models`)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value
