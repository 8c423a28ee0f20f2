#!/usr/bin/env bash
# Every figure of BENCHMARKS.md in one go, for a quiet machine: builds the
# release binaries once, then runs each script with the parameters the
# document quotes, and writes everything to bench-results-<time>.txt (not
# committed). About 45 minutes on 2 cores.
#
#   bench/all.sh [OUTPUT_FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-results-$(date +%Y%m%d-%H%M%S).txt}
cargo build --locked --release --bin translation-jobs --bin loadgen >&2
export BENCH_SKIP_BUILD=1

run() {
  printf '\n$ %s\n' "$*" | tee -a "$out"
  "$@" 2>&1 | tee -a "$out"
}
{ echo "# bench/all.sh on $(hostname) at $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD)"; nproc; uptime; } | tee "$out"
run bench/compare.sh --rounds 3 --duration 15s
run bench/side_by_side.sh --rounds 3 --duration 15s
for claimers in 1 2 1 2 1 2; do
  run bench/drain.sh --jobs 100000 RELAY_CLAIMERS=$claimers
done
for scheduled in 0 20000 0 20000 0 20000; do
  run bench/drain.sh --jobs 100000 --scheduled $scheduled
done
run bench/push_script.sh
run bench/cpu_split.sh
run bench/cpu_split.sh CREATE_GROUP_MAX_JOBS=1
run bench/scale.sh
run bench/latency.sh --rate 1300 --duration 15s
run bench/outage.sh --rate 1200
run bench/memory.sh --watchers 10000
run bench/retention.sh
run bench/notify.sh --rounds 5
run bench/statements.sh
echo "results in $out" >&2
