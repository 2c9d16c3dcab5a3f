#!/usr/bin/env bash
# Commit the small files of every finished run under a results folder (config.yaml, metrics.csv,
# summary.json, and a dynamic run's AutoReLU trace), never checkpoints or TensorBoard events, and
# the folder's report files when present. Loops every few minutes until killed, so that a grid
# running beside it loses at most its current run when the machine goes away.
#   scripts/commit_runs.sh results/fer2013 [seconds]
set -u
cd "$(dirname "$0")/.."
ROOT=$1
EVERY=${2:-300}
while true; do
  for run in "$ROOT"/*/; do
    [ -f "$run/summary.json" ] || continue
    files=()
    for name in config.yaml metrics.csv summary.json autorelu_trace.csv autorelu_trace.json autorelu_trace.png; do
      [ -f "$run/$name" ] && files+=("$run$name")
    done
    git add -- "${files[@]}" 2>/dev/null || continue
    if ! git diff --cached --quiet -- "${files[@]}"; then
      git commit -q -m "results: $(basename "$run") finished" -- "${files[@]}" && echo "committed $run"
    fi
  done
  for name in report.md table1.md table1.csv; do
    if [ -f "$ROOT/$name" ]; then
      git add -- "$ROOT"/*.md "$ROOT"/*.csv "$ROOT"/*.png 2>/dev/null
      git diff --cached --quiet -- "$ROOT"/*.md "$ROOT"/*.csv "$ROOT"/*.png \
        || git commit -q -m "results: $ROOT report" -- "$ROOT"/*.md "$ROOT"/*.csv "$ROOT"/*.png
      break
    fi
  done
  sleep "$EVERY"
done
