#!/usr/bin/env bash
# Creates per second and p99 latency of the service next to the pgbench
# reference (bench/create_job.sql: the same durable work in one prepared
# statement), same machine, same concurrency, same database, alternating
# rounds, and the ratios service / pgbench.
#
#   bench/compare.sh [--concurrency 32] [--subtasks 10] [--duration 15s] [--rounds 3] [--warmup 3s]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

concurrency=32 subtasks=10 duration=15s rounds=3 warmup=3s
while [ $# -gt 0 ]; do
  case "$1" in
    --concurrency) concurrency=$2; shift 2 ;;
    --subtasks) subtasks=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
seconds=${duration%s}

bench_setup
db=bench_compare queue=bench_compare_jobs
fresh_db $db
redis_forget "$queue"
start_service $db $queue redis://127.0.0.1:6379/0

entity_ids="{$(seq -s, -f 'chapter-%g' 0 $((subtasks - 1)))}"

pgbench_round() {
  # Same planner setting as the service's pool (see src/app.rs).
  PGOPTIONS='-c enable_seqscan=off' pgbench "$BASE_URL/$db" -n -M prepared -c "$concurrency" -j 2 \
    -T "$seconds" -D entity_ids="$entity_ids" -f bench/create_job.sql \
    -l --log-prefix "$BENCH_TMP/pgbench" >"$BENCH_TMP/pgbench.out" 2>&1
  local tps p99
  tps=$(awk '/^tps/ {print $3; exit}' "$BENCH_TMP/pgbench.out")
  # Per-transaction log: the third column is the latency in microseconds.
  p99=$(cat "$BENCH_TMP"/pgbench.[0-9]* | awk '{print $3}' | sort -n \
        | awk '{v[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.2f", v[i]/1000}')
  rm -f "$BENCH_TMP"/pgbench.[0-9]*
  echo "${tps%.*} $p99"
}

service_round() {
  "$BIN_DIR/loadgen" --addr "http://127.0.0.1:$GRPC_PORT" --concurrency "$concurrency" \
    --subtasks "$subtasks" --duration "$duration" --warmup "$warmup" >"$BENCH_TMP/loadgen.out"
  local rate p99 errors
  rate=$(awk -F'[= /]' '/^ok=/ {print $4; exit}' "$BENCH_TMP/loadgen.out")
  p99=$(awk '/^latency_ms/ {for (i=1;i<=NF;i++) if ($i ~ /^p99=/) {sub("p99=","",$i); print $i}}' "$BENCH_TMP/loadgen.out")
  errors=$(grep '^errors' "$BENCH_TMP/loadgen.out" | tr '\n' ' ')
  echo "$rate $p99 $errors"
}

printf '%-6s %-22s %-22s %-10s %-10s\n' round "pgbench tx/s, p99 ms" "service /s, p99 ms" "ratio /s" "ratio p99"
for round in $(seq 1 "$rounds"); do
  if [ $((round % 2)) -eq 1 ]; then
    read -r ptps pp99 < <(pgbench_round)
    read -r srate sp99 serr < <(service_round)
  else
    read -r srate sp99 serr < <(service_round)
    read -r ptps pp99 < <(pgbench_round)
  fi
  rt=$(awk -v a="$srate" -v b="$ptps" 'BEGIN {printf "%.2f", a/b}')
  rp=$(awk -v a="$sp99" -v b="$pp99" 'BEGIN {printf "%.2f", a/b}')
  printf '%-6s %-22s %-22s %-10s %-10s %s\n' "$round" "$ptps, $pp99" "$srate, $sp99" "$rt" "$rp" "$serr"
done
echo "concurrency=$concurrency subtasks=$subtasks duration=$duration rounds=$rounds profile=$PROFILE"
redis_forget "$queue"
