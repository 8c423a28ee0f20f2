-- Jobs in flight at the upgrade keep the rescue budget they were created
-- under (MAX_JOB_ATTEMPTS, whose default was 3), their rescues counted as
-- failed attempts. Row locks only: creates go on; a worker's update of one
-- of these jobs waits for this short statement.
UPDATE translation_jobs
   SET max_attempts = 3, failures = rescues
 WHERE status IN ('PENDING', 'IN_PROGRESS');
