#!/usr/bin/env bash
# PostgreSQL's side of one relay round, statement by statement: the CPU time
# of the database backend per batch (from /proc/<pid>/schedstat, so it holds
# on a busy machine), for the raw limit's statement and the variants the
# relay could use. Each variant runs through pgbench on one connection over
# a fresh backlog of 100,000 rows with time-ordered ids like the service's.
#
#   bench/relay_statements.sh [--batch 500] [--rounds 3]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

batch=500 rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --batch) batch=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
BENCH_SKIP_BUILD=1 bench_setup
db=bench_statements
fresh_db $db
for migration in migrations/*.sql; do psql -q "$BASE_URL/$db" -f "$migration" >/dev/null; done
psql -q "$BASE_URL/$db" -c "
  INSERT INTO translation_jobs (id, novel_id, source_lang, target_lang, target_fields, output_dir)
  SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
          || lpad(to_hex(g), 20, '0'))::uuid,
         gen_random_uuid(), 'ja', 'en', '{title,description,content}', 'outputs/novel_jobs'
  FROM generate_series(1, 100000) AS g"

claim_in="DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT :batch FOR UPDATE SKIP LOCKED) RETURNING id, job_id, lane, payload, created_at, attempt, token"
claim_any="DELETE FROM outbox WHERE id = ANY(ARRAY(SELECT id FROM outbox ORDER BY id LIMIT :batch FOR UPDATE SKIP LOCKED)) RETURNING id, job_id, lane, payload, created_at, attempt, token"
pub="INSERT INTO job_publications AS p (job_id, published_at, attempt, lane, seq, generation) SELECT job_id, clock_timestamp(), attempt, lane, id, 1 FROM claimed"
upsert="ON CONFLICT (job_id) DO UPDATE SET published_at = excluded.published_at, attempt = excluded.attempt, lane = excluded.lane, seq = excluded.seq, generation = excluded.generation WHERE excluded.attempt >= p.attempt"
declare -A variants=(
  [1-raw-count]="$(cat bench/claim_delete.sql)"
  [2-claim-in-rows]="BEGIN; WITH claimed AS ($claim_in) SELECT * FROM claimed; COMMIT;"
  [3-claim-any-rows]="BEGIN; WITH claimed AS ($claim_any) SELECT * FROM claimed; COMMIT;"
  [4-any+insert]="BEGIN; WITH claimed AS ($claim_any), pub AS ($pub) SELECT * FROM claimed; COMMIT;"
  [5-any+upsert]="BEGIN; WITH claimed AS ($claim_any), pub AS ($pub $upsert) SELECT * FROM claimed; COMMIT;"
  [6-any+not-exists]="BEGIN; WITH claimed AS ($claim_any), pub AS ($pub c WHERE NOT EXISTS (SELECT 1 FROM job_publications q WHERE q.job_id = c.job_id)) SELECT * FROM claimed; COMMIT;"
)
printf '#!/bin/sh\ncat /proc/$1/schedstat >> "$2"\n' >"$BENCH_TMP/probe.sh"
chmod +x "$BENCH_TMP/probe.sh"
transactions=$(( 100000 / batch - 1 ))
declare -A results
for round in $(seq 1 "$rounds"); do
  for name in $(printf '%s\n' "${!variants[@]}" | sort); do
    psql -q "$BASE_URL/$db" -c "TRUNCATE outbox, job_publications" -c "
      INSERT INTO outbox (job_id, lane, payload)
      SELECT id, 'normal', '{\"job_id\":\"' || id || '\",\"target_lang\":\"en\",\"source_lang\":\"ja\",\"output_dir\":\"outputs/novel_jobs\",\"target_fields\":[\"title\",\"description\",\"content\"]}'
      FROM translation_jobs ORDER BY id" -c "VACUUM ANALYZE outbox, job_publications"
    log="$BENCH_TMP/$name.log"
    rm -f "$log"
    # The probe after each transaction records the backend's CPU time so far.
    { echo 'SELECT pg_backend_pid() AS pid \gset'; echo "${variants[$name]}" | sed 's/; /;\n/g'
      echo "\\shell $BENCH_TMP/probe.sh :pid $log"; } >"$BENCH_TMP/$name.sql"
    PGOPTIONS='-c enable_seqscan=off' pgbench "$BASE_URL/$db" -n -M prepared -c 1 -t "$transactions" \
      -D batch="$batch" -f "$BENCH_TMP/$name.sql" >"$BENCH_TMP/$name.out" 2>&1 \
      || { cat "$BENCH_TMP/$name.out" >&2; exit 1; }
    us=$(awk 'NR == 1 {first = $1} {last = $1} END {printf "%.0f", (last - first) / 1000 / (NR - 1)}' "$log")
    results[$name]="${results[$name]:-} $us"
  done
done
echo "backend CPU per batch of $batch, microseconds, $rounds rounds:"
for name in $(printf '%s\n' "${!results[@]}" | sort); do printf '  %-20s %s\n' "$name" "${results[$name]}"; done
