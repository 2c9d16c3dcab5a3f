"""The bundled model as `fernoise predict --detector none [--tta]` classifies 48x48 crops: accuracy and
macro-F1 on a data set's val split with one view and with predict's six views (Predictor(tta=True)).

    python scripts/bundled_views.py ../shared/data/fer2013-trainval.tar.gz --json results/fer2013-fast/seed0/bundled-views.json
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from fernoise.data import load_data
from fernoise.metrics import classification_scores
from fernoise.predict import Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="data set with a val split of 48x48 faces (FER2013: PublicTest)")
    parser.add_argument("--json", help="write the scores here")
    args = parser.parse_args()
    packed = load_data(args.data, size=48, progress=False)
    val = packed.splits["val"]
    faces = [image[..., 0] for image in np.asarray(val.images)]
    results = {}
    for tta in (False, True):
        predictor = Predictor(detector="none", tta=tta, batch_size=256)
        index = {name: i for i, name in enumerate(predictor.classes)}
        truth = np.array([index[packed.classes[label]] for label in np.asarray(val.labels)])
        start = time.perf_counter()
        predicted = np.array([index[face.label] for face in predictor.predict_faces(faces)])
        scores = classification_scores(truth, predicted, len(predictor.classes), predictor.classes)
        name = "six views (--tta)" if tta else "one view"
        results[name] = {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"], "f1": scores["f1"],
                         "n": scores["n"], "seconds": time.perf_counter() - start}
        print(f"{name}: accuracy {scores['accuracy']:.4f}, macro-F1 {scores['macro_f1']:.4f}, "
              f"{results[name]['seconds']:.0f} s for {scores['n']} faces")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"data": args.data, "split": "val", **results}, handle, indent=2)
            handle.write("\n")


if __name__ == "__main__":
    main()
