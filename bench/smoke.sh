#!/usr/bin/env bash
# CI's check that the benchmarks still work: each script once, tiny, on the
# dev build the tests already made. Figures from here mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROFILE=dev BENCH_SKIP_BUILD=1
out=$(mktemp)
trap 'rm -f "$out"' EXIT

check() {
  local expect=$1; shift
  "$@" >"$out"
  cat "$out"
  grep -qE "$expect" "$out" || { echo "smoke: '$*' printed no line matching $expect" >&2; exit 1; }
}
check '^1 ' bench/compare.sh --duration 2s --rounds 1 --warmup 0s --concurrency 4
check '^ratio' bench/drain.sh --jobs 2000 --batch 500 --scheduled 100
check 'lost=0 duplicated=0' bench/outage.sh --rate 100 --before 2 --down 2 --after 3
check 'per_stream_kib' bench/memory.sh --watchers 50 --duration 2s
check '^commit_to_redis_ms' bench/latency.sh --rate 100 --duration 2s
check '^1 +grpc' bench/side_by_side.sh --rounds 1 --duration 2s --concurrency 4
check '^1 +1 ' bench/scale.sh --subtasks 1 --callers 1 --duration 2s --warmup 0s
check '^push.lua, a retried batch' bench/push_script.sh --rounds 2
check '^after +ratio' bench/drain_ab.sh --runs 1 --jobs 2000 before="$PWD/target/debug/translation-jobs" after="$PWD/target/debug/translation-jobs"
check 'retention: [0-9]+ jobs deleted' bench/retention.sh --jobs 20000 --rounds 1 --duration 2s --drain-jobs 2000
check '^median ratio to off' bench/notify.sh --rounds 1 --duration 2s --jobs 500
check '^  reaper pass \(lost\)' env BENCH_REAPER_SECONDS=2 bench/statements.sh --jobs 20000 --outbox 2000 --calls 10
echo "benchmark smoke run ok: 12 scripts"
