-- The reference for CreateTranslationJob: the same durable work as the
-- service (a job, its subtasks and its outbox row, committed with
-- synchronous_commit on) in the fastest form PostgreSQL allows: ONE
-- statement, one round trip, prepared (run with pgbench -M prepared).
-- :entity_ids is an array parameter, e.g. -D entity_ids='{chapter-0,...}'.
WITH job AS (
    INSERT INTO translation_jobs
        (id, user_id, novel_id, source_lang, target_lang, target_fields,
         enable_code_filter, output_dir, priority, request_id)
    VALUES (gen_random_uuid(), '', gen_random_uuid(), 'ja', 'en',
            '{title,description,content}', false, 'outputs/novel_jobs', 'NORMAL', NULL)
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
SELECT created_at FROM job;
