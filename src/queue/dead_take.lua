-- Takes dead letters for a redrive without ever losing one: moves messages
-- from the head of the dead lane to the tail of the processing list (LMOVE,
-- atomically, one by one) until the processing list holds `limit`, then
-- returns its first `limit` entries. Entries a crashed or concurrent
-- redrive left there come first, so they are finished too.
--
-- KEYS[1]  the dead lane `{q}:dead`
-- KEYS[2]  the processing list `{q}:dead:redriving`
-- ARGV[1]  limit
-- ARGV[2]  "1" to take new messages from the dead lane, "0" to only return
--          what the processing list already holds (recovery at start-up)
local limit = tonumber(ARGV[1])
if ARGV[2] == '1' then
  local missing = limit - redis.call('LLEN', KEYS[2])
  for _ = 1, missing do
    if not redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') then
      break
    end
  end
end
return redis.call('LRANGE', KEYS[2], 0, limit - 1)
