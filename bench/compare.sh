#!/usr/bin/env bash
# Creates per second and p99 latency of the service, over gRPC (loadgen) and
# over HTTP JSON (wrk), next to the pgbench reference (bench/create_job.sql:
# the same durable work in one prepared statement, one job per commit), same
# machine, same concurrency, same database, alternating rounds, and the
# ratios service / pgbench.
#
# Each round also runs the batched limit (bench/create_batch.sql: 32 jobs per
# statement and commit, 2 clients) and prints the service's share of it.
#
#   bench/compare.sh [--concurrency 32] [--subtasks 10] [--duration 15s] [--rounds 3] [--warmup 3s]
#                    [--no-http] [VAR=VALUE ...]      # extra settings for the service
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

concurrency=32 subtasks=10 duration=15s rounds=3 warmup=3s http=1 service_env=()
while [ $# -gt 0 ]; do
  case "$1" in
    --concurrency) concurrency=$2; shift 2 ;;
    --subtasks) subtasks=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --no-http) http=0; shift ;;
    *=*) service_env+=("$1"); shift ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done

bench_setup
[ "$http" = 1 ] && ensure_wrk
db=${BENCH_PREFIX:-bench_}compare queue=${BENCH_PREFIX:-bench_}compare_jobs
fresh_db $db
redis_forget "$queue"
start_service $db $queue redis://127.0.0.1:6379/0 "${service_env[@]}"
wrk_script "$subtasks" "$BENCH_TMP/create.lua"

printf '%-6s %-18s %-18s %-18s %-12s %-12s %-10s %-14s %s\n' round "pgbench /s, p99" "gRPC /s, p99" "HTTP /s, p99" \
  "gRPC ratio" "HTTP ratio" "batched /s" "gRPC, HTTP of it" "(ratio: rate, p99; batched: bench/create_batch.sql)"
for round in $(seq 1 "$rounds"); do
  ref() { read -r ptps pp99 < <(pgbench_round $db "$concurrency" "$duration" "$subtasks"); }
  grpc() { read -r grate gp99 gerr < <(grpc_round "$GRPC_PORT" "$concurrency" "$duration" "$warmup" "$subtasks"); }
  web() { if [ "$http" = 1 ]; then read -r hrate hp99 hbad < <(http_round "$HTTP_PORT" "$concurrency" "$duration" "$BENCH_TMP/create.lua"); else hrate=0 hp99=0 hbad=-; fi; }
  batched() { brate=$(batched_round $db "$duration" "$subtasks"); }
  if [ $((round % 2)) -eq 1 ]; then ref; grpc; web; batched; else batched; web; grpc; ref; fi
  printf '%-6s %-18s %-18s %-18s %-12s %-12s %-10s %-14s %s\n' "$round" "$ptps, $pp99" "$grate, $gp99" "$hrate, $hp99" \
    "$(ratio "$grate" "$ptps"), $(ratio "$gp99" "$pp99")" "$(ratio "$hrate" "$ptps"), $(ratio "$hp99" "$pp99")" \
    "$brate" "$(ratio "$grate" "$brate"), $(ratio "$hrate" "$brate")" "grpc $gerr http $hbad"
done
echo "concurrency=$concurrency subtasks=$subtasks duration=$duration rounds=$rounds profile=$PROFILE QUEUE_MAX_BACKLOG=$BENCH_QUEUE_MAX_BACKLOG ${service_env[*]}"
redis_forget "$queue"
