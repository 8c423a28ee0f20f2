-- Ends a redrive: removes the handled messages from the processing list and
-- puts the ones that could not be read back at the tail of the dead lane
-- (only those still in the processing list, so that two redrives finishing
-- the same message do not put it back twice). Returns the dead lane's length.
--
-- KEYS[1]  the dead lane `{q}:dead`
-- KEYS[2]  the processing list `{q}:dead:redriving`
-- ARGV[1]  how many of the following messages were handled
-- ARGV[2..1+ARGV[1]]  handled messages (removed)
-- ARGV[2+ARGV[1]..]   unreadable messages (moved back to the dead lane)
local handled = tonumber(ARGV[1])
for i = 2, handled + 1 do
  redis.call('LREM', KEYS[2], 1, ARGV[i])
end
for i = handled + 2, #ARGV do
  if redis.call('LREM', KEYS[2], 1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[1], ARGV[i])
  end
end
return redis.call('LLEN', KEYS[1])
