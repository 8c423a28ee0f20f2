-- What the reaper needs to judge a message by what happened to it in Redis.
--
-- * `job_publications.popped_seen_at`: when a reaper pass first saw the
--   message popped (its position at or below the lane's popped count) while
--   the job was still PENDING. A popped message counts as popped and never
--   claimed only once it has been seen so for STUCK_JOB_TIMEOUT: a healthy
--   worker between its BLPOP and its claim is not taken for a dead one,
--   however long the message waited before the pop.
-- * `lane_positions`: the highest position recorded per queue, generation
--   and lane (the relay raises it with each round it records). A push that
--   finds its lane's counter below it has met a Redis that lost writes (a
--   failover to a replica that missed the last pushes): the positions above
--   that counter are handed out again to new messages, so they can no longer
--   tell the lost messages from the waiting ones.
-- * `lane_rollbacks`: such a rollback, as a push found it: the lane's
--   counter before and after that push (`after_seq`, `own_up_to`), the jobs
--   it put there (`own_jobs`), and a time before it (`pushed_before`). Every
--   PENDING job whose current message was recorded above `after_seq`, other
--   than those jobs, is lost if it is at or below `own_up_to` (only that
--   push took those positions since the rollback) or was recorded before
--   `pushed_before` (later pushes by other relays were recorded after it).
--   The reaper queues those again, and deletes the row once none is left
--   and no round pushed before the rollback can still commit.

ALTER TABLE job_publications ADD COLUMN popped_seen_at timestamptz;

CREATE TABLE lane_positions (
    queue      text   NOT NULL,
    generation bigint NOT NULL,
    lane       text   NOT NULL,
    seq        bigint NOT NULL,
    PRIMARY KEY (queue, generation, lane)
);

CREATE TABLE lane_rollbacks (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue         text        NOT NULL,
    generation    bigint      NOT NULL,
    lane          text        NOT NULL,
    after_seq     bigint      NOT NULL,
    own_up_to     bigint      NOT NULL,
    own_jobs      uuid[]      NOT NULL,
    pushed_before timestamptz NOT NULL,
    found_at      timestamptz NOT NULL DEFAULT now()
);
