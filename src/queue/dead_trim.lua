-- Trims the dead lane from its head (its oldest end) without ever dropping a
-- message it was not asked to: pops the head while it equals the next
-- expected message, and stops at the first that differs (a redrive took it
-- meanwhile). Then, when the lane is longer than the cap, drops its oldest
-- messages down to the cap.
--
-- KEYS[1]  the dead lane `{q}:dead`
-- ARGV[1]  the cap on its length (0: none)
-- ARGV[2..] the messages to drop, oldest first, as read from the head
-- Returns the number of messages dropped.
local dropped = 0
for i = 2, #ARGV do
  if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[i] then
    break
  end
  redis.call('LPOP', KEYS[1])
  dropped = dropped + 1
end
local cap = tonumber(ARGV[1])
if cap > 0 then
  local over = redis.call('LLEN', KEYS[1]) - cap
  if over > 0 then
    redis.call('LTRIM', KEYS[1], over, -1)
    dropped = dropped + over
  end
end
return dropped
