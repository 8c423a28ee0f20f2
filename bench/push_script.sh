#!/usr/bin/env bash
# Redis's CPU per message of the relay's push script, next to a plain RPUSH
# of the same batch and a script that does nothing but that RPUSH, on a
# redis-server of its own (no persistence: the script's own cost).
#
#   bench/push_script.sh [--rounds 400]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

rounds=400
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
BENCH_TMP=$(mktemp -d) SERVICE_PID= REDIS_PID=
trap bench_cleanup EXIT
port=$(free_port)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$BENCH_TMP" --logfile "$BENCH_TMP/redis.log" &
REDIS_PID=$!
for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
python3 bench/push_script.py src/queue/push.lua "$port" "$rounds"
