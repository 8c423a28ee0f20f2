#!/usr/bin/env bash
# Relay drain: a backlog of jobs created while Redis is down, then Redis
# started: how long until the outbox is empty, messages per second, next to
# the raw limits measured in the same run (pgbench claiming and deleting
# outbox batches on one connection; redis-benchmark RPUSH pipelined).
#
#   bench/drain.sh [--jobs 100000] [--batch 500] [--scheduled 0] [VAR=VALUE ...]   # extra settings for the service
#
# --scheduled N adds N jobs scheduled an hour ahead, their messages waiting
# in outbox_scheduled, as scheduled jobs and retries leave them: the drain
# must neither push them early nor slow down for them.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

jobs=100000 batch=500 scheduled=0 service_env=()
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) jobs=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --scheduled) scheduled=$2; shift 2 ;;
    *=*) service_env+=("$1"); shift ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done

bench_setup
db=${BENCH_PREFIX:-bench_}drain queue=${BENCH_PREFIX:-bench_}drain_jobs
fresh_db $db
redis_port=$(free_port)
redis_url=redis://127.0.0.1:$redis_port/0
# Redis is not running: the service starts anyway and jobs wait in the outbox.
start_service $db $queue "$redis_url" RELAY_BATCH_SIZE="$batch" "${service_env[@]}"

# The backlog: jobs and their outbox rows written as the create statement
# writes them, in bulk (creating 100,000 through gRPC would only add minutes).
# Job ids are time-ordered like the service's UUIDv7s: milliseconds, then a
# counter.
fill_outbox() {
  psql "$BASE_URL/$db" -qc "
    WITH jobs AS (
      INSERT INTO translation_jobs (id, novel_id, source_lang, target_lang, target_fields, output_dir)
      SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
              || lpad(to_hex(g), 20, '0'))::uuid,
             gen_random_uuid(), 'ja', 'en', '{title,description,content}', 'outputs/novel_jobs'
      FROM generate_series(1, $jobs) AS g
      RETURNING id)
    INSERT INTO outbox (job_id, lane, payload)
    SELECT id, 'normal', '{\"job_id\":\"' || id || '\",\"target_lang\":\"en\",\"source_lang\":\"ja\",\"output_dir\":\"outputs/novel_jobs\",\"target_fields\":[\"title\",\"description\",\"content\"]}'
    FROM jobs;
    ANALYZE translation_jobs, outbox;"
}
# Jobs scheduled an hour ahead, written as a create with schedule_time
# writes them: the job PENDING with scheduled_at, its message in
# outbox_scheduled until it is due.
fill_scheduled() {
  [ "$scheduled" -gt 0 ] || return 0
  psql "$BASE_URL/$db" -qc "
    WITH jobs AS (
      INSERT INTO translation_jobs (id, novel_id, source_lang, target_lang, target_fields, output_dir, scheduled_at)
      SELECT gen_random_uuid(), gen_random_uuid(), 'ja', 'en', '{title,description,content}',
             'outputs/novel_jobs', now() + interval '1 hour'
      FROM generate_series(1, $scheduled)
      RETURNING id, scheduled_at)
    INSERT INTO outbox_scheduled (job_id, attempt, lane, payload, due_at)
    SELECT id, 1, 'normal', '{\"job_id\":\"' || id || '\",\"target_lang\":\"en\",\"source_lang\":\"ja\",\"output_dir\":\"outputs/novel_jobs\",\"target_fields\":[\"title\",\"description\",\"content\"]}', scheduled_at
    FROM jobs;
    ANALYZE translation_jobs, outbox_scheduled;"
}
scheduled_count() { psql "$BASE_URL/$db" -qtAc "SELECT count(*) FROM outbox_scheduled"; }
fill_outbox
fill_scheduled
[ "$(outbox_count $db)" -eq "$jobs" ] || { echo "backlog not written" >&2; exit 1; }
[ "$(scheduled_count)" -eq "$scheduled" ] || { echo "scheduled jobs not written" >&2; exit 1; }

# CPU time (ns) of a process, and of the database's server processes that
# serve this benchmark's database (the service's pool).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
pg_pids() { psql "$BASE_URL/$db" -qtAc "SELECT pid FROM pg_stat_activity WHERE datname = '$db' AND pid <> pg_backend_pid()"; }
declare -A pg_before
for pid in $(pg_pids); do pg_before[$pid]=$(cpu_ns "$pid"); done

start_redis "$redis_port" everysec
s_before=$(cpu_ns "$SERVICE_PID") r_before=$(cpu_ns "$REDIS_PID")
started=$(now_ms)
# One light process watches the list's length every 5 ms over one Redis
# connection (counting the outbox with psql that often would load the very
# database being measured): when the first message arrives and when the
# last one does. Then the outbox must be empty too (the last round's commit
# follows its push within a round trip).
read -r first done_at < <(python3 - "$redis_port" "$queue" "$jobs" <<'PY'
import socket, sys, time
port, key, total = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3])
sock = socket.create_connection(("127.0.0.1", port))
command = b"*2\r\n$4\r\nLLEN\r\n$%d\r\n%s\r\n" % (len(key), key)
first = None
while True:
    sock.sendall(command)
    reply = b""
    while not reply.endswith(b"\r\n"):
        reply += sock.recv(64)
    length = int(reply[1:].strip())
    now = int(time.time() * 1000)
    if first is None and length > 0:
        first = now
    if length >= total:
        print(first, now)
        break
    time.sleep(0.005)
PY
)
for _ in $(seq 1 500); do [ "$(outbox_count $db)" -eq 0 ] && break; sleep 0.02; done
[ "$(outbox_count $db)" -eq 0 ] || { echo "the outbox did not empty" >&2; exit 1; }
service_cpu=$(( $(cpu_ns "$SERVICE_PID") - s_before )) redis_cpu=$(( $(cpu_ns "$REDIS_PID") - r_before ))
pg_cpu=0
for pid in $(pg_pids); do pg_cpu=$(( pg_cpu + $(cpu_ns "$pid") - ${pg_before[$pid]:-0} )); done
length=$(redis-cli -p "$redis_port" llen "$queue")
still_scheduled=$(scheduled_count)
# Redis memory of the push-once markers this drain left (4 bytes per message
# plus one key per 1024 outbox ids, each living RELAY_MARKER_TTL).
marker_bytes=$(redis-cli -p "$redis_port" --scan --pattern "{$queue}:pushed:*" \
  | while read -r key; do redis-cli -p "$redis_port" memory usage "$key"; done \
  | awk '{s += $1} END {print s + 0}')
stop_service

drain_ms=$((done_at - started))
steady_ms=$((done_at - ${first:-$started}))
rate=$(awk -v n="$jobs" -v ms="$steady_ms" 'BEGIN {printf "%.0f", n / (ms > 0 ? ms : 1) * 1000}')

# Raw limit 1: PostgreSQL claiming and deleting batches on one connection.
fill_outbox
transactions=$(( (jobs + batch - 1) / batch ))
PGOPTIONS='-c enable_seqscan=off' pgbench "$BASE_URL/$db" -n -M prepared -c 1 -t "$transactions" \
  -D batch="$batch" -f bench/claim_delete.sql >"$BENCH_TMP/claim.out" 2>&1
claim_tps=$(awk '/^tps/ {print $3; exit}' "$BENCH_TMP/claim.out")
claim_rate=$(awk -v t="$claim_tps" -v b="$batch" 'BEGIN {printf "%.0f", t * b}')

# Raw limit 2: Redis RPUSH, pipelined, messages of the same size.
redis-cli -p "$redis_port" del "$queue" >/dev/null
size=180  # bytes, about a message with default fields
push_rate=$(redis-benchmark -p "$redis_port" -t rpush -n $((jobs * 5)) -P "$batch" -d "$size" -q 2>/dev/null \
  | tr '\r' '\n' | awk '/^RPUSH: [0-9.]+ requests per second/ {printf "%.0f\n", $2}' | tail -n 1)

limit=$(( claim_rate < push_rate ? claim_rate : push_rate ))
ratio=$(awk -v a="$rate" -v b="$limit" 'BEGIN {printf "%.2f", a/b}')
echo "jobs=$jobs batch=$batch pushed=$length scheduled=$scheduled still_scheduled=$still_scheduled"
echo "drain_ms=$drain_ms (from Redis start) steady_ms=$steady_ms (from the first push) rate=$rate/s"
echo "raw_claim_delete=$claim_rate/s raw_rpush_pipelined=$push_rate/s limit=$limit/s"
echo "ratio drain/limit=$ratio"
# CPU per message over the whole drain (from Redis start): the figures that
# do not depend on how busy the machine is.
awk -v s="$service_cpu" -v p="$pg_cpu" -v r="$redis_cpu" -v n="$jobs" -v ms="$drain_ms" 'BEGIN {
  printf "cpu_us_per_message service=%.2f postgres=%.2f redis=%.2f total=%.2f (cores over the drain: %.2f)\n",
    s / n / 1000, p / n / 1000, r / n / 1000, (s + p + r) / n / 1000, (s + p + r) / (ms * 1e6)
}'
echo "push_markers bytes=$marker_bytes per_message=$(awk -v b="$marker_bytes" -v n="$jobs" 'BEGIN {printf "%.2f", b / n}')"
[ "$length" -eq "$jobs" ] || { echo "expected $jobs messages, found $length" >&2; exit 1; }
[ "$still_scheduled" -eq "$scheduled" ] || { echo "scheduled messages were pushed early: $still_scheduled of $scheduled left" >&2; exit 1; }
