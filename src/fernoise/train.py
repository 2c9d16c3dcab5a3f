"""The training loop: one run of one method on one data set.

``train(config, out_dir)`` reads the data, builds the model with its noise,
trains for ``config.epochs`` epochs and leaves in ``out_dir``: ``config.yaml``,
``metrics.csv`` (a row per epoch), TensorBoard events, ``checkpoints/last.pt``
and ``checkpoints/best.pt`` (best validation macro-F1) and ``summary.json``.
Checkpoints are written at the end of every epoch; ``resume=True`` continues
from ``last.pt`` and, on the CPU, reproduces the uninterrupted run exactly.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from fernoise.checkpoint import CheckpointError, inference_checkpoint, load_checkpoint, model_from_checkpoint, save_checkpoint
from fernoise.config import SPEED_ONLY, TrainConfig, config_changes
from fernoise.data import (
    Augmenter, PackedData, class_weights, fits_on_device, iterate_batches, load_data, num_batches, to_device,
)
from fernoise.data.classes import DataError
from fernoise.distributed import DeviceError, Distributed, init_distributed
from fernoise.evaluate import evaluate_arrays
from fernoise.io import PathLike, RunLock, write_text_atomic
from fernoise.metrics import RunningF1
from fernoise.batchnorm import recalibrate_batchnorm
from fernoise.models import build_model
from fernoise.noise import TRACE_COLUMNS, NoiseController, PeriodicSchedule, autorelu_weight
from fernoise.step import TrainStep

CHECK_EVERY = 10  # steps between host syncs for the progress bar and the NaN check
TRACE_FILE = "autorelu_trace.csv"  # dynamic runs: one row per training step (AutoReLUTrace)
METRIC_COLUMNS = ["epoch", "train_loss", "train_f1", "val_loss", "val_f1", "val_acc", "noise_on", "lr", "seconds"]


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, bad resume); the message says where and what to do."""


@dataclass
class _Data:
    packed: PackedData
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray


def _subset(images: np.ndarray, labels: np.ndarray, limit: Optional[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random subset (for quick runs); the data seed, not the training seed, picks it."""
    if limit is None or limit >= len(labels):
        return images, labels
    keep = np.sort(np.random.default_rng(seed).permutation(len(labels))[:limit])
    return images[keep], labels[keep]


def prepare_data(cfg: TrainConfig, progress: bool = True) -> _Data:
    packed = load_data(
        cfg.data,
        size=cfg.image_size,
        channels=cfg.channels,
        cache_dir=cfg.cache_dir,
        format=cfg.data_format,
        val_fraction=cfg.val_fraction,
        progress=progress,
    )
    if "train" not in packed.splits:  # evaluate accepts such a data set; training cannot
        raise DataError(f"{packed.meta.get('source', cfg.data)}: no training images found in the "
                        f"{packed.meta.get('format', '')} layout (it has {', '.join(packed.splits)} only)")
    train, val = packed.splits["train"], packed.splits["val"]
    train_images, train_labels = _subset(train.images, train.labels, cfg.train_limit, seed=1)
    val_images, val_labels = _subset(val.images, val.labels, cfg.val_limit, seed=2)
    return _Data(packed, train_images, train_labels, val_images, val_labels)


def model_kwargs(cfg: TrainConfig, packed: PackedData) -> dict[str, Any]:
    """The build_model arguments a checkpoint stores, so it rebuilds without the config."""
    return {
        "name": cfg.model,
        "num_classes": len(packed.classes),
        "noise": cfg.noise,
        "position": cfg.position,
        "dropout": cfg.dropout_p,
        "in_channels": packed.channels,
        "stem": cfg.stem,
        "autorelu_init": cfg.autorelu_init,
        "autorelu_constant": cfg.autorelu_constant,
        "autorelu_grad": cfg.autorelu_grad,
    }


def _optimizer(cfg: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    params = model.parameters()
    fused = device.type == "cuda"
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)
    # A captured step needs Adam's step counters on the device (capturable).
    adam = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # Adam: coupled (L2) weight decay as in the paper; it is also what moves AutoReLU's w.
    return adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused, capturable=cfg.capture)


def _scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> Optional[torch.optim.lr_scheduler.LRScheduler]:
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return None


def _fit_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler, optimizer: torch.optim.Optimizer,
                  epochs: int) -> None:
    """A resumed cosine schedule stretched to a new number of epochs: the learning rate of the
    next epoch is what a run of ``epochs`` epochs would use there (closed form)."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) or scheduler.T_max == epochs:
        return
    scheduler.T_max = epochs
    done = scheduler.last_epoch
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * done / epochs)) / 2
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    state = {"loader": generator.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    generator.set_state(state["loader"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def pause_point(phase: str, epoch: int) -> None:
    """Fault injection for tests: with ``FERNOISE_PAUSE_AT=<phase>@<epoch>`` the process writes the
    file named by ``FERNOISE_PAUSE_MARKER`` and stops itself (SIGSTOP) here, to be killed at a known phase."""
    if os.environ.get("FERNOISE_PAUSE_AT") == f"{phase}@{epoch}":
        Path(os.environ["FERNOISE_PAUSE_MARKER"]).write_text(phase)
        os.kill(os.getpid(), signal.SIGSTOP)


def _read_trace(path: Path, start_epoch: int) -> list[list[Any]]:
    """The trace rows of the epochs before ``start_epoch`` (a resumed run repeats the later ones)."""
    if start_epoch == 1 or not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = [[int(r["epoch"]), int(r["step"]), *(float(r[c]) for c in TRACE_COLUMNS)] for r in csv.DictReader(handle)]
    return [r for r in rows if r[0] < start_epoch]


def _write_trace(path: Path, rows: list[list[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["epoch", "step", *TRACE_COLUMNS])
    writer.writerows([r[:2] + [f"{v:.9g}" for v in r[2:]] for r in rows])
    write_text_atomic(path, buffer.getvalue())


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


class _Progress:
    """tqdm bar per epoch (loss, running F1, images/s), or nothing when quiet."""

    def __init__(self, quiet: bool, total: int, epoch: int, epochs: int) -> None:
        self.bar = None
        if not quiet:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False, dynamic_ncols=True)

    def show(self, loss: float, f1: float, images_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", f1=f"{f1:.3f}", img_s=f"{images_per_s:.0f}", refresh=False)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(
    cfg: TrainConfig,
    out_dir: PathLike,
    *,
    resume: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    on_epoch: Optional[Callable[[dict[str, Any]], None]] = None,
) -> dict[str, Any]:
    """Train one run; return its summary (also written to ``summary.json``).

    ``on_epoch`` is called with each finished epoch's metrics row. Under torchrun every
    process calls this; only rank 0 locks and writes ``out_dir``.
    """
    out = Path(out_dir)
    ddp, device = init_distributed(cfg.device)
    try:
        if not ddp.is_main:
            return _train_locked(cfg, out, ddp, device, resume=resume, quiet=True, log=lambda _: None)
        with RunLock(out):
            return _train_locked(cfg, out, ddp, device, resume=resume, quiet=quiet, log=log, on_epoch=on_epoch)
    finally:
        ddp.close()


def _train_locked(
    cfg: TrainConfig,
    out: Path,
    ddp: Distributed,
    device: torch.device,
    *,
    resume: bool,
    quiet: bool,
    log: Callable[[str], None],
    on_epoch: Optional[Callable[[dict[str, Any]], None]] = None,
) -> dict[str, Any]:
    ckpt_dir = out / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    if not resume and (last_path.exists() or (out / "metrics.csv").exists()):
        raise TrainingError(f"{out} already holds a run; use --resume to continue it or choose another --out")
    if cfg.batch_size % ddp.world_size:
        raise TrainingError(f"batch size {cfg.batch_size} does not divide among {ddp.world_size} processes")

    undriven = cfg.dynamic_without_drive()
    if undriven:
        log(f"warning: dynamic method with {', '.join(undriven)}: nothing but float rounding moves the AutoReLU "
            "weights, so noise may never switch on (autorelu_trace.csv and report.md will tell)")
    torch.manual_seed(cfg.seed)
    if not ddp.is_main:
        ddp.barrier()  # rank 0 builds the cache first
    data = prepare_data(cfg, progress=not quiet)
    if ddp.is_main:
        ddp.barrier()
    packed = data.packed
    if len(data.train_labels) == 0 or len(data.val_labels) == 0:
        raise TrainingError(f"{cfg.data}: the train and val splits must both hold images")
    num_classes = len(packed.classes)

    if cfg.capture and device.type != "cuda":
        raise DeviceError(f"capture: CUDA graphs need a CUDA device, this run is on {device.type}; set capture: false")
    if cfg.capture and ddp.enabled:
        raise TrainingError("capture: not supported under torchrun (DistributedDataParallel); set capture: false")
    model = build_model(**model_kwargs(cfg, packed)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = ddp.wrap(model, device)  # converts BatchNorm in place on GPUs; model stays the plain network
    optimizer = _optimizer(cfg, model, device)
    scheduler = _scheduler(cfg, optimizer)
    schedule = PeriodicSchedule(cfg.interval, cfg.interval_unit) if cfg.noise == "periodic" else None
    # The per-step AutoReLU trace cannot be recorded from inside a CUDA graph.
    controller = NoiseController(model, schedule, sync_scope=cfg.autorelu_sync, trace=not cfg.capture)
    augment = Augmenter(cfg.augment, packed.size, packed.channels, packed.mean, packed.std).to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    weights = class_weights(data.train_labels, num_classes).to(device) if cfg.class_weighted_loss else None
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    reduce = ddp.sum_ if ddp.enabled else None
    train_step = TrainStep(net, optimizer, criterion, controller, precision=cfg.precision, capture=cfg.capture,
                           skip_nonfinite=cfg.nonfinite == "skip", reduce=reduce)
    data = _place_data(cfg, data, device, log)

    rows: list[dict[str, Any]] = []
    start_epoch, best = 1, {"val_f1": -1.0, "epoch": 0}
    if resume and last_path.is_file():
        start_epoch, best, rows = _resume(last_path, out, cfg, packed, model, optimizer, scheduler, controller, generator, device)
        log(f"resuming {out} after epoch {start_epoch - 1}")
    elif resume:
        log(f"{out}: no epoch had finished, starting from the beginning")
    trace_rows = _read_trace(out / TRACE_FILE, start_epoch) if controller.trace is not None else []
    writer = None
    if ddp.is_main:
        write_text_atomic(out / "config.yaml", cfg.to_yaml())
        pause_point("started", start_epoch)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out), purge_step=start_epoch)
    checkpoint_base = {
        "model": model_kwargs(cfg, packed),
        "classes": list(packed.classes),
        "input": {"size": packed.size, "channels": packed.channels, "mean": list(packed.mean), "std": list(packed.std)},
        "data": {"source": str(cfg.data), "fingerprint": packed.meta.get("fingerprint")},
        "config": cfg.to_dict(),
    }
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            row = _train_epoch(cfg, epoch, net, train_step, controller, augment, data, generator, device, ddp, quiet)
            if cfg.bn_recalibrate:
                _recalibrate(cfg, epoch, model, augment, data, device, ddp)
            trace_rows += [[epoch, step, *values] for step, values in enumerate(controller.take_trace(), start=1)]
            val = evaluate_arrays(
                model, data.val_images, data.val_labels, num_classes, augment, device, cfg.eval_batch_size, cfg.tta_flip
            )
            row.update(val_loss=val["loss"], val_f1=val["macro_f1"], val_acc=val["accuracy"])
            row["lr"] = optimizer.param_groups[0]["lr"]
            if scheduler is not None:
                scheduler.step()
            if controller.autorelus:
                row["autorelu_w"] = autorelu_weight(model)
            order = METRIC_COLUMNS + [k for k in row if k not in METRIC_COLUMNS]
            rows.append({k: row[k] for k in order})

            if not all(torch.isfinite(p).all() for p in model.parameters()):
                raise TrainingError(
                    f"non-finite weights after epoch {epoch}; checkpoints keep the state after epoch {epoch - 1}. "
                    f"Lower the learning rate"
                )
            is_best = val["macro_f1"] > best["val_f1"]
            if is_best:
                best = {"val_f1": val["macro_f1"], "epoch": epoch}
            state = {
                **checkpoint_base,
                "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler else None,
                "noise": controller.state_dict(),
                "rng": _rng_state(generator, device),
                "epoch": epoch,
                "best": best,
                "metrics": rows,
            }
            if not ddp.is_main:
                continue
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(key, value, epoch)
            writer.flush()
            # best.pt first: a crash between the two writes then only repeats this epoch on resume.
            # best.pt is for use and sharing: no optimizer or other resume state (resuming reads last.pt).
            pause_point("epoch-trained", epoch)
            # The trace before last.pt: a resume from last.pt must find this epoch's rows in it.
            if trace_rows:
                _write_trace(out / TRACE_FILE, trace_rows)
            if is_best:
                save_checkpoint(best_path, inference_checkpoint(state))
                pause_point("best-written", epoch)
            save_checkpoint(last_path, state)
            pause_point("last-written", epoch)
            _write_metrics(out / "metrics.csv", rows)
            pause_point("epoch-done", epoch)
            noise = f" noise {row['noise_on']:.2f}" if controller.method != "none" else ""
            log(
                f"epoch {epoch}/{cfg.epochs}  train loss {row['train_loss']:.4f}  val loss {val['loss']:.4f}  "
                f"val F1 {val['macro_f1']:.4f}  acc {val['accuracy']:.4f}{noise}  {row['seconds']:.1f}s"
            )
            if on_epoch is not None:
                on_epoch(row)
    finally:
        if writer is not None:
            writer.close()

    if not ddp.is_main:
        return {}
    summary = _summarise(cfg, rows, best, best_path, packed, augment, device)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _place_data(cfg: TrainConfig, data: _Data, device: torch.device, log: Callable[[str], None]) -> _Data:
    """Training images in device memory when asked for, or by default on a GPU when they fit."""
    nbytes = data.train_images.nbytes
    wanted = cfg.data_on_device if cfg.data_on_device is not None else device.type == "cuda"
    if not wanted:
        return data
    if not fits_on_device(nbytes, device):
        if cfg.data_on_device:
            raise TrainingError(f"data_on_device: the {nbytes / 2**30:.1f} GiB of training images do not fit "
                                f"in a quarter of {device}'s free memory; set data_on_device: false")
        log(f"training images ({nbytes / 2**30:.1f} GiB) stay in host memory: too large for {device}")
        return data
    images, labels = to_device(data.train_images, data.train_labels, device)
    return dataclasses.replace(data, train_images=images, train_labels=labels)


def _train_epoch(
    cfg: TrainConfig,
    epoch: int,
    net: nn.Module,
    train_step: TrainStep,
    controller: NoiseController,
    augment: Augmenter,
    data: _Data,
    generator: torch.Generator,
    device: torch.device,
    ddp: Distributed,
    quiet: bool,
) -> dict[str, Any]:
    net.train()
    controller.start_epoch()
    local_batch = cfg.batch_size // ddp.world_size
    batches = iterate_batches(
        data.train_images, data.train_labels, local_batch, shuffle=True, generator=generator,
        balanced=cfg.balanced_sampler, rank=ddp.rank, world_size=ddp.world_size, device=device,
    )
    total = num_batches(len(data.train_labels), local_batch, world_size=ddp.world_size)
    progress = _Progress(quiet, total, epoch, cfg.epochs)
    running = RunningF1(len(data.packed.classes))
    # Per-step loss x batch size stays on the device: no host sync per step. Losses are
    # checked for NaN/inf when the progress bar refreshes (every CHECK_EVERY steps).
    weighted_losses = torch.zeros(total, dtype=torch.float64, device=device)
    seen, skipped = 0, 0
    start = time.perf_counter()
    try:
        for step, (images, labels) in enumerate(batches, start=1):
            inputs = augment(images, generator=generator, train=True)
            if cfg.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            loss, logits = train_step(inputs, labels)
            if train_step.last_step_skipped:
                skipped += 1
            else:
                weighted_losses[step - 1] = loss * len(labels)
                seen += len(labels)
                running.update(logits.argmax(1), labels)
            if step % CHECK_EVERY == 1 or step == total:
                loss_sum = _checked_loss_sum(weighted_losses[:step], epoch, ddp)
                progress.show(loss_sum / max(seen, 1), running.compute(), seen / (time.perf_counter() - start))
            progress.update()
            if step == 2:
                pause_point("mid-epoch", epoch)
    finally:
        progress.close()
    loss_sum = float(weighted_losses.sum())
    if ddp.enabled:
        loss_sum, seen = (float(v) for v in ddp.sum_(torch.tensor([loss_sum, seen], dtype=torch.float64)))
        running.all_reduce_()
    if seen == 0:
        raise TrainingError(f"every training step of epoch {epoch} had a non-finite loss; nothing was learned")
    row: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": loss_sum / seen,
        "train_f1": running.compute(),
        "noise_on": controller.epoch_noise_fraction(),
        "seconds": time.perf_counter() - start,
    }
    if cfg.nonfinite == "skip":
        row["skipped_steps"] = skipped
    return row


def _recalibrate(cfg: TrainConfig, epoch: int, model: nn.Module, augment: Augmenter, data: _Data,
                 device: torch.device, ddp: Distributed) -> None:
    """BatchNorm statistics from ``cfg.bn_recalibrate`` clean training batches, drawn with a generator of
    their own (so the training stream, and resuming, are unaffected)."""
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    batches = iterate_batches(data.train_images, data.train_labels, cfg.batch_size // ddp.world_size, shuffle=True,
                              generator=generator, rank=ddp.rank, world_size=ddp.world_size, device=device)
    clean = (augment(images, train=False) for images, _ in itertools.islice(batches, cfg.bn_recalibrate))
    recalibrate_batchnorm(model, clean)


def _checked_loss_sum(weighted_losses: torch.Tensor, epoch: int, ddp: Distributed) -> float:
    """This rank's loss sum so far; raises at the first non-finite step (on every rank alike)."""
    bad = ~torch.isfinite(weighted_losses)
    loss_sum, bad_steps = torch.stack([weighted_losses.masked_fill(bad, 0).sum(), bad.sum().to(torch.float64)]).tolist()
    if ddp.enabled:  # every rank must take the same branch below
        bad_steps = float(ddp.sum_(torch.tensor([bad_steps], dtype=torch.float64, device=weighted_losses.device)))
    if bad_steps:
        if bad.any():
            first = int(bad.nonzero()[0])
            what = f"({float(weighted_losses[first])}) at epoch {epoch}, step {first + 1}"
        else:
            what = f"at epoch {epoch}, in another process"
        raise TrainingError(
            f"non-finite training loss {what}; "
            f"checkpoints/last.pt keeps the state after epoch {epoch - 1}. "
            f"Lower the learning rate, or set nonfinite: skip to skip such steps"
        )
    return loss_sum


def _resume(
    last_path: Path,
    out: Path,
    cfg: TrainConfig,
    packed: PackedData,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler],
    controller: NoiseController,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    try:
        state = load_checkpoint(last_path, resume=True)
    except CheckpointError as exc:
        raise TrainingError(f"cannot resume: {exc}") from None
    changed = config_changes(state["config"], cfg, ignore=("epochs", *SPEED_ONLY))
    if changed:
        diffs = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise TrainingError(f"cannot resume {out} with a different configuration ({diffs})")
    if list(state["classes"]) != list(packed.classes):
        raise TrainingError(
            f"cannot resume {out}: its checkpoint has classes {state['classes']} but the data now has {packed.classes}"
        )
    model.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
        _fit_schedule(scheduler, optimizer, cfg.epochs)
    controller.load_state_dict(state["noise"])
    _set_rng_state(state["rng"], generator, device)
    return state["epoch"] + 1, state["best"], list(state["metrics"])


def _summarise(
    cfg: TrainConfig,
    rows: list[dict[str, Any]],
    best: dict[str, Any],
    best_path: Path,
    packed: PackedData,
    augment: Augmenter,
    device: torch.device,
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "method": cfg.method,
        "seed": cfg.seed,
        "epochs": len(rows),
        "best_val_f1": best["val_f1"],
        "best_epoch": best["epoch"],
        "final_val_f1": float(rows[-1]["val_f1"]),
        "final_val_acc": float(rows[-1]["val_acc"]),
        "final_train_loss": float(rows[-1]["train_loss"]),
        "seconds": sum(float(r["seconds"]) for r in rows),
        "classes": list(packed.classes),
    }
    test = packed.splits.get("test")
    if test is not None and len(test.labels) and best_path.is_file():
        model = model_from_checkpoint(load_checkpoint(best_path), best_path).to(device)
        scores = evaluate_arrays(
            model, test.images, test.labels, len(packed.classes), augment, device, cfg.eval_batch_size, cfg.tta_flip
        )
        summary.update(test_f1=scores["macro_f1"], test_acc=scores["accuracy"])
    return summary
