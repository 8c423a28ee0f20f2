#!/usr/bin/env bash
# How creates and the relay scale with the size of a job and the number of
# callers: for every pair of subtasks per job (1, 10, 100, 1000) and callers
# (1, 8, 32, 128), the pgbench reference with the same shape (one job per
# commit), then the service over gRPC with the load generator's consumer
# popping every message: creates/s and p99, messages the relay published per
# second and the commit-to-Redis p99 (the relay keeping up with that load).
#
#   bench/scale.sh [--subtasks "1 10 100 1000"] [--callers "1 8 32 128"] [--duration 10s]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

subtask_list="1 10 100 1000" caller_list="1 8 32 128" duration=10s warmup=2s
while [ $# -gt 0 ]; do
  case "$1" in
    --subtasks) subtask_list=$2; shift 2 ;;
    --callers) caller_list=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done

bench_setup
db=bench_scale queue=bench_scale_jobs
fresh_db $db
redis_forget "$queue"
start_service $db $queue redis://127.0.0.1:6379/0
# pgbench holds one connection per client: stay under max_connections with
# room for everyone else on the server.
max_clients=$(( $(psql "$BASE_URL/$db" -qtAc "SHOW max_connections") - 36 ))

printf '%-8s %-7s %-20s %-20s %-12s %-22s %s\n' subtasks callers "pgbench /s, p99" "gRPC /s, p99" \
  "ratio /s,p99" "relay /s, to-Redis p99" "errors, missing, duplicates"
for subtasks in $subtask_list; do
  for callers in $caller_list; do
    clients=$(( callers < max_clients ? callers : max_clients ))
    read -r ptps pp99 < <(pgbench_round $db "$clients" "$duration" "$subtasks")
    read -r grate gp99 gerr < <(grpc_round "$GRPC_PORT" "$callers" "$duration" "$warmup" "$subtasks" \
      --consume --queue "$queue")
    visible=$(awk -F'[= ]' '/^visible=/ {print $2}' "$BENCH_TMP/loadgen.out")
    missing=$(awk -F'[= ]' '/^visible=/ {print $4}' "$BENCH_TMP/loadgen.out")
    duplicates=$(awk -F'[= ]' '/^visible=/ {print $6}' "$BENCH_TMP/loadgen.out")
    to_redis=$(awk '/^commit_to_redis_ms/ {for (i=1;i<=NF;i++) if ($i ~ /^p99=/) {sub("p99=","",$i); print $i}}' "$BENCH_TMP/loadgen.out")
    relay_rate=$(awk -v n="${visible:-0}" -v d="${duration%s}" 'BEGIN {printf "%d", n / d}')
    ref="$ptps, $pp99"; [ "$clients" -lt "$callers" ] && ref="$ref ($clients conn)"
    printf '%-8s %-7s %-20s %-20s %-12s %-22s %s\n' "$subtasks" "$callers" "$ref" "$grate, $gp99" \
      "$(ratio "$grate" "$ptps"), $(ratio "$gp99" "$pp99")" "$relay_rate, $to_redis" "$gerr, $missing, $duplicates"
    redis_forget "$queue"
  done
done
echo "duration=$duration warmup=$warmup profile=$PROFILE"
redis_forget "$queue"
