#!/usr/bin/env bash
# The paper's comparison on the fast FER2013 recipe (issue 25): 5 methods x 3 seeds, PublicTest as
# validation, the fer2013-fast preset at a budget shortened for all methods alike: 30 epochs (about
# 44 min a run on the 2-core Intel Xeon, 11.6 h for the 16 runs) instead of the recipe's 38 (54 min,
# 14.4 h). Periodic noise T = 5 epochs: noisy in epochs 5-9, 15-19 and 25-29 (half the run, three full
# stretches, as T = 3 gave the paper's 20 epochs), clean in the last. Dynamic noise: the preset's own
# Adam for the AutoReLU weights (autorelu_adam_lr 1e-4, the paper's lr), since SGD never moves their
# common weight through zero. Safe to stop and start again: finished runs are reused, a stopped run
# resumes from its checkpoints/last.pt. The first dynamic run goes first (does its noise switch at
# this scale?), then seed 0 of every method, the BatchNorm pair, and seeds 1-2. Validation after every
# epoch, as in the paper's curves, with the mirror image only (the preset's six views every fourth
# epoch would hide the noisy stretches; six views every epoch add about 10 min a run); each final
# model is scored once more with the preset's six views (--final-tta-zoom 0.1, final-evaluation.json,
# right after its run, since checkpoints are not committed), and again with BatchNorm re-estimated on
# 20 clean batches (--final-bn-recalibrate 20, final-evaluation-bnrecal.json): how much of each
# method's final-model difference is the statistics of noisy steps. Meant for the background:
#   nohup scripts/fer2013_fast_grid.sh > fer2013-fast-grid.log 2>&1 &
# with `scripts/commit_runs.sh results/fer2013-fast-grid results/fer2013-fast-bnrecal` beside it.
set -eu
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/fer2013-trainval.tar.gz}
BUDGET=(--config fer2013-fast --epochs 30 --interval 5 --val-every 1 --tta-zoom 0 --final-tta-zoom 0.1 --final-bn-recalibrate 20 --quiet)
GRID=(--data "$DATA" "${BUDGET[@]}" --out results/fer2013-fast-grid)
fernoise reproduce "${GRID[@]}" --methods dynamic --seeds 1
fernoise reproduce "${GRID[@]}" --seeds 1
# How much of periodic noise's effect on validation comes from BatchNorm statistics gathered in
# noisy steps: the same periodic run with them re-estimated on 20 clean batches before each
# evaluation, beside results/fer2013-fast-grid/periodic-seed0.
fernoise reproduce --data "$DATA" "${BUDGET[@]}" --methods periodic --seeds 1 --bn-recalibrate 20 \
  --out results/fer2013-fast-bnrecal
fernoise report results/fer2013-fast-grid/periodic-seed0 results/fer2013-fast-bnrecal/periodic-seed0 \
  --out results/fer2013-fast-bnrecal
fernoise reproduce "${GRID[@]}" --seeds 3
# The report again, with the paper's claims checked beside the paper-protocol grid's (results/fer2013).
fernoise report results/fer2013-fast-grid --beside results/fer2013
echo "GRID DONE"
