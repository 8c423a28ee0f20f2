#!/usr/bin/env bash
# Outage recovery: steady load (open loop), Redis killed for a while and
# started again. Reports the largest outbox backlog, the time from Redis's
# return until the outbox is empty, and lost and duplicated jobs (both must
# be 0). The load generator's consumer moves messages into a processing list
# instead of popping them and counts from that list at the end, so a reply
# lost when Redis is killed mid-command is not counted as a lost job
# (recovered_from_processing says how many such replies were lost); the
# database is checked too: no row left in the outbox, every job published.
#
#   bench/outage.sh [--rate 1200] [--before 10] [--down 30] [--after 20]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

rate=1200 before=10 down=30 after=20
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) rate=$2; shift 2 ;;
    --before) before=$2; shift 2 ;;
    --down) down=$2; shift 2 ;;
    --after) after=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done

bench_setup
db=bench_outage queue=bench_outage_jobs
fresh_db $db
redis_port=$(free_port)
redis_url=redis://127.0.0.1:$redis_port/0
# fsync always: a message Redis acknowledged survives the kill, so any loss
# counted below is the service's.
start_redis "$redis_port" always
start_service $db $queue "$redis_url"

total=$((before + down + after))
"$BIN_DIR/loadgen" --addr "http://127.0.0.1:$GRPC_PORT" --rate "$rate" --concurrency 64 \
  --subtasks 10 --warmup 0s --duration "${total}s" --consume --redis-url "$redis_url" \
  --queue "$queue" >"$BENCH_TMP/loadgen.out" &
load=$!

sleep "$before"
stop_redis
peak=0
stop_at=$(( $(now_ms) + down * 1000 ))
while [ "$(now_ms)" -lt "$stop_at" ]; do
  left=$(outbox_count $db)
  [ "$left" -gt "$peak" ] && peak=$left
  sleep 0.2
done
start_redis "$redis_port" always
back=$(now_ms)
while [ "$(outbox_count $db)" -gt 0 ]; do
  # Under steady load the outbox is never quite empty: a few in-flight rows
  # count as drained.
  [ "$(outbox_count $db)" -le $(( rate / 50 + 5 )) ] && break
  sleep 0.02
done
recovered_ms=$(( $(now_ms) - back ))
wait "$load"

missing=$(awk -F'[= ]' '/^visible=/ {print $4}' "$BENCH_TMP/loadgen.out")
duplicates=$(awk -F'[= ]' '/^visible=/ {print $6}' "$BENCH_TMP/loadgen.out")
recovered=$(awk -F'[= ]' '/^visible=/ {print $8}' "$BENCH_TMP/loadgen.out")
# The service's side: nothing left in the outbox, every job published.
left=$(outbox_count $db)
unpublished=$(psql "$BASE_URL/$db" -qtAc "SELECT count(*) FROM translation_jobs j
  WHERE NOT EXISTS (SELECT 1 FROM job_publications p WHERE p.job_id = j.id)")
cat "$BENCH_TMP/loadgen.out"
echo "rate=$rate/s outage=${down}s peak_backlog=$peak recovered_ms=$recovered_ms outbox_left=$left unpublished=$unpublished consumer_replies_lost=${recovered:-0} lost=$missing duplicated=$duplicates"
[ "$missing" = 0 ] && [ "$duplicates" = 0 ] || { echo "lost or duplicated jobs" >&2; exit 1; }
