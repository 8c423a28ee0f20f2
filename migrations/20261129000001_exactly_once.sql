-- Exactly-once delivery under real operations.
--
-- * Every message carries the job's `attempts`; every re-queue increments it,
--   so a worker still inside an older attempt can no longer claim or update
--   the job (its guarded UPDATEs match nothing).
-- * Outbox rows get a random token: the relay's push-once marker remembers
--   (outbox id, token), so an id handed out again after the identity
--   sequence was rewound (point-in-time restore, failover to an asynchronous
--   standby, restored backup, setval) is never mistaken for the earlier row.
-- * A publication records where a message went (lane, position in the lane,
--   Redis generation), so the reaper knows whether it still waits in its
--   lane, was popped by a worker that never claimed it, or was lost with
--   Redis's data.
-- * Change events carry the change itself, so a watcher sees every change
--   in order without reading the job again.

-- How many times the reaper found the job stuck since it was created,
-- retried or redriven: MAX_JOB_ATTEMPTS counts these. `attempts` counts
-- every hand-out and never goes down.
ALTER TABLE translation_jobs
    ADD COLUMN rescues integer NOT NULL DEFAULT 0 CHECK (rescues >= 0);

-- Which attempt of the job the message is for (also in the payload), and a
-- random non-zero token that tells this row from an earlier row that had
-- the same id.
ALTER TABLE outbox
    ADD COLUMN attempt integer NOT NULL DEFAULT 0,
    ADD COLUMN token   integer NOT NULL
        DEFAULT (1 + floor(random() * 2147483646))::integer CHECK (token <> 0);

-- Where the job's latest message went. `seq` is its position in the lane
-- (the lane's push counter in Redis after it), `generation` the Redis
-- generation it was pushed under (see queue_generations). Rows from before
-- this migration have neither.
ALTER TABLE job_publications
    ADD COLUMN attempt    integer NOT NULL DEFAULT 0,
    ADD COLUMN lane       text,
    ADD COLUMN seq        bigint,
    ADD COLUMN generation bigint;

-- The generation of each queue's Redis data. The same number lives in the
-- hash `{<queue>}:state` in Redis, a key without expiry written before the
-- first push: when Redis loses its data (a restart without persistence,
-- FLUSHALL, a failover to an empty replica), the key is gone or holds
-- another number, the service moves to a new generation, and every PENDING
-- job whose message was pushed under an older one is queued again.
CREATE TABLE queue_generations (
    queue      text   PRIMARY KEY,
    generation bigint NOT NULL CHECK (generation >= 0)
);

-- Change events: the changed row's state as JSON, so watchers apply it
-- without reading the job. `xid` lets a watcher that has just read the job
-- skip the events its read already contains. An error text too long for a
-- notification (8000 bytes) is left out and `reread` says so.
CREATE OR REPLACE FUNCTION notify_job_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    payload := json_build_object(
        'kind', 'job', 'job_id', NEW.id, 'xid', pg_current_xact_id()::text,
        'status', NEW.status, 'attempts', NEW.attempts, 'error', NEW.error,
        'updated_at', floor(extract(epoch FROM NEW.updated_at) * 1000000)::bigint)::text;
    IF octet_length(payload) > 7000 THEN
        payload := json_build_object(
            'kind', 'job', 'job_id', NEW.id, 'xid', pg_current_xact_id()::text,
            'status', NEW.status, 'attempts', NEW.attempts, 'reread', true,
            'updated_at', floor(extract(epoch FROM NEW.updated_at) * 1000000)::bigint)::text;
    END IF;
    PERFORM pg_notify('translation_job_events', payload);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION notify_subtask_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    payload := json_build_object(
        'kind', 'subtask', 'job_id', NEW.job_id, 'xid', pg_current_xact_id()::text,
        'subtask_id', NEW.id, 'status', NEW.status, 'attempts', NEW.attempts,
        'error', NEW.error,
        'updated_at', floor(extract(epoch FROM NEW.updated_at) * 1000000)::bigint)::text;
    IF octet_length(payload) > 7000 THEN
        payload := json_build_object(
            'kind', 'subtask', 'job_id', NEW.job_id, 'xid', pg_current_xact_id()::text,
            'subtask_id', NEW.id, 'status', NEW.status, 'attempts', NEW.attempts,
            'reread', true,
            'updated_at', floor(extract(epoch FROM NEW.updated_at) * 1000000)::bigint)::text;
    END IF;
    PERFORM pg_notify('translation_job_events', payload);
    RETURN NULL;
END
$$;

-- A subtask's attempts and error are part of what watchers see.
DROP TRIGGER translation_subtasks_notify_event ON translation_subtasks;
CREATE TRIGGER translation_subtasks_notify_event
    AFTER UPDATE ON translation_subtasks
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.attempts IS DISTINCT FROM NEW.attempts
          OR OLD.error IS DISTINCT FROM NEW.error)
    EXECUTE FUNCTION notify_subtask_event();
