#!/usr/bin/env bash
# Make a finished run's final model the model bundled with fernoise (fernoise.bundled):
#   scripts/bundle_model.sh RUN_DIR [DATA]
# writes RUN_DIR/checkpoints/last.pt's inference part (the final model, not best.pt; with a weight
# average its state_dict is the average, the weights evaluated) with float16 weights to
# src/fernoise/weights/fer2013-fast.pt ($BUNDLE_OUT overrides), with a "card" entry: the run, the
# `fernoise train` command that trains its configuration (fernoise.cli.train_command: the preset plus
# the flags that differ, checked to resolve to the same settings) and the final epoch's recorded scores.
# Given DATA (the run's data set), it also scores the float16 file itself on DATA's validation split
# as `predict` classifies (one view per face), writes RUN_DIR/bundled-evaluation.json (and .png, the
# confusion matrix) and puts the scores in the card, where `fernoise models` prints them. Then it
# prints the file's size and `fernoise models`. Refuses a run that has not finished its epochs.
#   scripts/bundle_model.sh results/fer2013-fast ../shared/data/fer2013-trainval.tar.gz
set -eu
RUN=${1:?usage: scripts/bundle_model.sh RUN_DIR [DATA]}
DATA=${2:-}
cd "$(dirname "$0")/.."
OUT=${BUNDLE_OUT:-src/fernoise/weights/fer2013-fast.pt}
mkdir -p "$(dirname "$OUT")"
python - "$RUN" "$OUT" "$DATA" <<'PY'
import json
import sys
import tempfile
from pathlib import Path

from fernoise.checkpoint import load_checkpoint
from fernoise.cli import train_command
from fernoise.evaluate import evaluate_checkpoint, write_evaluation
from fernoise.export import export_checkpoint

run, out, data = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
last = run / "checkpoints" / "last.pt"
checkpoint = load_checkpoint(last, resume=True)
config, rows = checkpoint["config"], checkpoint["metrics"]
if checkpoint["epoch"] != config["epochs"] or not (run / "summary.json").is_file():
    sys.exit(f"{run}: epoch {checkpoint['epoch']} of {config['epochs']} done; bundle a finished run's final model")
card = {
    "name": out.stem,
    "run": str(run),
    "source": "checkpoints/last.pt (the final model)",
    "command": train_command(config, str(run)),
    "final": {key: rows[-1][key] for key in ("epoch", "train_loss", "val_loss", "val_f1", "val_acc") if key in rows[-1]},
}
if data:
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "model.pt"
        export_checkpoint(last, staged, half=True, extra={"card": card})
        scores = evaluate_checkpoint(staged, data, split="val", progress=False)
    scores["checkpoint"] = str(out)
    write_evaluation(scores, run / "bundled-evaluation.json", run / "bundled-evaluation.png")
    keep = ("data", "split", "n", "classes", "accuracy", "macro_f1", "f1", "precision", "recall", "support", "confusion")
    card["evaluation"] = {key: scores[key] for key in keep if key in scores}
    print(json.dumps({key: scores[key] for key in ("data", "split", "n", "accuracy", "macro_f1")}))
source_size, size = export_checkpoint(last, out, half=True, extra={"card": card})
print(f"wrote {out}: {size:,} bytes ({size / 2**20:.1f} MiB), float16, from {last} ({source_size:,} bytes)")
print(f"training command: {card['command']}")
PY
ls -l "$OUT"
if [ -z "${BUNDLE_OUT:-}" ]; then fernoise models; fi
