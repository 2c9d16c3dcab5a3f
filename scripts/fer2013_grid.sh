#!/usr/bin/env bash
# The paper's comparison on the full FER2013 training set (issue 14): 5 methods x 3 seeds x 20 epochs,
# PublicTest as validation, the fer2013-paper preset (fp32). Safe to stop and start again at any time:
# finished runs are reused (from config.yaml, metrics.csv and summary.json alone) and a stopped run
# resumes from its checkpoints/last.pt. The first dynamic run goes first, since it is also the
# 20-epoch AutoReLU trace of RESULTS.md; then seed 0 of every method, the BatchNorm pair, and
# seeds 1-2. Meant for the background:
#   nohup scripts/fer2013_grid.sh > fer2013-grid.log 2>&1 &
# and `scripts/commit_runs.sh results/fer2013 results/fer2013-bnrecal` beside it commits each run's
# small files as soon as it finishes.
set -eu
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/fer2013-trainval.tar.gz}
GRID=(--data "$DATA" --config fer2013-paper --epochs 20 --out results/fer2013 --quiet)
fernoise reproduce "${GRID[@]}" --methods dynamic --seeds 1
fernoise reproduce "${GRID[@]}" --seeds 1
# How much of the validation drop in noisy epochs comes from BatchNorm statistics: periodic with
# the statistics re-estimated on 20 clean training batches before each evaluation (seed 0), to set
# beside results/fer2013/periodic-seed0.
fernoise reproduce --data "$DATA" --config fer2013-paper --epochs 20 --quiet --methods periodic --seeds 1 \
  --bn-recalibrate 20 --out results/fer2013-bnrecal
fernoise report results/fer2013/periodic-seed0 results/fer2013-bnrecal/periodic-seed0 --out results/fer2013-bnrecal
fernoise reproduce "${GRID[@]}" --seeds 3
echo "GRID DONE"
