#!/usr/bin/env bash
# What change notifications cost a worker. pgbench runs the worker
# contract's subtask updates (docs/worker-contract.md: fail a subtask, start
# it again, each its own transaction, as a worker's autocommit statements)
# on random subtasks of 20,000 jobs IN_PROGRESS, 32 clients, against:
#
#   off   no notification: the notify triggers disabled, and the heartbeat
#         trigger without its look for watchers: the statement alone, the limit
#   none  the triggers on, nobody watching (the common case)
#   1%    the triggers on, 1% of the jobs watched
#   10%   10% watched
#   all   every job watched: every update notifies
#
# A watched job is a row in watched_jobs, as a watch stream's replica writes
# it. The service runs beside pgbench with its LISTEN connection (relay and
# reaper off), so the notification queue is read as in production. Rounds
# alternate the order; each variant's figure is its rate divided by the
# "off" rate of the same round, and the median of the rounds is printed.
#
#   bench/notify.sh [--rounds 3] [--duration 15s] [--clients 32] [--jobs 20000]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

rounds=3 duration=15s clients=32 jobs=20000 subtasks=10
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done

bench_setup
db=bench_notify queue=bench_notify_jobs
fresh_db "$db"
url="$BASE_URL/$db"
sql() { psql "$url" -v ON_ERROR_STOP=1 -qtA "$@"; }
DATABASE_URL=$url TRANSLATION_QUEUE=$queue "$BIN_DIR/translation-jobs" migrate >/dev/null

# Jobs and subtasks IN_PROGRESS under attempt 1, ids derived from their
# numbers so that the pgbench script finds a subtask without a lookup.
sql -c "SET session_replication_role = replica" -c "
  INSERT INTO translation_jobs (id, novel_id, source_lang, target_lang, target_fields,
                                output_dir, status, attempts)
  SELECT md5('job' || j)::uuid, md5('novel' || j)::uuid, 'ja', 'en',
         '{title,description,content}', 'outputs/novel_jobs', 'IN_PROGRESS', 1
  FROM generate_series(1, $jobs) AS j" -c "
  INSERT INTO translation_subtasks (id, job_id, entity_type, entity_id, status, job_attempt, attempts)
  SELECT md5(n::text)::uuid, md5('job' || ((n - 1) / $subtasks + 1))::uuid, 'chapter',
         'chapter-' || ((n - 1) % $subtasks), 'IN_PROGRESS', 1, 1
  FROM generate_series(1, $((jobs * subtasks))) AS n" \
  -c "VACUUM (ANALYZE) translation_jobs, translation_subtasks" -c "CHECKPOINT"

cat >"$BENCH_TMP/worker.sql" <<SQL
\set n random(1, $((jobs * subtasks)))
UPDATE translation_subtasks SET status = 'FAILED', error = 'model unavailable'
 WHERE id = md5(:n::text)::uuid AND job_attempt = 1 AND status = 'IN_PROGRESS';
UPDATE translation_subtasks SET status = 'IN_PROGRESS', attempts = attempts + 1, error = NULL
 WHERE id = md5(:n::text)::uuid AND job_attempt = 1 AND status IN ('PENDING', 'FAILED');
SQL

start_service "$db" "$queue" redis://127.0.0.1:6379/0 RELAY_ENABLED=false REAPER_ENABLED=false

# The heartbeat trigger's function as the migrations leave it (it looks
# for watchers of a worker's change), and the same without that look: the
# statement with no notification at all, for "off".
sql -c "SELECT pg_get_functiondef('touch_job_of_subtask'::regproc)" >"$BENCH_TMP/touch.sql"
cat >"$BENCH_TMP/touch_off.sql" <<'SQL'
CREATE OR REPLACE FUNCTION touch_job_of_subtask() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE translation_jobs SET updated_at = now() WHERE id = NEW.job_id;
    RETURN NULL;
END
$$;
SQL

# variant NAME: the triggers and watched_jobs as the variant has them.
variant() {
  local state=ENABLE share=0
  case $1 in
    off) state=DISABLE ;;
    none) share=0 ;;
    1%) share=100 ;;
    10%) share=10 ;;
    all) share=1 ;;
  esac
  if [ "$state" = DISABLE ]; then sql -f "$BENCH_TMP/touch_off.sql"; else sql -f "$BENCH_TMP/touch.sql"; fi
  sql -c "ALTER TABLE translation_subtasks $state TRIGGER translation_subtasks_watchers_notify" \
      -c "ALTER TABLE translation_jobs $state TRIGGER translation_jobs_notify_event" \
      -c "DELETE FROM watched_jobs"
  if [ "$share" != 0 ]; then
    sql -c "INSERT INTO watched_jobs (job_id, watcher, expires_at)
            SELECT md5('job' || j)::uuid, gen_random_uuid(), now() + interval '1 day'
            FROM generate_series(1, $jobs) AS j WHERE j % $share = 0" -c "VACUUM ANALYZE watched_jobs"
  fi
  # Each run starts from tables without the dead rows of the runs before.
  sql -c "VACUUM translation_subtasks, translation_jobs" -c "CHECKPOINT"
}

# One pgbench run; prints subtask updates per second (two per transaction).
run() {
  PGOPTIONS='-c enable_seqscan=off' pgbench "$url" -n -M prepared -c "$clients" -j 2 \
    -T "${duration%s}" -f "$BENCH_TMP/worker.sql" 2>&1 \
    | awk '/^tps/ { printf "%d", $3 * 2 }'
}

echo "jobs=$jobs subtasks=$subtasks clients=$clients duration=$duration rounds=$rounds (subtask updates/s; ratio to off in the same round)"
variants=(off none 1% 10% all)
declare -A ratios
for round in $(seq 1 "$rounds"); do
  order=("${variants[@]}")
  [ $((round % 2)) = 0 ] && order=(all 10% 1% none off)
  declare -A rate=()
  for v in "${order[@]}"; do
    variant "$v"
    rate[$v]=$(run)
  done
  line="round $round:"
  for v in "${variants[@]}"; do
    r=$(awk -v a="${rate[$v]}" -v b="${rate[off]}" 'BEGIN { printf "%.2f", a / b }')
    ratios[$v]="${ratios[$v]:-} $r"
    line+=" $v=${rate[$v]}/s ($r)"
  done
  echo "$line"
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
summary="median ratio to off:"
for v in none 1% 10% all; do summary+=" $v=$(echo "${ratios[$v]}" | median)"; done
echo "$summary"
echo "notification queue usage at the end: $(sql -c 'SELECT pg_notification_queue_usage()')"
