#!/usr/bin/env bash
# Retention at scale. Fills a database with finished jobs (10 million by
# default, one subtask and one publication each, UUIDv7 ids spread over the
# last 60 days, about 85% of them past the default RETAIN_* settings), shows
# the plan of the retention scan and the statements of one prune batch on
# it, then measures, with the retention loop deleting, the create rate
# (bench/compare.sh) and the relay drain (bench/drain.sh), against the same
# runs on an empty database and on the filled one with retention off
# (full-kept: what the size alone costs), alternating empty, full,
# full-kept. Every full run starts from a copy of the filled database. A
# sampler watches pg_stat_activity for sessions waiting on a lock.
#
#   bench/retention.sh [--jobs 10000000] [--rounds 2] [--duration 15s] [--drain-jobs 100000]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
source bench/fill.sh

jobs=10000000 rounds=2 duration=15s drain_jobs=100000 chunk=500000
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) jobs=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --drain-jobs) drain_jobs=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done

bench_setup
export BENCH_SKIP_BUILD=1
# Every database and queue of this run starts with this prefix.
prefix=bench_retention_
full=${prefix}full
fresh_db "$full"
full_url="$BASE_URL/$full"
sql() { psql "$full_url" -v ON_ERROR_STOP=1 -qtA "$@"; }
elapsed() { echo "$(( ($(now_ms) - $1) / 1000 ))s"; }
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores)"

# --- The filled database -------------------------------------------------
started=$(now_ms)
DATABASE_URL=$full_url "$BIN_DIR/translation-jobs" migrate >/dev/null
fill_finished_jobs "$full_url" "$jobs" "$chunk" "$started"
fill_s=$(elapsed "$started")
read -r total due size < <(sql -F' ' -c "
  SELECT count(*),
         count(*) FILTER (WHERE updated_at < now() - CASE status WHEN 'FAILED' THEN interval '30 days'
                                                               ELSE interval '7 days' END),
         pg_size_pretty(pg_database_size(current_database()))
  FROM translation_jobs")
echo "filled: jobs=$total past_retention=$due database=$size in $fill_s (load $(cut -d' ' -f1-3 /proc/loadavg))"

# --- The retention scan on it ---------------------------------------------
# The statements of jobs::prune_batch (src/jobs/retention.rs) with a
# batch's parameters, timed one by one, rolled back (the copies must start
# from the same rows). The scan's bound is the smallest UUIDv7 of the
# cutoff's millisecond.
echo "one prune batch of 1,000 COMPLETED jobs, statement by statement (rolled back):"
sql >"$BENCH_TMP/batch.out" <<'SQL'
-- As on the service's connections, and in each batch (SET LOCAL jit = off).
SET enable_seqscan = off;
SET jit = off;
SELECT (now() - interval '7 days') AS cutoff \gset
SELECT (lpad(to_hex((extract(epoch FROM :'cutoff'::timestamptz) * 1000)::bigint), 12, '0')
        || '7000' || '8000' || '000000000000')::uuid AS bound \gset
PREPARE lock_jobs(text, uuid, uuid, timestamptz, bigint) AS
  WITH window_ids AS MATERIALIZED (
           SELECT id FROM translation_jobs
            WHERE status = $1 AND id > $2 AND id < $3
            ORDER BY id LIMIT $5),
       locked AS MATERIALIZED (
           SELECT j.id FROM translation_jobs AS j
            WHERE j.id IN (SELECT id FROM window_ids) AND j.status = $1 AND j.updated_at < $4
            ORDER BY j.id FOR UPDATE OF j SKIP LOCKED)
  SELECT (SELECT count(*) FROM window_ids) AS scanned,
         (SELECT id FROM window_ids ORDER BY id DESC LIMIT 1) AS last,
         ARRAY(SELECT id FROM locked ORDER BY id)::text AS ids;
\echo 'plan (custom):'
EXPLAIN (COSTS OFF) EXECUTE lock_jobs('COMPLETED', '00000000-0000-0000-0000-000000000000', :'bound', :'cutoff', 1000);
SET plan_cache_mode = force_generic_plan;
\echo 'plan (generic, as a prepared statement may be planned after five runs):'
EXPLAIN (COSTS OFF) EXECUTE lock_jobs('COMPLETED', '00000000-0000-0000-0000-000000000000', :'bound', :'cutoff', 1000);
RESET plan_cache_mode;
BEGIN;
\timing on
\echo 'lock the jobs (the window and the jobs in it):'
EXECUTE lock_jobs('COMPLETED', '00000000-0000-0000-0000-000000000000', :'bound', :'cutoff', 1000) \gset
\echo 'lock their subtasks, messages and publications:'
WITH subtasks AS MATERIALIZED (
       SELECT id FROM translation_subtasks WHERE job_id = ANY(:'ids'::uuid[]) FOR UPDATE SKIP LOCKED),
     messages AS MATERIALIZED (
       SELECT id FROM outbox WHERE job_id = ANY(:'ids'::uuid[]) FOR UPDATE SKIP LOCKED),
     scheduled AS MATERIALIZED (
       SELECT id FROM outbox_scheduled WHERE job_id = ANY(:'ids'::uuid[]) FOR UPDATE SKIP LOCKED),
     publications AS MATERIALIZED (
       SELECT job_id FROM job_publications WHERE job_id = ANY(:'ids'::uuid[]) FOR UPDATE SKIP LOCKED)
SELECT count(*) AS held FROM (
  SELECT s.job_id FROM translation_subtasks AS s LEFT JOIN subtasks AS l USING (id)
   WHERE s.job_id = ANY(:'ids'::uuid[]) AND l.id IS NULL
  UNION SELECT o.job_id FROM outbox AS o LEFT JOIN messages AS l USING (id)
   WHERE o.job_id = ANY(:'ids'::uuid[]) AND l.id IS NULL
  UNION SELECT o.job_id FROM outbox_scheduled AS o LEFT JOIN scheduled AS l USING (id)
   WHERE o.job_id = ANY(:'ids'::uuid[]) AND l.id IS NULL
  UNION SELECT p.job_id FROM job_publications AS p LEFT JOIN publications AS l USING (job_id)
   WHERE p.job_id = ANY(:'ids'::uuid[]) AND l.job_id IS NULL) AS held;
\echo 'delete them (with the cascade to their subtasks):'
WITH gone AS (
       DELETE FROM translation_jobs
        WHERE id = ANY(:'ids'::uuid[]) AND status = 'COMPLETED' AND updated_at < :'cutoff'
       RETURNING id),
     messages AS (DELETE FROM outbox WHERE job_id IN (SELECT id FROM gone)),
     scheduled AS (DELETE FROM outbox_scheduled WHERE job_id IN (SELECT id FROM gone)),
     publications AS (DELETE FROM job_publications WHERE job_id IN (SELECT id FROM gone))
SELECT count(*) AS deleted FROM gone;
\timing off
ROLLBACK;
SQL
sed 's/^/  /' "$BENCH_TMP/batch.out"

# --- Creates and drain, empty against full --------------------------------
# The retention loop runs in both (the service's defaults, a pass every
# second instead of 30 s so that it starts at once); on the empty database
# it finds nothing. It logs a line per batch at DEBUG.
service_env=(REAPER_INTERVAL=1s "RUST_LOG=warn,translation_jobs::retention=debug")
waits=$BENCH_TMP/waits.txt
# sample_locks KIND FILE: every 100 ms, one line: the run's kind, the
# sessions of this run's databases that are active, those waiting on a
# heavyweight lock, those running a retention statement, and each waiting
# session's wait and query with the queries of the sessions it waits for.
# Run in the background: psql replaces the subshell, so $! is psql itself.
sample_locks() {
  exec psql "$SERVER_URL" -qtA -F' ' >>"$2" 2>/dev/null <<SQL
SELECT '$1', to_char(clock_timestamp(), 'HH24:MI:SS.MS'),
       count(*) FILTER (WHERE state = 'active'),
       count(*) FILTER (WHERE wait_event_type = 'Lock'),
       count(*) FILTER (WHERE state = 'active'
                              AND (query LIKE 'WITH window_ids AS MATERIALIZED%'
                                   OR query LIKE 'WITH subtasks AS MATERIALIZED%'
                                   OR query LIKE 'WITH gone AS (%')),
       coalesce(string_agg(w.wait_event || ': ' || left(regexp_replace(w.query, '\s+', ' ', 'g'), 60)
                           || ' <- ' || coalesce((SELECT string_agg(left(regexp_replace(b.query, '\s+', ' ', 'g'), 60), ' & ')
                                                  FROM pg_stat_activity AS b WHERE b.pid = ANY(pg_blocking_pids(w.pid))), '?'),
                           ' | ') FILTER (WHERE w.wait_event_type = 'Lock'), '-')
FROM pg_stat_activity AS w
WHERE datname LIKE '${prefix}%' AND pid <> pg_backend_pid()
\watch 0.1
SQL
}
runs=0
run() {  # run KIND SCRIPT ARGS...: one run, its output indented
  local kind=$1; shift
  local template="" env=("${service_env[@]}") sampler log
  runs=$((runs + 1)) log="$BENCH_TMP/service-$runs.log"
  case "$kind" in
    full) template=$full ;;
    # The same filled database with every RETAIN_* at 0: what the size alone costs.
    full-kept) template=$full env+=(RETAIN_COMPLETED=0 RETAIN_FAILED=0 RETAIN_CANCELLED=0) ;;
  esac
  sample_locks "$kind" "$waits" & sampler=$!
  echo "== $kind: $* (load $(cut -d' ' -f1-3 /proc/loadavg))"
  local began; began=$(now_ms)
  BENCH_PREFIX=$prefix BENCH_TEMPLATE=$template BENCH_SERVICE_LOG="$log" \
    "$@" "${env[@]}" 2>&1 | sed 's/^/  /'
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
  # What the retention loop did in that run, from its batch lines.
  python3 - "$log" <<'PY'
import json, statistics, sys
took, deleted = [], 0
for line in open(sys.argv[1], errors="replace"):
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    if entry.get("message") == "retention batch" and entry.get("deleted", 0) > 0:
        took.append(entry["took_ms"])
        deleted += entry["deleted"]
if took:
    took.sort()
    print("  retention: %d jobs deleted in %d batches; ms per batch: median %d, p90 %d, max %d;"
          " %.0f jobs/s while deleting" % (deleted, len(took), statistics.median(took),
          took[int(len(took) * 0.9)], took[-1], deleted / max(sum(took), 1) * 1000))
else:
    print("  retention: deleted nothing")
PY
  echo "  took $(elapsed "$began")"
}
kinds=(empty full full-kept)
for round in $(seq 1 "$rounds"); do
  for kind in "${kinds[@]}"; do
    run "$kind" bench/compare.sh --rounds 1 --duration "$duration" --no-http
  done
  for kind in "${kinds[@]}"; do
    run "$kind" bench/drain.sh --jobs "$drain_jobs"
  done
done

echo "lock sampler, every 100 ms through each run (the sessions of this run's databases):"
for kind in "${kinds[@]}"; do
  echo "  $kind: $(awk -v k="$kind" '$1 == k' "$waits" | wc -l) samples;" \
    "with a retention statement active: $(awk -v k="$kind" '$1 == k && $5 > 0' "$waits" | wc -l);" \
    "with a session waiting on a lock: $(awk -v k="$kind" '$1 == k && $4 > 0' "$waits" | wc -l)"
  echo "    waits in which a retention statement waited or was waited for:" \
    "$(awk -v k="$kind" '$1 == k && $4 > 0' "$waits" | cut -d' ' -f6- | tr '|' '\n' \
       | grep -cE 'WITH (window_ids|subtasks) AS MATERIALIZED|WITH gone AS' || true)"
  # The waits, by wait and query (and what they waited for), most frequent first.
  awk -v k="$kind" '$1 == k && $4 > 0' "$waits" | cut -d' ' -f6- | tr '|' '\n' | sed 's/^ *//' \
    | sort | uniq -c | sort -rn | head -6 | sed 's/^/    /'
done
echo "jobs=$jobs rounds=$rounds duration=$duration drain_jobs=$drain_jobs profile=$PROFILE load after: $(cut -d' ' -f1-3 /proc/loadavg)"
