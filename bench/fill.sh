# Shared by bench/retention.sh and bench/statements.sh: a database full of
# finished jobs, as months of work leave it. Source after bench/lib.sh.

# fill_finished_jobs URL JOBS [CHUNK] [STARTED_MS]: adds JOBS finished jobs
# to the migrated database at URL (one subtask and one publication each,
# UUIDv7 ids spread over the last 60 days, about 85% of them past the
# default RETAIN_* settings), CHUNK jobs per statement, printing progress
# (the time since STARTED_MS) on stderr; then VACUUM (ANALYZE) and CHECKPOINT.
fill_sql() { psql "$FILL_URL" -v ON_ERROR_STOP=1 -qtA "$@"; }

fill_finished_jobs() {
  FILL_URL=$1
  local jobs=$2 chunk=${3:-500000} started=${4:-$(now_ms)}
  local indexes span_ms t0_ms start end
  # Bulk loading: the indexes that random values would scatter (novel_id) and
  # the others that are neither primary nor unique are built once at the end;
  # foreign-key triggers are off for the load (the rows are consistent by
  # construction), as tests/api/reaper.rs does for its fixtures.
  indexes=$(fill_sql -c "SELECT pg_get_indexdef(indexrelid) || ';' FROM pg_index
    WHERE indrelid IN ('translation_jobs'::regclass, 'translation_subtasks'::regclass)
      AND NOT indisprimary AND NOT indisunique")
  fill_sql -c "SELECT format('DROP INDEX %s;', indexrelid::regclass) FROM pg_index
    WHERE indrelid IN ('translation_jobs'::regclass, 'translation_subtasks'::regclass)
      AND NOT indisprimary AND NOT indisunique" | fill_sql
  # Jobs created uniformly over the last 60 days, oldest first (so the
  # primary key and the subtasks' unique index grow at their right edge),
  # finished 1 to 60 minutes after creation: 85% COMPLETED, 10% FAILED, 5%
  # CANCELLED. Ids are UUIDv7 of the creation time, as the service draws them:
  # 48 bits of milliseconds, version 7, random bits, variant 10.
  span_ms=$((60 * 24 * 3600 * 1000))
  t0_ms=$(( $(now_ms) - span_ms ))
  for start in $(seq 0 "$chunk" $((jobs - 1))); do
    end=$(( start + chunk < jobs ? start + chunk : jobs ))
    fill_sql -c "SET session_replication_role = replica" -c "
      WITH rows AS (
        SELECT g,
               ($t0_ms + (g::numeric * $span_ms / $jobs)::bigint) AS ms,
               md5(g::text) AS r,
               CASE WHEN g % 20 < 17 THEN 'COMPLETED' WHEN g % 20 < 19 THEN 'FAILED' ELSE 'CANCELLED' END AS status
        FROM generate_series($start, $((end - 1))) AS g),
      j AS (
        INSERT INTO translation_jobs (id, novel_id, source_lang, target_lang, target_fields,
                                      output_dir, status, attempts, error, created_at, updated_at)
        SELECT (lpad(to_hex(ms), 12, '0') || '7' || substr(r, 1, 3) || '8' || substr(r, 4, 15))::uuid,
               md5(r)::uuid, 'ja', 'en', '{title,description,content}', 'outputs/novel_jobs', status, 0,
               CASE status WHEN 'FAILED' THEN 'worker failed: model unavailable' END,
               to_timestamp(ms / 1000.0), to_timestamp(ms / 1000.0) + (1 + g % 60) * interval '1 minute'
        FROM rows
        RETURNING id, status, created_at, updated_at),
      s AS (
        INSERT INTO translation_subtasks (id, job_id, entity_type, entity_id, status, job_attempt,
                                          created_at, updated_at)
        SELECT md5(id::text)::uuid, id, 'chapter', 'chapter-0', status,
               CASE status WHEN 'COMPLETED' THEN 0 ELSE -1 END, created_at, updated_at
        FROM j)
      INSERT INTO job_publications (job_id, published_at, attempt, lane, seq, generation)
      SELECT id, created_at, 0, 'normal', 0, 1 FROM j" >/dev/null
    printf '\rfilled %d of %d jobs (%s)' "$end" "$jobs" "$(( ($(now_ms) - started) / 1000 ))s" >&2
  done
  echo >&2
  echo "$indexes" | fill_sql >/dev/null
  fill_sql -c "VACUUM (ANALYZE) translation_jobs, translation_subtasks, job_publications" -c "CHECKPOINT" >/dev/null
}
