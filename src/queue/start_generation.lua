-- Starts a new generation of the queue's Redis data, if the state hash still
-- holds the generation the caller read (compare and set).
--
-- KEYS[1]   the queue's state hash `{q}:state`
-- ARGV[1]   the generation the caller found ('' for none)
-- ARGV[2]   the new generation
-- ARGV[3]   the owner: the database's identity, so two databases never
--           share one queue unnoticed
--
-- Returns {1, new} when set, {0, found} when someone else changed it first.
-- The push counters start again from zero with the new generation.
local found = redis.call('HGET', KEYS[1], 'generation')
if (found or '') ~= ARGV[1] then
  return {0, found}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'generation', ARGV[2], 'owner', ARGV[3])
return {1, ARGV[2]}
