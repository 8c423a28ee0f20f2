-- Scheduled jobs and automatic retries with backoff.
--
-- * `translation_jobs.scheduled_at`: when the job's current attempt is due
--   (the caller's `schedule_time`, or the time a retry waits for); NULL for
--   a job queued at once.
-- * `max_attempts`: how many of the job's attempts may fail (a worker's
--   FAILED, or a rescue of the job found stuck) before a failure is final.
-- * `failures`: attempts that failed so far, since the job was created or
--   last retried or redriven by hand.
-- * `retryable`: a worker that knows a retry cannot help sets it to false in
--   the same statement as `status = 'FAILED'`; the failure is then final.
-- * `outbox_scheduled`: messages that become outbox rows at `due_at`. A row
--   with a NULL payload is built from the job when due (a retry, a dead
--   letter); a scheduled create carries its exact payload. Kept apart from
--   `outbox` so the relay's claim never looks at a row that is not due.
-- * `retry_settings`: RETRY_BACKOFF_BASE and RETRY_BACKOFF_MAX, written by
--   the service at start, read by the trigger below.
--
-- Every new column has a constant default: no table rewrite. The checks are
-- added NOT VALID (no scan under the table lock); the service never writes a
-- value outside them. The backfill of jobs in flight is the next migration,
-- a transaction of its own, so that no row is written under this one's
-- table lock.

ALTER TABLE translation_jobs
    ADD COLUMN scheduled_at timestamptz,
    ADD COLUMN max_attempts integer NOT NULL DEFAULT 1,
    ADD COLUMN failures     integer NOT NULL DEFAULT 0,
    ADD COLUMN retryable    boolean NOT NULL DEFAULT true;

ALTER TABLE translation_jobs
    ADD CONSTRAINT translation_jobs_max_attempts_check CHECK (max_attempts >= 1) NOT VALID,
    ADD CONSTRAINT translation_jobs_failures_check CHECK (failures >= 0) NOT VALID;

CREATE TABLE outbox_scheduled (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id     uuid        NOT NULL,
    attempt    integer     NOT NULL,
    lane       text        NOT NULL CHECK (lane IN ('high', 'normal', 'low', 'dead')),
    payload    text,
    due_at     timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_scheduled_due_at_idx ON outbox_scheduled (due_at);
CREATE INDEX outbox_scheduled_job_id_idx ON outbox_scheduled (job_id);

CREATE TABLE retry_settings (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    backoff_base_ms bigint  NOT NULL CHECK (backoff_base_ms >= 0),
    backoff_max_ms  bigint  NOT NULL CHECK (backoff_max_ms >= 0)
);
INSERT INTO retry_settings (backoff_base_ms, backoff_max_ms) VALUES (10000, 3600000);

-- A worker's FAILED (IN_PROGRESS to FAILED with `failures` unchanged: the
-- service's own failures count themselves) counts one failure. With
-- attempts left and `retryable`, the job goes back to PENDING as a new
-- attempt, keeps the worker's error, and its message is scheduled after
-- base * 2^(failures - 1), with up to 20% jitter either way, capped at the
-- maximum. Otherwise the failure is final and the message goes to the dead
-- lane. Only the job row and a new outbox_scheduled row are written here:
-- the subtasks are reset (and their guard moved) when the row comes due,
-- in the service's lock order (subtasks, then the job), so this trigger,
-- which runs holding the job, never waits for a subtask.
CREATE FUNCTION retry_failed_job() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    base_ms  double precision;
    max_ms   double precision;
    delay_ms double precision;
    due      timestamptz;
BEGIN
    IF NEW.failures IS DISTINCT FROM OLD.failures THEN
        RETURN NEW;
    END IF;
    NEW.failures := OLD.failures + 1;
    IF NEW.retryable AND NEW.failures < NEW.max_attempts THEN
        SELECT backoff_base_ms, backoff_max_ms INTO base_ms, max_ms FROM retry_settings;
        base_ms := coalesce(base_ms, 10000);
        max_ms := coalesce(max_ms, 3600000);
        delay_ms := least(max_ms,
                          base_ms * power(2::double precision, least(NEW.failures - 1, 60))
                                  * (0.8 + 0.4 * random()));
        due := clock_timestamp() + delay_ms * interval '1 millisecond';
        NEW.status := 'PENDING';
        NEW.attempts := OLD.attempts + 1;
        NEW.scheduled_at := due;
        INSERT INTO outbox_scheduled (job_id, attempt, lane, due_at)
        VALUES (NEW.id, NEW.attempts, lower(NEW.priority), due);
    ELSE
        INSERT INTO outbox_scheduled (job_id, attempt, lane, due_at)
        VALUES (NEW.id, NEW.attempts, 'dead', clock_timestamp());
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER translation_jobs_retry_failed
    BEFORE UPDATE ON translation_jobs
    FOR EACH ROW
    WHEN (OLD.status = 'IN_PROGRESS' AND NEW.status = 'FAILED')
    EXECUTE FUNCTION retry_failed_job();
