#!/usr/bin/env bash
# Where the CPU goes per create, in CPU microseconds per job (figures that
# hold on a busy machine, unlike rates): the pgbench reference (its
# PostgreSQL backends, pgbench itself), then the service over gRPC (the
# service's threads, the PostgreSQL backends of its pool, Redis, the load
# generator). CPU times come from /proc/<pid>/task/*/schedstat over the
# middle of each run.
#
#   bench/cpu_split.sh [--concurrency 32] [--subtasks 10] [--duration 10s] [VAR=VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

concurrency=32 subtasks=10 duration=10s service_env=()
while [ $# -gt 0 ]; do
  case "$1" in
    --concurrency) concurrency=$2; shift 2 ;;
    --subtasks) subtasks=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    *=*) service_env+=("$1"); shift ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
seconds=${duration%s}
[ "$seconds" -ge 6 ] || { echo "--duration must be at least 6s" >&2; exit 2; }

bench_setup
db=bench_cpu queue=bench_cpu_jobs
fresh_db $db
redis_forget "$queue"
start_service $db $queue redis://127.0.0.1:6379/0 "${service_env[@]}"

cpu_ns() { local t=0 pid; for pid in "$@"; do t=$(( t + $(cat /proc/"$pid"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {print s + 0}') )); done; echo $t; }
backends() { psql "$BASE_URL/$db" -qtAc "SELECT pid FROM pg_stat_activity WHERE datname = '$db' AND pid <> pg_backend_pid()" | tr '\n' ' '; }
jobs() { psql "$BASE_URL/$db" -qtAc "SELECT count(*) FROM translation_jobs"; }
redis_pid=$(pgrep -x redis-server | head -1)

# From 1 s into a run until 3 s before its end (reading /proc and asking the
# database take a moment on a busy machine).
measure() { # measure LABEL CLIENT_PID: prints CPU us per job of the backends, the client, the service and Redis
  local label=$1 client=$2 pg b0 b1 s0 s1 r0 r1 c0 c1 j0 j1
  sleep 1
  pg=$(backends)
  b0=$(cpu_ns $pg) c0=$(cpu_ns "$client") s0=$(cpu_ns "$SERVICE_PID") r0=$(cpu_ns $redis_pid) j0=$(jobs)
  sleep $((seconds - 4))
  b1=$(cpu_ns $pg) c1=$(cpu_ns "$client") s1=$(cpu_ns "$SERVICE_PID") r1=$(cpu_ns $redis_pid) j1=$(jobs)
  awk -v l="$label" -v b=$((b1 - b0)) -v c=$((c1 - c0)) -v s=$((s1 - s0)) -v r=$((r1 - r0)) -v n=$((j1 - j0)) 'BEGIN {
    if (n < 1) n = 1
    printf "%-10s jobs=%d cpu_us_per_job postgres=%.1f client=%.1f service=%.1f redis=%.1f total=%.1f\n",
      l, n, b / n / 1000, c / n / 1000, s / n / 1000, r / n / 1000, (b + c + s + r) / n / 1000 }'
}

PGOPTIONS='-c enable_seqscan=off' pgbench "$BASE_URL/$db" -n -M prepared -c "$concurrency" -j 2 -T "$seconds" \
  -D entity_ids="$(entity_ids_array "$subtasks")" -f bench/create_job.sql >"$BENCH_TMP/pgbench.out" 2>&1 &
client=$!
# The service is idle meanwhile; its and Redis's share is near zero here.
measure pgbench "$client"
wait "$client"

"$BIN_DIR/loadgen" --addr "http://127.0.0.1:$GRPC_PORT" --concurrency "$concurrency" --subtasks "$subtasks" \
  --duration "$duration" --warmup 0s >"$BENCH_TMP/load.out" &
client=$!
measure service "$client"
wait "$client"
grep -E '^(ok|latency_ms)' "$BENCH_TMP/load.out"
echo "concurrency=$concurrency subtasks=$subtasks duration=$duration profile=$PROFILE ${service_env[*]}"
redis_forget "$queue"
