-- The batched limit for creates: bench/create_job.sql's durable work (a
-- job, its subtasks and its outbox row, synchronous_commit on) for :batch
-- jobs in ONE statement and one commit: the most that storing jobs in
-- groups, as the service's group commit does, can reach on this database.
-- Jobs per second = pgbench tps x :batch. bench/compare.sh runs it with
-- -c 2 -D batch=32 next to the one-job reference.
WITH job AS (
    INSERT INTO translation_jobs
        (id, user_id, novel_id, source_lang, target_lang, target_fields,
         enable_code_filter, output_dir, priority, request_id)
    SELECT gen_random_uuid(), '', gen_random_uuid(), 'ja', 'en',
           '{title,description,content}', false, 'outputs/novel_jobs', 'NORMAL', NULL
    FROM generate_series(1, :batch)
    RETURNING id, created_at
),
subtasks AS (
    INSERT INTO translation_subtasks (id, job_id, entity_type, entity_id, created_at, updated_at)
    SELECT gen_random_uuid(), job.id, 'chapter', e, job.created_at, job.created_at
    FROM job, UNNEST(:entity_ids::text[]) AS e
),
queued AS (
    INSERT INTO outbox (job_id, lane, payload)
    SELECT job.id, 'normal',
           '{"job_id":"' || job.id || '","target_lang":"en","source_lang":"ja","output_dir":"outputs/novel_jobs","target_fields":["title","description","content"]}'
    FROM job
)
SELECT count(*) FROM job;
