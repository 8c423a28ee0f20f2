-- Jobs, their subtasks and the outbox, created together.
--
-- Workers update translation_jobs.status and the rows of translation_subtasks
-- directly, so the status columns are plain upper-case strings under a CHECK
-- constraint, and a trigger keeps updated_at current whoever writes.

CREATE FUNCTION touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TABLE translation_jobs (
    id                 uuid        PRIMARY KEY,
    -- The caller that created the job; part of the idempotency key.
    user_id            text        NOT NULL DEFAULT '',
    novel_id           uuid        NOT NULL,
    source_lang        text        NOT NULL DEFAULT '',
    target_lang        text        NOT NULL,
    target_fields      text[]      NOT NULL,
    enable_code_filter boolean     NOT NULL DEFAULT false,
    output_dir         text        NOT NULL,
    priority           text        NOT NULL DEFAULT 'NORMAL'
                                   CHECK (priority IN ('LOW', 'NORMAL', 'HIGH')),
    status             text        NOT NULL DEFAULT 'PENDING'
                                   CHECK (status IN ('PENDING', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'CANCELLED')),
    -- How many times the job was handed out again (stuck or retried).
    attempts           integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- Why the job failed, when it did.
    error              text,
    -- Optional idempotency key, unique per caller.
    request_id         text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX translation_jobs_user_request_key
    ON translation_jobs (user_id, request_id)
    WHERE request_id IS NOT NULL;

CREATE TRIGGER translation_jobs_touch_updated_at
    BEFORE UPDATE ON translation_jobs
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE TABLE translation_subtasks (
    id          uuid        PRIMARY KEY,
    job_id      uuid        NOT NULL REFERENCES translation_jobs (id) ON DELETE CASCADE,
    entity_type text        NOT NULL,
    entity_id   text        NOT NULL,
    status      text        NOT NULL DEFAULT 'PENDING'
                            CHECK (status IN ('PENDING', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'CANCELLED')),
    attempts    integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- Also the index that finds a job's subtasks.
    UNIQUE (job_id, entity_type, entity_id)
);

CREATE TRIGGER translation_subtasks_touch_updated_at
    BEFORE UPDATE ON translation_subtasks
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- Messages waiting to be pushed to Redis. A row is written in the same
-- transaction as the change that needs publishing and deleted by the relay in
-- the transaction that pushed it.
CREATE TABLE outbox (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id     uuid        NOT NULL,
    lane       text        NOT NULL CHECK (lane IN ('high', 'normal', 'low', 'dead')),
    -- The exact JSON pushed onto the list.
    payload    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- When the relay last pushed each job to Redis. A narrow table of its own:
-- stamping it costs the relay one small insert per job instead of an update
-- of the wide, indexed job row (and its trigger). Cleared when a job is
-- queued again. No foreign key: it would add a lookup per row, and a stamp
-- without a job is harmless.
CREATE TABLE job_publications (
    job_id       uuid        PRIMARY KEY,
    published_at timestamptz NOT NULL
);

-- One row: a random namespace for the relay's push-once markers in Redis, so
-- that outbox ids of another database (or of this one after it is recreated)
-- never collide with markers left behind.
CREATE TABLE relay_identity (
    singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    marker_namespace uuid    NOT NULL DEFAULT gen_random_uuid()
);
INSERT INTO relay_identity DEFAULT VALUES;
