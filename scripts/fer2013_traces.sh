#!/usr/bin/env bash
# AutoReLU traces on the full FER2013 training set under the paper's protocol (fer2013-paper preset:
# ResNet-18 from scratch, Adam lr 1e-4, weight decay 1e-4, batch 64, 48x48, flip), 3 epochs each,
# written to results/autorelu-traces/. Finished runs are reused and stopped ones resumed, so running
# it again continues where it stopped. Usage: scripts/fer2013_traces.sh [ARCHIVE]
set -u
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/fer2013-trainval.tar.gz}
OUT=results/autorelu-traces
trace() {  # name, then options
  local name=$1; shift
  fernoise trace-autorelu --data "$DATA" --config fer2013-paper --epochs 3 --quiet --out "$OUT/$name" "$@" \
    || echo "FAILED: $name"
}
for init in 0.1 0.01 0.001; do
  trace "autograd-init$init-seed0" --autorelu-grad autograd --autorelu-init "$init"
done
for init in 0.01 0.001; do
  trace "autograd-init$init-seed1" --autorelu-grad autograd --autorelu-init "$init" --seed 1
done
trace autograd-init0.001-seed0-bf16 --autorelu-grad autograd --autorelu-init 0.001 --precision bf16
for init in 0.1 0.01 0.001; do
  trace "exact-init$init-seed0" --autorelu-grad exact --autorelu-init "$init"
done
# One weight per AutoReLU unit (8) instead of per channel (1,920): the mean reset averages fewer
# Adam steps, so the common weight moves further per step.
for seed in 0 1; do
  trace "autograd-init0.01-seed$seed-perunit" --autorelu-grad autograd --autorelu-init 0.01 --seed "$seed" \
    --no-autorelu-per-channel
done
echo ALL DONE
