#!/usr/bin/env bash
# Creates per second and p99 latency of the service next to the pgbench
# reference (bench/create_job.sql), same machine, same concurrency, same
# database, alternating rounds, and the ratios service / pgbench.
#
#   bench/compare.sh [--concurrency 32] [--subtasks 10] [--duration 15s] [--rounds 3]
#
# Needs a release build (it makes one) and PostgreSQL and Redis (it starts
# them through scripts/services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

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

server_url=$(scripts/services.sh | tail -n 1)
cargo build --release --locked --bin translation-jobs --bin loadgen >&2

db=bench_compare
queue=bench_compare_jobs
base=${server_url%/*}
psql "$server_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
redis-cli del "$queue" "$queue:high" "$queue:low" >/dev/null

grpc_port=50071 http_port=8071
DATABASE_URL="$base/$db" REDIS_URL=redis://127.0.0.1:6379/0 TRANSLATION_QUEUE=$queue \
  GRPC_ADDR=127.0.0.1:$grpc_port HTTP_ADDR=127.0.0.1:$http_port QUEUE_MAX_BACKLOG=0 \
  DATABASE_POOL_SIZE=${DATABASE_POOL_SIZE:-16} LOG_FORMAT=json RUST_LOG=warn \
  target/release/translation-jobs >/tmp/bench-compare-service.log 2>&1 &
service=$!
trap 'kill -TERM $service 2>/dev/null; wait $service 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

entity_ids="{$(seq -s, -f 'chapter-%g' 0 $((subtasks - 1)))}"
logdir=$(mktemp -d)

pgbench_round() {
  # Same planner setting as the service's pool (see src/app.rs).
  PGOPTIONS='-c enable_seqscan=off' pgbench "$base/$db" -n -M prepared -c "$concurrency" -j 2 \
    -T "$seconds" -D entity_ids="$entity_ids" -f bench/create_job.sql \
    -l --log-prefix "$logdir/pgbench" >"$logdir/pgbench.out" 2>&1
  tps=$(awk '/^tps/ {print $3; exit}' "$logdir/pgbench.out")
  # Per-transaction log: the third column is the latency in microseconds.
  p99=$(cat "$logdir"/pgbench.* | awk '{print $3}' | sort -n | awk '{v[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.2f", v[i]/1000}')
  rm -f "$logdir"/pgbench.[0-9]*
  echo "$tps $p99"
}

service_round() {
  target/release/loadgen --addr "http://127.0.0.1:$grpc_port" --concurrency "$concurrency" \
    --subtasks "$subtasks" --duration "$duration" --warmup "$warmup" >"$logdir/loadgen.out"
  rate=$(awk -F'[= /]' '/^ok=/ {print $4; exit}' "$logdir/loadgen.out")
  p99=$(awk '/^latency_ms/ {for (i=1;i<=NF;i++) if ($i ~ /^p99=/) {sub("p99=","",$i); print $i}}' "$logdir/loadgen.out")
  errors=$(awk -F= '/^errors/ {print $0}' "$logdir/loadgen.out" | tr '\n' ' ')
  echo "$rate $p99 $errors"
}

printf '%-6s %-18s %-18s %-10s %-10s\n' round "pgbench tps/p99ms" "service /s / p99ms" "ratio tps" "ratio p99"
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
  printf '%-6s %-18s %-18s %-10s %-10s %s\n' "$round" "${ptps%.*}/$pp99" "$srate/$sp99" "$rt" "$rp" "$serr"
done
echo "concurrency=$concurrency subtasks=$subtasks duration=$duration rounds=$rounds"
rm -rf "$logdir"
redis-cli del "$queue" "$queue:high" "$queue:low" >/dev/null
