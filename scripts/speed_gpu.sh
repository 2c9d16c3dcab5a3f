#!/usr/bin/env bash
# Issues 2 and 5 on a GPU, in one pass of about 8 minutes on an H100/H200:
# the captured-step tests, the noise overhead, end-to-end throughput against the naive
# pipeline and the model-only bound, and the grid one-after-another vs concurrent.
# Usage (from the repository root; no install needed):
#   scripts/speed_gpu.sh [ARCHIVE] [OUT]
# On the lent device machine, with the archive carried in the ignored folder .data/:
#   run(command="scripts/speed_gpu.sh .data/fer2013-trainval.tar.gz $OUT", carry=[".data"])
set -uo pipefail
DATA=${1:-../shared/data/fer2013-trainval.tar.gz}
OUT=${2:-/tmp/speed-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export FERNOISE_CACHE=${FERNOISE_CACHE:-/tmp/fernoise-cache}
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"; } \
  2>&1 | tee "$OUT/machine.txt"
step() { local name=$1; shift; echo "== $name: $*"; timeout "${LIMIT:-200}" "$@" 2>&1 | tee "$OUT/$name.txt"; }
step tests python3 -m pytest -q -p no:cacheprovider tests/test_fastpath.py tests/test_noise.py
LIMIT=120 step noise_overhead python3 benchmarks/noise_overhead.py --device cuda --repeats 200
step bench_train python3 benchmarks/bench_train.py --data "$DATA" --images 16384 --device cuda
LIMIT=240 step bench_grid python3 benchmarks/bench_grid.py --data "$DATA" --config fer2013-paper --jobs 5 \
  --seeds 1 --epochs 2 --train-limit 8192 --fast
