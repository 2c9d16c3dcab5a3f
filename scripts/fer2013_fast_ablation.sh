#!/usr/bin/env bash
# What each ingredient of the fast FER2013 recipe buys (issue 24), at a proxy budget: the fer2013-fast
# preset shortened to 10 epochs (1 warm-up epoch), seed 0, then the same with one ingredient taken
# out at a time. The weight average and the test-time views cost no training: they are measured on
# the full-budget runs by scripts/final_model_views.py. Safe to stop and start again: a finished run
# is kept, a stopped one resumed. Meant for the background, one job at a time on the 2-core machine:
#   nohup scripts/fer2013_fast_ablation.sh > fast-ablation.log 2>&1 &
#   EVERY=0 scripts/commit_runs.sh results/fer2013-fast-ablation   # after each run
set -eu
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/fer2013-trainval.tar.gz}
OUT=results/fer2013-fast-ablation

run() {  # name, then the flags that differ from the shortened recipe
  local name=$1 dir=$OUT/$1
  shift
  if [ -f "$dir/summary.json" ]; then return; fi
  if [ -f "$dir/checkpoints/last.pt" ]; then
    fernoise train --resume "$dir" --quiet
  else
    fernoise train --config fer2013-fast --data "$DATA" --epochs 10 --warmup-epochs 1 --out "$dir" --quiet "$@"
  fi
  echo "DONE $name"
}

run recipe
run no-augmentation --augment paper                                   # flip only, the paper's
run fer-augmentation --augment fer                                    # more: rotation, photometry, erasing
run no-label-smoothing --label-smoothing 0
run adam-onecycle --optimizer adam --no-nesterov --lr 2e-3 --weight-decay 1e-4
run no-schedule --optimizer adam --no-nesterov --lr 1e-4 --weight-decay 1e-4 --scheduler none   # the paper's
run resnet18-imagenet-stem --stem imagenet --width 64                 # the paper's network
echo "ABLATION DONE"
