"""The ``fernoise`` command: what each command does (prepare, train, evaluate, reproduce, report, trace-autorelu,
predict, export, models), and how errors and interrupts end it. Its arguments are in :mod:`fernoise.arguments`."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import signal
import sys
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

from fernoise.arguments import add_train_parser, build_parser, config_overrides
from fernoise.config import TrainConfig

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports `yes | head -1`


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into the same clean stop as Ctrl-C."""


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Terminated()


def _checkpoint_argument(args: argparse.Namespace) -> str:
    """evaluate and export: --model or the positional checkpoint (not both), else the bundled model."""
    from fernoise.bundled import bundled_model_path

    if args.checkpoint and args.model:
        raise ValueError(f"two models given, {args.checkpoint} and --model {args.model}: give one")
    return args.model or args.checkpoint or str(bundled_model_path())


def _predict_model(args: argparse.Namespace) -> Optional[str]:
    """predict's model: --model, or a checkpoint as the first argument (the older form); None: the bundled model.

    The older form is recognised by the first argument's name (.pt, .pth) or content (a PyTorch
    archive is a zip file, which no image or video is); it is then taken out of the inputs.
    """
    first = Path(args.inputs[0]) if args.inputs else None
    if first is not None and first.suffix.lower() == ".onnx":
        raise ValueError(f"{first}: predict runs fernoise checkpoints (.pt), not ONNX files; to run a checkpoint's "
                         "network in ONNX Runtime: fernoise predict --model CHECKPOINT.pt --engine onnx INPUT...")
    old_form = first is not None and (first.suffix.lower() in (".pt", ".pth")
                                      or (first.is_file() and zipfile.is_zipfile(first)))
    if not old_form:
        return args.model
    if args.model:
        raise ValueError(f"{first}: a checkpoint among the inputs besides --model {args.model}: give one model, "
                         "with --model")
    if not first.is_file():
        raise FileNotFoundError(f"{first}: no such checkpoint file (predict takes its model as --model PATH, and "
                                "without it uses the bundled model: fernoise predict [--model PATH] INPUT...)")
    print(f"fernoise: note: the checkpoint as the first argument is the older form; write "
          f"`fernoise predict --model {shlex.quote(str(first))} INPUT...`", file=sys.stderr)
    args.inputs = args.inputs[1:]
    return str(first)


def _data_name(data: Optional[str]) -> str:
    if not data or data == "synthetic":
        return "synthetic"
    return Path(data.rstrip("/")).name.split(".")[0] or "data"


def _cmd_prepare(args: argparse.Namespace) -> int:
    from fernoise.data import prepare

    prepare(
        args.data, size=args.size, out=args.out, format=args.format, channels=args.channels, margin=args.margin,
        affectnet_classes=args.affectnet_classes, class_map=args.class_map, val_fraction=args.val_fraction,
        skip_bad=args.skip_bad, progress=not args.quiet,
    )
    print(f"cache written to {args.out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from fernoise.config import resolve_run_config
    from fernoise.train import train

    if args.resume:
        out = Path(args.resume)
        if not (out / "config.yaml").is_file():
            raise FileNotFoundError(f"{out}: no config.yaml, so there is no run to resume")
        cfg = resolve_run_config(out, epochs=args.epochs, device=args.device)
    else:
        cfg = _train_config(args)
        out = Path(args.out or f"runs/{cfg.method}-seed{cfg.seed}")
    summary = train(cfg, out, resume=bool(args.resume), quiet=args.quiet)
    if not summary:  # a torchrun worker other than rank 0
        return 0
    line = f"best val F1 {summary['best_val_f1']:.4f} at epoch {summary['best_epoch']}"
    if "test_f1" in summary:
        line += f"; test F1 {summary['test_f1']:.4f}, accuracy {summary['test_acc']:.4f}"
    print(f"{line}\nrun written to {out}")
    return 0


def _train_config(args: argparse.Namespace) -> TrainConfig:
    from fernoise.config import preset_path, resolve_config

    config_file = preset_path(args.config) if args.config else None
    return resolve_config(config_file, data=args.data, method=args.method, seed=args.seed, **config_overrides(args))


def train_command(config: dict[str, Any], out: str, presets: Sequence[Optional[str]] = ("fer2013-fast", None)) -> str:
    """A ``fernoise train`` command that trains a run's saved ``config`` again into ``out``.

    The shortest of: each preset (None: no --config) with the flags of the settings that differ
    from it, kept only when the parser and :func:`fernoise.config.resolve_config` turn it back into
    the same settings (speed-only ones aside); else ``--config`` of the run's own config.yaml.
    """
    from fernoise.config import SPEED_ONLY, config_changes, preset_path, resolve_config

    parser = argparse.ArgumentParser(prog="fernoise")
    sub = parser.add_subparsers(dest="command")
    add_train_parser(sub)
    flags = {action.dest: action for action in sub.choices["train"]._actions}  # noqa: SLF001 - argparse keeps them there
    found = []
    for preset in presets:
        words = ["--config", preset] if preset else []
        changes = config_changes(config, resolve_config(preset_path(preset) if preset else None), ignore=SPEED_ONLY)
        for key, (value, _) in {**changes, "data": (config["data"], None), "seed": (config["seed"], None)}.items():
            action = flags.get(key)
            if action is None or value is None:
                continue
            if isinstance(action, argparse.BooleanOptionalAction):
                words.append(action.option_strings[0 if value else 1])
            elif action.nargs == 0:  # store_true
                words += [action.option_strings[0]] if value else []
            else:
                words += [action.option_strings[0], str(value)]
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # a value the parser refuses: not this preset
                args = parser.parse_args(["train", *words, "--out", out])
        except SystemExit:
            continue
        if not config_changes(config, _train_config(args), ignore=SPEED_ONLY):
            found.append(words)
    words = min(found, key=len) if found else ["--config", str(Path(out) / "config.yaml")]
    return shlex.join(["fernoise", "train", *words, "--out", out])


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from fernoise.evaluate import evaluate_command

    args.checkpoint = _checkpoint_argument(args)
    return evaluate_command(args)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from fernoise.config import preset_path
    from fernoise.reproduce import reproduce

    quick = args.data == "synthetic" and not args.config
    config_file = preset_path(args.config or ("quick" if quick else "paper"))
    out = Path(args.out or f"runs/reproduce-{_data_name(args.data)}")
    report = reproduce(out, data=args.data, methods=args.methods, seeds=args.seeds or (2 if quick else 3),
                       config_file=config_file, overrides=config_overrides(args), quiet=args.quiet, jobs=args.jobs,
                       final_tta_zoom=args.final_tta_zoom, final_bn_recalibrate=args.final_bn_recalibrate)
    print(f"report written to {report}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from fernoise.reports import report_folders

    options = [word for flag in ("out", "beside") if getattr(args, flag) for word in (f"--{flag}", getattr(args, flag))]
    report, unfinished = report_folders(args.runs, Path(args.out or args.runs[0]),
                                        shlex.join(["fernoise", "report", *args.runs, *options]), args.beside)
    print("".join(f"not finished, left out: {path}\n" for path in unfinished) + f"report written to {report}")
    return 0


def _cmd_trace_autorelu(args: argparse.Namespace) -> int:
    from fernoise.config import preset_path, resolve_config
    from fernoise.reports import write_trace_report
    from fernoise.reproduce import ensure_run

    config_file = preset_path(args.config) if args.config else None
    cfg = resolve_config(config_file, data=args.data, method="dynamic", seed=args.seed, **config_overrides(args))
    if cfg.capture:
        raise ValueError("capture: the AutoReLU trace cannot be recorded inside a CUDA graph; drop --capture")
    out = Path(args.out or f"runs/trace-{cfg.autorelu_grad}-init{cfg.autorelu_init:g}-seed{cfg.seed}")
    ensure_run(cfg, out, args.quiet, print)
    stats = write_trace_report(out)
    first = stats["first_noisy_step"]
    print(f"{stats['steps']} steps, noise on in {stats['noisy_steps']} ({stats['noisy_share']:.1%}); first noisy step: "
          f"{first if first else 'never'}; {stats['switches']} switches; longest noisy stretch "
          f"{stats['longest_noisy_stretch']} steps; final w {stats['final_w']:.3g}")
    print("noisy share per epoch: " + " ".join(f"{v:.2f}" for v in stats["noisy_share_per_epoch"].values()))
    print(f"trace written to {out / 'autorelu_trace.csv'} and {out / 'autorelu_trace.png'}")
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _cmd_predict(args: argparse.Namespace) -> int:
    from fernoise.distributed import resolve_device
    from fernoise.io import write_text_atomic
    from fernoise.bundled import bundled_model_path, model_info
    from fernoise.predict import AnnotatedCopies, Prediction, Predictor, format_predictions

    model = _predict_model(args) or str(bundled_model_path())
    if args.model_info:
        print(model_info(model))
        return 0
    if not args.inputs:
        args.usage_error("no INPUT given: fernoise predict [--model PATH] IMAGE|FOLDER|VIDEO...")
    predictor = Predictor.from_checkpoint(model, device=resolve_device(args.device), detector=args.detector,
                                          margin=args.margin, batch_size=args.batch_size, engine=args.engine,
                                          tta=args.tta)
    copies = AnnotatedCopies(args.annotate, args.inputs, args.every) if args.annotate else None
    records: list[Prediction] = []
    try:
        for record in predictor.predict_paths(args.inputs, every=args.every, progress=not args.quiet,
                                              keep_images=copies is not None):
            if copies is not None:
                copies.write(record)
                record.image = None
            records.append(record)
    finally:
        if copies is not None:
            copies.close()
    failed = [r for r in records if r.error is not None]
    print(format_predictions(records))
    for record in failed:
        print(f"fernoise: error: {record.error}", file=sys.stderr)
    if args.json:
        report = {"checkpoint": model, "classes": predictor.classes, "tta": args.tta, "results": [r.to_dict() for r in records]}
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    done = [r for r in records if r.error is None]
    frames = sum(r.frame is not None for r in done)
    summary = f"{_count(sum(len(r.faces) for r in done), 'face')} in {_count(len(done) - frames, 'image')}"
    print(summary + (f" and {_count(frames, 'video frame')}" if frames else "") + (f"; {len(failed)} failed" if failed else ""))
    return EXIT_ERROR if failed else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from fernoise.checkpoint import load_checkpoint
    from fernoise.export import ExportError, export_checkpoint, export_onnx

    if not (args.onnx or args.pt):
        raise ExportError("export: say what to write: --pt FILE (a checkpoint for inference) and/or --onnx FILE")
    if args.half and not args.pt:
        raise ExportError("export: --half applies to --pt (an ONNX export is float32)")
    args.checkpoint = _checkpoint_argument(args)
    if args.pt:
        sizes = export_checkpoint(args.checkpoint, args.pt, half=args.half)
        dtype = load_checkpoint(args.pt).get("weights_dtype", "float32")  # a float16 source stays float16
        print(f"wrote {args.pt}: {dtype} weights, no optimizer state, "
              f"{sizes[1] / 2**20:.1f} MiB (from {sizes[0] / 2**20:.1f} MiB)")
    if args.onnx:
        metadata = export_onnx(args.checkpoint, args.onnx, opset=args.opset)
        spec = json.loads(metadata["fernoise.input"])
        print(f"wrote {args.onnx}: input 'faces' float32 (N, {spec['channels']}, {spec['size']}, {spec['size']}), "
              f"output 'logits' (N, {len(json.loads(metadata['fernoise.classes']))}), opset {args.opset}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:  # noqa: ARG001 - every command takes its arguments
    from fernoise.bundled import model_info

    print(model_info())
    return 0


COMMANDS = {"prepare": _cmd_prepare, "train": _cmd_train, "evaluate": _cmd_evaluate, "reproduce": _cmd_reproduce,
            "report": _cmd_report, "trace-autorelu": _cmd_trace_autorelu, "predict": _cmd_predict,
            "export": _cmd_export, "models": _cmd_models}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("train", "reproduce", "trace-autorelu"):
        signal.signal(signal.SIGTERM, _on_sigterm)
    from fernoise.errors import USER_ERRORS

    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, _Terminated) else "interrupted"
        hint = ""
        if args.command == "train":
            run = args.resume or args.out or "the run directory"
            hint = f"; checkpoints/last.pt holds the last finished epoch: resume with `fernoise train --resume {run}`"
        elif args.command in ("reproduce", "trace-autorelu"):
            hint = "; run the same command again to resume"
        print(f"fernoise: {what}{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # whoever read stdout has stopped (`| head`): end quietly, and keep the exit flush from failing again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except USER_ERRORS as exc:
        print(f"fernoise: error: {exc}", file=sys.stderr)
        if os.environ.get("FERNOISE_DEBUG"):
            raise
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
