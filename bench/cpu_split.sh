#!/usr/bin/env bash
# Where the CPU goes during a closed-loop create run: CPU seconds used by
# the service, the load generator, PostgreSQL (all its processes) and Redis,
# from /proc, over the same run. On a 2-core machine they all share two
# cores, so this is the profile that bounds creates per second.
#
#   bench/cpu_split.sh [--concurrency 32] [--duration 15s]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

concurrency=32 duration=15s
while [ $# -gt 0 ]; do
  case "$1" in
    --concurrency) concurrency=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done

# CPU ticks (user + system) of every process whose command name matches.
ticks() { # ticks NAME_REGEX
  local total=0 pid t
  for pid in $(pgrep -f "$1" || true); do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "$total"
}
ticks_pid() { awk '{print $14 + $15}' "/proc/$1/stat"; }

bench_setup
db=bench_cpu queue=bench_cpu_jobs
fresh_db $db
redis_forget "$queue"
start_service $db $queue redis://127.0.0.1:6379/0
hz=$(getconf CLK_TCK)

s0=$(ticks_pid "$SERVICE_PID"); p0=$(ticks '^postgres'); r0=$(ticks '^redis-server')
started=$(now_ms)
# bash's time keyword gives the load generator's own user and system time.
( TIMEFORMAT='%U %S'; time "$BIN_DIR/loadgen" --addr "http://127.0.0.1:$GRPC_PORT" \
    --concurrency "$concurrency" --duration "$duration" --warmup 0s >"$BENCH_TMP/load.out" ) \
  2>"$BENCH_TMP/load.time"
elapsed_ms=$(( $(now_ms) - started ))
s1=$(ticks_pid "$SERVICE_PID"); p1=$(ticks '^postgres'); r1=$(ticks '^redis-server')
read -r lu ls < "$BENCH_TMP/load.time"
cat "$BENCH_TMP/load.out"
awk -v s=$((s1 - s0)) -v p=$((p1 - p0)) -v r=$((r1 - r0)) -v l="$lu $ls" -v hz="$hz" -v ms="$elapsed_ms" 'BEGIN {
  wall = ms / 1000; split(l, t, " ")
  printf "cpu_cores_used service=%.2f postgres=%.2f redis=%.2f loadgen=%.2f (over %.1f s wall, 2 cores)\n",
    s / hz / wall, p / hz / wall, r / hz / wall, (t[1] + t[2]) / wall, wall
}'
redis_forget "$queue"
