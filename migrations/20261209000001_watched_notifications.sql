-- Change events only for the jobs somebody watches.
--
-- A transaction that calls pg_notify takes, at commit, one cluster-wide lock
-- and holds it through its WAL flush, so notifying commits run one at a
-- time: a worker's subtask update ran at about a third of its rate with the
-- triggers below notifying every change, whether or not anyone listened.
-- Now each replica of the service records the jobs it has watch streams on
-- (`watched_jobs`), and the triggers notify only changes of those jobs. An
-- update of a job nobody watches pays one index lookup and no lock.
--
-- * `watched_jobs`: one row per job and replica (`watcher`, a random id per
--   process), written when the replica's first stream of the job opens and
--   deleted when its last closes. The replica renews `expires_at` of its
--   rows while they are in use; any replica deletes rows whose lease ran
--   out (a replica that crashed). An expired row that is still there only
--   costs notifications.
-- * No foreign key to translation_jobs: the row goes with the stream, and a
--   key would add a lookup to each registration and a lock to each delete
--   of a job.
-- * A registration locks the job's row FOR SHARE in the statement that
--   inserts it. Every transaction that changes a job or one of its subtasks
--   holds the job's row lock when its trigger looks for the job in
--   `watched_jobs` (a worker's subtask update takes it through
--   translation_subtasks_touch_job, which fires before
--   translation_subtasks_watchers_notify: AFTER triggers fire in name
--   order; the service's transitions lock the job before they update its
--   subtasks). So a change either finished before the registration, and the
--   stream's read, which comes after it, holds it; or its trigger sees the
--   registration and notifies. No change falls between the two.
-- * Rows are small and renewed in place: room on each page keeps the
--   renewals HOT (the index is not touched), so the lookups the triggers
--   make stay on a small index.

CREATE TABLE watched_jobs (
    job_id     uuid        NOT NULL,
    watcher    uuid        NOT NULL,
    since      timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, watcher)
) WITH (fillfactor = 50);

-- The payloads are those of 20261129000001_exactly_once.sql, unchanged
-- (src/watch/event.rs parses them).
CREATE OR REPLACE FUNCTION notify_job_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM watched_jobs WHERE job_id = NEW.id) THEN
        RETURN NULL;
    END IF;
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
    IF NOT EXISTS (SELECT 1 FROM watched_jobs WHERE job_id = NEW.job_id) THEN
        RETURN NULL;
    END IF;
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

-- Renamed so that it fires after translation_subtasks_touch_job, which
-- takes the job's row lock (see above).
DROP TRIGGER translation_subtasks_notify_event ON translation_subtasks;
CREATE TRIGGER translation_subtasks_watchers_notify
    AFTER UPDATE ON translation_subtasks
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.attempts IS DISTINCT FROM NEW.attempts
          OR OLD.error IS DISTINCT FROM NEW.error)
    EXECUTE FUNCTION notify_subtask_event();
