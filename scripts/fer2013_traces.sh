#!/usr/bin/env bash
# Issue 13: AutoReLU traces on full FER2013, the paper's protocol (fer2013-paper preset), 3 epochs each.
cd /work/main
D=../shared/data/fer2013-trainval.tar.gz
T="fernoise trace-autorelu --data $D --config fer2013-paper --epochs 3 --quiet"
for grad in autograd exact; do
  for init in 0.1 0.01 0.001; do
    $T --autorelu-grad $grad --autorelu-init $init --out results/autorelu-traces/$grad-init$init-seed0
  done
done
for init in 0.01 0.001; do
  $T --autorelu-grad autograd --autorelu-init $init --seed 1 --out results/autorelu-traces/autograd-init$init-seed1
done
$T --autorelu-grad autograd --autorelu-init 0.001 --precision bf16 --out results/autorelu-traces/autograd-init0.001-seed0-bf16
echo ALL DONE
