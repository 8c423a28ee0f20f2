-- Pushes each message onto one list unless its outbox id was pushed before.
--
-- KEYS[1]      the list (a lane of the queue)
-- KEYS[2..n]   marker bitmaps, one per block of outbox ids, all sharing the
--              list's hash tag so that everything lives in one cluster slot
-- ARGV[1]      marker lifetime in seconds
-- ARGV[2..]    triples: index into KEYS of the marker, bit offset, payload
--
-- SETBIT returns the previous bit, so checking and marking is one step, and
-- the whole script runs atomically: a message is pushed exactly when its
-- marker goes from 0 to 1. Returns the number of messages pushed.
local ttl = tonumber(ARGV[1])
local fresh = {}
for i = 2, #ARGV, 3 do
  local marker = KEYS[tonumber(ARGV[i])]
  if redis.call('SETBIT', marker, tonumber(ARGV[i + 1]), 1) == 0 then
    fresh[#fresh + 1] = ARGV[i + 2]
  end
end
for k = 2, #KEYS do
  redis.call('EXPIRE', KEYS[k], ttl)
end
if #fresh > 0 then
  redis.call('RPUSH', KEYS[1], unpack(fresh))
end
return #fresh
