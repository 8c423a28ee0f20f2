-- Listing, stuck-job rescue, progress as heartbeat and change events.

-- Listing newest first: job ids are UUIDv7, so id order is creation order
-- and the primary key serves the unfiltered list; these serve the filters.
CREATE INDEX translation_jobs_status_id_idx ON translation_jobs (status, id DESC);
CREATE INDEX translation_jobs_novel_id_id_idx ON translation_jobs (novel_id, id DESC);

-- The reaper finds jobs in progress through the status index: there are
-- about as many as there are workers. (No index on updated_at: it changes on
-- every update, and indexing it would make every update a non-HOT one.)

-- Progress is the heartbeat: any update of a subtask also moves its job's
-- updated_at, so a worker that is making progress is never rescued from
-- under itself. (Only on UPDATE: creating subtasks must not touch the job.)
CREATE FUNCTION touch_job_of_subtask() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE translation_jobs SET updated_at = now() WHERE id = NEW.job_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER translation_subtasks_touch_job
    AFTER UPDATE ON translation_subtasks
    FOR EACH ROW EXECUTE FUNCTION touch_job_of_subtask();

-- Change events for WatchTranslationJob: a small payload on the channel
-- translation_job_events whenever a job's status, attempts or error change,
-- or a subtask's status changes; workers that update the tables directly
-- produce events without knowing about them. Inserts do not notify: a
-- notifying transaction takes a lock that serialises commits, and a new job
-- has no watcher yet.
CREATE FUNCTION notify_job_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('translation_job_events', NEW.id::text);
    RETURN NULL;
END
$$;

CREATE FUNCTION notify_subtask_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('translation_job_events', NEW.job_id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER translation_jobs_notify_event
    AFTER UPDATE ON translation_jobs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.attempts IS DISTINCT FROM NEW.attempts
          OR OLD.error IS DISTINCT FROM NEW.error)
    EXECUTE FUNCTION notify_job_event();

CREATE TRIGGER translation_subtasks_notify_event
    AFTER UPDATE ON translation_subtasks
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION notify_subtask_event();
