#!/usr/bin/env bash
# Resident memory of the service: each kind of watch stream on a fresh
# process (WatchTranslationJob streams over gRPC, then server-sent event
# streams over HTTP/1.1, one connection each, then server-sent event
# streams over HTTP/2, sharing connections as gRPC's do), so that no allocator
# high-water mark from earlier work hides the streams' own cost; then, on
# another fresh process, idle, at peak load and after it.
#
#   bench/memory.sh [--watchers 10000] [--duration 10s]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

watchers=10000 duration=10s
while [ $# -gt 0 ]; do
  case "$1" in
    --watchers) watchers=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
rss_mib() { awk -v f="$2" '$1 == f":" {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
# Each SSE stream holds a socket in the service and one in loadgen.
need_fds=$((watchers + 256))
if [ "$(ulimit -n)" -lt "$need_fds" ]; then
  ulimit -n "$need_fds" 2>/dev/null || {
    echo "bench/memory.sh: --watchers $watchers needs $need_fds open files (ulimit -n is $(ulimit -n))" >&2
    exit 1
  }
fi

bench_setup
db=bench_memory queue=bench_memory_jobs
fresh_db $db
redis_forget "$queue"

# streams KIND LOADGEN_FLAGS...: a fresh service, its RSS idle, then with
# $watchers streams of one kind open; prints one line.
streams() {
  local kind=$1 idle with; shift
  start_service $db $queue redis://127.0.0.1:6379/0 MAX_WATCH_STREAMS=$((watchers + 1))
  sleep 1
  idle=$(rss_mib "$SERVICE_PID" VmRSS)
  "$BIN_DIR/loadgen" --addr "http://127.0.0.1:$GRPC_PORT" --http-addr "127.0.0.1:$HTTP_PORT" --concurrency 256 \
    "$@" --duration "$duration" >"$BENCH_TMP/watch.out" 2>&1 &
  local watch=$!
  for _ in $(seq 1 1800); do
    grep -q open "$BENCH_TMP/watch.out" 2>/dev/null && break
    kill -0 $watch 2>/dev/null || break
    sleep 0.1
  done
  grep -q open "$BENCH_TMP/watch.out" || {
    echo "$kind streams did not open" >&2; cat "$BENCH_TMP/watch.out" >&2; exit 1
  }
  with=$(rss_mib "$SERVICE_PID" VmRSS)
  wait "$watch"
  stop_service
  awk -v k="$kind" -v n="$watchers" -v i="$idle" -v w="$with" 'BEGIN {
    printf "%s: rss_mib fresh=%.1f with_%d_streams=%.1f per_stream_kib=%.1f\n", k, i, n, w, (w - i) * 1024 / n }'
}
streams grpc --watchers "$watchers"
streams sse_http1 --sse-watchers "$watchers"
streams sse_http2 --sse-watchers "$watchers" --sse-http2

start_service $db $queue redis://127.0.0.1:6379/0
idle=$(rss_mib "$SERVICE_PID" VmRSS)
"$BIN_DIR/loadgen" --addr "http://127.0.0.1:$GRPC_PORT" --concurrency 64 --duration "$duration" \
  --warmup 0s >"$BENCH_TMP/load.out"
peak=$(rss_mib "$SERVICE_PID" VmHWM)
after_load=$(rss_mib "$SERVICE_PID" VmRSS)
stop_service
redis_forget "$queue"

echo "load: $(grep -E '^ok=' "$BENCH_TMP/load.out")"
echo "rss_mib idle=$idle peak_under_load=$peak after_load=$after_load"
