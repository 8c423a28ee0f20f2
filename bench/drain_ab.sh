#!/usr/bin/env bash
# The relay drain of two or more builds, alternating run by run, with each
# build's median: a before/after comparison on a machine whose figures drift
# from one run to the next (each run's ratio is against the raw limit
# measured in that same run, see drain.sh).
#
#   bench/drain_ab.sh [--runs 6] [--jobs 100000] LABEL=BINARY ...
#
# For example, the previous commit against the working tree:
#   git worktree add /tmp/before HEAD~1 && (cd /tmp/before && cargo build --release --bin translation-jobs)
#   cargo build --release --bin translation-jobs --bin loadgen
#   bench/drain_ab.sh before=/tmp/before/target/release/translation-jobs after=target/release/translation-jobs
set -euo pipefail
cd "$(dirname "$0")/.."

runs=6 jobs=100000 variants=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    *=*) variants+=("$1"); shift ;;
    *) echo "unknown argument $1 (expected LABEL=BINARY)" >&2; exit 2 ;;
  esac
done
[ "${#variants[@]}" -ge 1 ] || { echo "usage: $0 [--runs N] [--jobs N] LABEL=BINARY ..." >&2; exit 2; }
for variant in "${variants[@]}"; do
  [ -x "${variant#*=}" ] || { echo "not an executable: ${variant#*=}" >&2; exit 2; }
done

results=$(mktemp)
trap 'rm -f "$results"' EXIT
printf '%-8s %4s %9s %9s %6s %8s %8s %8s %8s\n' build run rate/s limit/s ratio service postgres redis total
for run in $(seq 1 "$runs"); do
  for variant in "${variants[@]}"; do
    label=${variant%%=*}
    out=$(SERVICE_BIN=${variant#*=} BENCH_SKIP_BUILD=1 bench/drain.sh --jobs "$jobs" 2>&1) \
      || { echo "$out" >&2; exit 1; }
    echo "$out" | awk -v label="$label" -v run="$run" '
      /^drain_ms=/ { sub(/.* rate=/, ""); sub(/\/s.*/, ""); rate = $0 }
      /^raw_claim_delete=/ { sub(/.* limit=/, ""); sub(/\/s.*/, ""); limit = $0 }
      /^ratio / { sub(/.*=/, ""); ratio = $0 }
      /^cpu_us_per_message/ {
        for (i = 2; i <= NF; i++) { split($i, kv, "="); cpu[kv[1]] = kv[2] }
      }
      END {
        printf "%-8s %4s %9s %9s %6s %8s %8s %8s %8s\n", label, run, rate, limit, ratio,
          cpu["service"], cpu["postgres"], cpu["redis"], cpu["total"]
      }' | tee -a "$results"
  done
done
echo "medians:"
for variant in "${variants[@]}"; do
  label=${variant%%=*}
  awk -v label="$label" '$1 == label' "$results" | python3 -c '
import statistics, sys
rows = [line.split() for line in sys.stdin]
columns = list(zip(*rows))
median = lambda i: statistics.median(float(v) for v in columns[i])
print("%-8s ratio %.2f (%s to %s)  rate %.0f/s  cpu_us_per_message total %.2f (redis %.2f)" % (
    sys.argv[1], median(4), min(columns[4]), max(columns[4]), median(2), median(8), median(7)))
' "$label"
done
