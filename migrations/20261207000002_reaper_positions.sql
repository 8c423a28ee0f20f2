-- What the reaper needs to judge a message by what happened to it in Redis.
--
-- * `job_publications.popped_seen_at`: when a reaper pass first saw the
--   message popped (its position at or below the lane's popped count) while
--   the job was still PENDING. A popped message counts as popped and never
--   claimed only once it has been seen so for STUCK_JOB_TIMEOUT: a healthy
--   worker between its BLPOP and its claim is not taken for a dead one,
--   however long the message waited before the pop.

ALTER TABLE job_publications ADD COLUMN popped_seen_at timestamptz;
