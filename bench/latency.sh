#!/usr/bin/env bash
# Commit-to-Redis latency at a steady rate (open loop): how long a job takes
# from its create answer to being popped by a consumer, with the service's
# relay doing the publishing.
#
#   bench/latency.sh [--rate 1200] [--duration 15s] [VAR=VALUE ...]   # extra settings for the service
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

rate=1200 duration=15s service_env=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) rate=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    *=*) service_env+=("$1"); shift ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done

bench_setup
db=bench_latency queue=bench_latency_jobs
fresh_db $db
redis_forget "$queue"
start_service $db $queue redis://127.0.0.1:6379/0 "${service_env[@]}"
"$BIN_DIR/loadgen" --addr "http://127.0.0.1:$GRPC_PORT" --rate "$rate" --concurrency 64 \
  --subtasks 10 --warmup 2s --duration "$duration" --consume --queue "$queue"
redis_forget "$queue"
