-- The worker contract's guard on the row each statement updates.
--
-- Under READ COMMITTED an UPDATE that waited for a row lock re-checks only
-- the row it updates; a guard in a subquery on translation_jobs keeps the
-- answer it had before the wait. So every subtask row carries the attempt
-- whose worker may write it: the job's `attempts` while the job is PENDING
-- or IN_PROGRESS, -1 once a cancel or a dead letter closed the job to every
-- worker. The service rewrites it in the same transaction as every
-- hand-out (retry, redrive, rescue, re-queue of a lost message), cancel and
-- dead letter, after taking the subtask rows' locks; a worker's statement
-- that waited behind such a transaction re-checks `job_attempt` and matches
-- nothing.
ALTER TABLE translation_subtasks
    ADD COLUMN job_attempt integer NOT NULL DEFAULT 0;

-- The heartbeat is a worker's progress: the service's own rewrite of the
-- guard must not count as one (it runs in a transaction that updates the
-- job anyway, and would touch the job once per subtask).
DROP TRIGGER translation_subtasks_touch_job ON translation_subtasks;
CREATE TRIGGER translation_subtasks_touch_job
    AFTER UPDATE ON translation_subtasks
    FOR EACH ROW
    WHEN (OLD.job_attempt = NEW.job_attempt)
    EXECUTE FUNCTION touch_job_of_subtask();

-- Existing rows: subtasks of live jobs handed out before carry the job's
-- attempt, those of cancelled and failed jobs are closed. Subtasks of new
-- jobs (attempt 0) and of completed jobs already hold the right value or
-- take no writes, and are left alone.
UPDATE translation_subtasks AS s
   SET job_attempt = CASE WHEN j.status IN ('PENDING', 'IN_PROGRESS') THEN j.attempts ELSE -1 END
  FROM translation_jobs AS j
 WHERE s.job_id = j.id
   AND j.status <> 'COMPLETED'
   AND s.job_attempt <> CASE WHEN j.status IN ('PENDING', 'IN_PROGRESS') THEN j.attempts ELSE -1 END;
