#!/usr/bin/env bash
# Resident memory of the service: idle, at peak load, and holding many
# WatchTranslationJob streams.
#
#   bench/memory.sh [--watchers 1000] [--duration 10s]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

watchers=1000 duration=10s
while [ $# -gt 0 ]; do
  case "$1" in
    --watchers) watchers=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
rss_mib() { awk -v f="$2" '$1 == f":" {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

bench_setup
db=bench_memory queue=bench_memory_jobs
fresh_db $db
redis_forget "$queue"
start_service $db $queue redis://127.0.0.1:6379/0
idle=$(rss_mib "$SERVICE_PID" VmRSS)

"$BIN_DIR/loadgen" --addr "http://127.0.0.1:$GRPC_PORT" --concurrency 64 --duration "$duration" \
  --warmup 0s >"$BENCH_TMP/load.out"
peak=$(rss_mib "$SERVICE_PID" VmHWM)
after_load=$(rss_mib "$SERVICE_PID" VmRSS)

"$BIN_DIR/loadgen" --addr "http://127.0.0.1:$GRPC_PORT" --watchers "$watchers" --duration "$duration" \
  >"$BENCH_TMP/watch.out" &
watch=$!
for _ in $(seq 1 600); do grep -q open "$BENCH_TMP/watch.out" 2>/dev/null && break; sleep 0.1; done
grep -q open "$BENCH_TMP/watch.out" || { echo "watch streams did not open" >&2; cat "$BENCH_TMP/watch.out" >&2; exit 1; }
with_watchers=$(rss_mib "$SERVICE_PID" VmRSS)
wait "$watch"
redis_forget "$queue"

echo "load: $(grep -E '^ok=' "$BENCH_TMP/load.out")"
echo "rss_mib idle=$idle peak_under_load=$peak after_load=$after_load with_${watchers}_watch_streams=$with_watchers"
