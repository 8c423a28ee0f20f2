-- A worker's update of a subtask fires one trigger, not two.
--
-- Every worker statement on a subtask runs translation_subtasks_touch_job
-- (its progress is the job's heartbeat). The change event of a watched job
-- came from a second AFTER trigger, translation_subtasks_watchers_notify:
-- a trigger event queued and a function entered per update even when
-- nobody watches, which bench/notify.sh measured at 0.76 to 0.99 of the
-- same statements without it on a loaded machine. The worker's path now
-- looks for a watcher inside touch_job_of_subtask, after it has taken the
-- job's row lock with its UPDATE (so the reasoning of
-- 20261209000001_watched_notifications.sql holds: a change either finished
-- before a registration, which locks the job FOR SHARE, or sees it).
--
-- The second trigger stays for the service's own transitions, which move
-- a subtask's guard (`job_attempt`: cancel, retry, redrive, rescue, a
-- schedule coming due) and do not touch the job from the subtask (they
-- lock and update the job themselves, first). Between them the two fire
-- for every change of status, attempts or error, as before, and never
-- both for one row.

-- The event of one subtask row (the payload src/watch/event.rs parses).
CREATE FUNCTION send_subtask_event(s translation_subtasks) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    payload := json_build_object(
        'kind', 'subtask', 'job_id', s.job_id, 'xid', pg_current_xact_id()::text,
        'subtask_id', s.id, 'status', s.status, 'attempts', s.attempts,
        'error', s.error,
        'updated_at', floor(extract(epoch FROM s.updated_at) * 1000000)::bigint)::text;
    IF octet_length(payload) > 7000 THEN
        payload := json_build_object(
            'kind', 'subtask', 'job_id', s.job_id, 'xid', pg_current_xact_id()::text,
            'subtask_id', s.id, 'status', s.status, 'attempts', s.attempts,
            'reread', true,
            'updated_at', floor(extract(epoch FROM s.updated_at) * 1000000)::bigint)::text;
    END IF;
    PERFORM pg_notify('translation_job_events', payload);
END
$$;

CREATE OR REPLACE FUNCTION notify_subtask_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM watched_jobs WHERE job_id = NEW.job_id) THEN
        PERFORM send_subtask_event(NEW);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION touch_job_of_subtask() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE translation_jobs SET updated_at = now() WHERE id = NEW.job_id;
    IF (OLD.status IS DISTINCT FROM NEW.status
        OR OLD.attempts IS DISTINCT FROM NEW.attempts
        OR OLD.error IS DISTINCT FROM NEW.error)
       AND EXISTS (SELECT 1 FROM watched_jobs WHERE job_id = NEW.job_id) THEN
        PERFORM send_subtask_event(NEW);
    END IF;
    RETURN NULL;
END
$$;

-- touch_job fires when the guard stays (WHEN OLD.job_attempt =
-- NEW.job_attempt, 20261207000001_subtask_guard.sql); this one when it moves.
DROP TRIGGER translation_subtasks_watchers_notify ON translation_subtasks;
CREATE TRIGGER translation_subtasks_watchers_notify
    AFTER UPDATE ON translation_subtasks
    FOR EACH ROW
    WHEN (OLD.job_attempt IS DISTINCT FROM NEW.job_attempt
          AND (OLD.status IS DISTINCT FROM NEW.status
               OR OLD.attempts IS DISTINCT FROM NEW.attempts
               OR OLD.error IS DISTINCT FROM NEW.error))
    EXECUTE FUNCTION notify_subtask_event();
