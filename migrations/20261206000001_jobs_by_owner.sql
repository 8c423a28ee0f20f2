-- A caller without the admin scope lists only its own jobs, newest first:
-- WHERE user_id = $1 [AND status = ...] ORDER BY id DESC. Without this index
-- that walks the primary key over every caller's jobs.
CREATE INDEX IF NOT EXISTS translation_jobs_user_id_id ON translation_jobs (user_id, id);
