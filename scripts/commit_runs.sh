#!/usr/bin/env bash
# Commit the small files of every finished run under the given results folders (config.yaml,
# metrics.csv, summary.json, final-evaluation.json and final-evaluation-bnrecal.json where reproduce
# --final-tta-zoom / --final-bn-recalibrate wrote them, and a
# dynamic run's AutoReLU trace), never checkpoints or TensorBoard events, and each folder's report
# files once written. Loops every $EVERY seconds (default 300)
# until killed, so that a grid running beside it loses at most its current run when the machine
# goes away; EVERY=0 commits once and stops.
#   scripts/commit_runs.sh results/fer2013 results/fer2013-bnrecal
set -u
shopt -s nullglob  # a pattern that matches nothing (a report without figures) drops out, not fails git add
cd "$(dirname "$0")/.."
EVERY=${EVERY:-300}

commit() {  # message, then paths: commit only these paths, whatever else is staged
  local message=$1; shift
  [ $# -gt 0 ] || return 0
  if ! git add -- "$@"; then
    echo "commit_runs.sh: cannot add $*; not committed" >&2
    return 1
  fi
  if ! git diff --cached --quiet -- "$@"; then
    git commit -q -m "$message" -- "$@" && echo "$message"
  fi
}

commit_folder() {
  local root=$1 run name files
  for run in "$root"/*/; do
    [ -f "$run/summary.json" ] || continue
    files=()
    for name in config.yaml metrics.csv summary.json final-evaluation.json final-evaluation-bnrecal.json \
                autorelu_trace.csv autorelu_trace.json autorelu_trace.png; do
      [ -f "$run$name" ] && files+=("$run$name")
    done
    commit "results: $(basename "$run") finished" "${files[@]}"
  done
  if [ -f "$root/report.md" ]; then
    commit "results: $root report" "$root"/*.md "$root"/*.csv "$root"/*.png
  fi
}

while true; do
  for root in "$@"; do
    commit_folder "$root"
  done
  [ "$EVERY" = 0 ] && break
  sleep "$EVERY"
done
