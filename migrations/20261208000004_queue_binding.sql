-- The queue this database serves. One database holds one queue's jobs: the
-- relay of a deployment with another TRANSLATION_QUEUE would publish them
-- onto its own lanes, where the first deployment's workers never look. The
-- first service to start records its name; a service with another name
-- refuses to start until `translation-jobs rebind-queue` moves the record.
CREATE TABLE queue_binding (
    singleton boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    queue     text        NOT NULL,
    bound_at  timestamptz NOT NULL DEFAULT now()
);

-- A database already in use keeps the queue its relays published to.
INSERT INTO queue_binding (queue)
SELECT queue FROM queue_generations ORDER BY generation DESC LIMIT 1;
