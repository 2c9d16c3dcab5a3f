#!/usr/bin/env bash
# Does the 20-epoch length hide a gain from periodic noise? A one-seed pilot: seed 0 of the
# baseline, periodic, dropout and dropout+periodic runs of results/fer2013 trained on from epoch 20
# to $EPOCHS (default 38, so that the run ends, like the 20-epoch one, after a clean stretch:
# with T = 3 the noisy epochs are 3-5, 9-11, ..., 33-35). The fer2013-paper preset keeps the
# learning rate constant and a resumed run continues bit for bit on the CPU, so each is exactly a
# run of $EPOCHS epochs. Needs the 20-epoch runs' checkpoints/last.pt (copied, never moved).
#   nohup scripts/fer2013_longer.sh > fer2013-longer.log 2>&1 &
#   nohup scripts/commit_runs.sh results/fer2013-38ep > commit_runs.log 2>&1 &
set -eu
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-38}
OUT=results/fer2013-${EPOCHS}ep
mkdir -p "$OUT"
for run in baseline-seed0 periodic-seed0 dropout-seed0 dropout+periodic-seed0; do
  if [ ! -d "$OUT/$run" ]; then
    # config and checkpoints only: metrics and summary are rewritten from last.pt, and a summary.json
    # appears only when the longer run is done (scripts/commit_runs.sh commits it then)
    rm -rf "$OUT/.$run.partial"
    mkdir "$OUT/.$run.partial"
    cp -r "results/fer2013/$run/config.yaml" "results/fer2013/$run/checkpoints" "$OUT/.$run.partial/"
    mv "$OUT/.$run.partial" "$OUT/$run"
  fi
  echo "[$run] to $EPOCHS epochs"
  fernoise train --resume "$OUT/$run" --epochs "$EPOCHS" --quiet
done
fernoise report "$OUT" --out "$OUT"
echo "LONGER DONE"
