-- Autovacuum for the outbox tables by row count rather than by table size:
-- every published row is a dead tuple, and a table that stays small while
-- millions of rows pass through it would otherwise wait for 20% of its
-- size in dead rows (the default scale factor) between vacuums, with every
-- relay claim stepping over them. SET (...) takes a SHARE UPDATE EXCLUSIVE
-- lock: creates and claims go on meanwhile.
ALTER TABLE outbox SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 10000
);
ALTER TABLE outbox_scheduled SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000
);
