-- The raw limit of the relay's PostgreSQL side: claim and delete one batch
-- of the oldest outbox rows, as the relay does, without the push.
WITH claimed AS (
    DELETE FROM outbox WHERE id IN (
        SELECT id FROM outbox ORDER BY id LIMIT :batch FOR UPDATE SKIP LOCKED)
    RETURNING id, job_id, lane, payload, created_at
)
SELECT count(*) FROM claimed;
