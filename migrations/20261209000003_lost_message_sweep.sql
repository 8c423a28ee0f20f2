-- Where the reaper's search for lost messages stands, per queue.
--
-- The search looks at PENDING jobs (whose message may have been popped and
-- never claimed, or lost with Redis's data) in id order, a bounded number
-- per pass, and goes on after `after_id` at the next pass, whichever
-- replica runs it; NULL starts again from the lowest id. A pass holds the
-- row locked while it works, so replicas take turns instead of repeating
-- each other's reads.
CREATE TABLE lost_message_sweeps (
    queue    text PRIMARY KEY,
    after_id uuid
);
