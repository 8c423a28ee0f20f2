-- Moves every message of a lane's old key (`<queue>:high`, before lanes
-- shared a slot) to the end of its new key (`{<queue>}:high`), in order,
-- then deletes the old key. Only on a single Redis: on a cluster the two
-- keys live in different slots.
--
-- KEYS[1] the old key, KEYS[2] the new key. Returns how many moved.
local moved = 0
while true do
  local items = redis.call('LRANGE', KEYS[1], 0, 999)
  if #items == 0 then
    break
  end
  redis.call('RPUSH', KEYS[2], unpack(items))
  redis.call('LTRIM', KEYS[1], #items, -1)
  moved = moved + #items
end
return moved
