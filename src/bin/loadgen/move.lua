-- A consumer's pop (the load generator's and the fault suite's): moves up to ARGV[1] messages from the lanes
-- (KEYS[1..n-1], in order) to the processing list (KEYS[n]) in one atomic
-- step and returns them. Reads first, then appends to the processing list,
-- then trims the lane: a write Redis refuses (OOM, READONLY) changes
-- nothing, and a reply lost on the way (Redis killed, connection cut) loses
-- no message, which is then found in the processing list.
local max = tonumber(ARGV[1])
local processing = KEYS[#KEYS]
local moved = {}
for i = 1, #KEYS - 1 do
  local room = max - #moved
  if room <= 0 then
    break
  end
  local items = redis.call('LRANGE', KEYS[i], 0, room - 1)
  if #items > 0 then
    redis.call('RPUSH', processing, unpack(items))
    redis.call('LTRIM', KEYS[i], #items, -1)
    for _, item in ipairs(items) do
      moved[#moved + 1] = item
    end
  end
end
return moved
