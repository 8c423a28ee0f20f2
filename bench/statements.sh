#!/usr/bin/env bash
# The service's calls on a large database: 10 million jobs (9 million
# finished, as months of work leave them, bench/fill.sh; 1 million PENDING,
# created through the service, each with its message waiting in the outbox,
# as a long Redis outage leaves them). On it, with the relay off (so the
# outbox stays full) and retention off (so the table stays full), one call
# at a time over HTTP (bench/statements.py): cancel of a PENDING job, retry
# of a FAILED one, List pages of every filter combination, a /metrics scrape;
# and the reaper's passes (REAPER_INTERVAL=250ms) from
# translation_reaper_pass_duration_seconds. Each prints p50, p99 and max.
#
#   bench/statements.sh [--jobs 10000000] [--outbox 1000000] [--calls 300] [--keep] [--reuse]
#
# --keep leaves the filled database (bench_statements, 7 GB) in place at
# the end; --reuse measures on such a database instead of filling a new
# one (the cancelled and retried jobs of the run before are not drawn again).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
source bench/fill.sh

jobs=10000000 outbox=1000000 calls=300 keep=0 reuse=0
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) jobs=$2; shift 2 ;;
    --outbox) outbox=$2; shift 2 ;;
    --calls) calls=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --reuse) reuse=1; keep=1; shift ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done

bench_setup
export BENCH_SKIP_BUILD=1
db=bench_statements queue=bench_statements_jobs
url="$BASE_URL/$db"
sql() { psql "$url" -v ON_ERROR_STOP=1 -qtA "$@"; }
started=$(now_ms)
if [ "$reuse" = 1 ] && psql "$url" -qtAc "SELECT 1" >/dev/null 2>&1; then
  echo "reusing $db" >&2
else
  reuse=0
  fresh_db "$db"
fi
# Dropped at exit unless kept.
BENCH_DBS=${BENCH_DBS:-}
[ "$keep" = 1 ] && BENCH_DBS=${BENCH_DBS//$db/}
DATABASE_URL=$url TRANSLATION_QUEUE=$queue "$BIN_DIR/translation-jobs" migrate >/dev/null

[ "$reuse" = 1 ] || fill_finished_jobs "$url" $((jobs - outbox)) 500000 "$started"

# The PENDING jobs, through the service (one subtask each), until the outbox
# holds --outbox messages.
start_service "$db" "$queue" redis://127.0.0.1:6379/0 RELAY_ENABLED=false REAPER_ENABLED=false
while [ "$reuse" = 0 ]; do
  waiting=$(outbox_count "$db")
  printf '\routbox: %d of %d (%ss)' "$waiting" "$outbox" $(( ($(now_ms) - started) / 1000 )) >&2
  [ "$waiting" -ge "$outbox" ] && break
  left=$((outbox - waiting))
  "$BIN_DIR/loadgen" --addr "http://127.0.0.1:$GRPC_PORT" --concurrency 32 --subtasks 1 \
    --duration "$(( left / 3000 < 5 ? 5 : (left / 3000 > 60 ? 60 : left / 3000) ))s" --warmup 0s >/dev/null
done
echo >&2
stop_service
sql -c "VACUUM (ANALYZE) translation_jobs, translation_subtasks, outbox, job_publications" -c "CHECKPOINT" >/dev/null
read -r total pending waiting size < <(sql -F' ' -c "
  SELECT (SELECT count(*) FROM translation_jobs),
         (SELECT count(*) FROM translation_jobs WHERE status = 'PENDING'),
         (SELECT count(*) FROM outbox),
         pg_size_pretty(pg_database_size(current_database()))")
echo "database: jobs=$total pending=$pending outbox=$waiting size=$size, filled in $(( ($(now_ms) - started) / 1000 ))s"

# Ids to act on, drawn from random pages of the table.
sql -c "SELECT id FROM translation_jobs TABLESAMPLE SYSTEM (2) WHERE status = 'PENDING' LIMIT $calls" >"$BENCH_TMP/pending"
sql -c "SELECT id FROM translation_jobs TABLESAMPLE SYSTEM (2) WHERE status = 'FAILED' LIMIT $calls" >"$BENCH_TMP/failed"
sql -c "SELECT novel_id FROM translation_jobs TABLESAMPLE SYSTEM (1) WHERE status = 'COMPLETED' LIMIT 1" >"$BENCH_TMP/novel"

start_service "$db" "$queue" redis://127.0.0.1:6379/0 RELAY_ENABLED=false REAPER_INTERVAL=250ms \
  RETAIN_COMPLETED=0 RETAIN_FAILED=0 RETAIN_CANCELLED=0
echo "one call at a time over HTTP, $calls calls each (load $(cut -d' ' -f1-3 /proc/loadavg)):"
client() { python3 bench/statements.py "$HTTP_PORT" "$@" | sed 's/^/  /'; }
client cancel "$BENCH_TMP/pending" "$calls"
client retry "$BENCH_TMP/failed" "$calls"
for list in list-newest list-pending list-failed list-novel list-novel-completed list-walk; do
  client "$list" "$BENCH_TMP/novel" "$calls"
done
client scrape - "$calls"

# The reaper's passes during all of the above and 30 s more (a pass every
# 250 ms), from the service's histogram.
sleep "${BENCH_REAPER_SECONDS:-30}"
curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" | awk '
  /^translation_reaper_pass_duration_seconds_bucket/ {
    match($0, /part="[a-z_]+"/); part = substr($0, RSTART + 6, RLENGTH - 7)
    match($0, /le="[^"]+"/); le = substr($0, RSTART + 4, RLENGTH - 5)
    n[part]++; les[part, n[part]] = le; counts[part, n[part]] = $NF }
  END {
    for (part in n) {
      total = counts[part, n[part]]; p50 = ""; p99 = ""
      for (i = 1; i <= n[part]; i++) {
        if (p50 == "" && counts[part, i] >= 0.5 * total) p50 = les[part, i]
        if (p99 == "" && counts[part, i] >= 0.99 * total) p99 = les[part, i]
      }
      printf "  reaper pass (%s) n=%d p50<=%ss p99<=%ss (histogram buckets)\n", part, total, p50, p99
    }
  }'
