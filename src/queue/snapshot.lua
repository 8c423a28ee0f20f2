-- Reads, in one atomic step, the queue's generation and for each lane its
-- push counter and its length. Writes nothing.
--
-- KEYS[1]      the queue's state hash `{q}:state`
-- KEYS[2..]    the lanes
-- ARGV[1..]    the lanes' names (the counter field is `pushed:<name>`)
--
-- Returns {generation or false, pushed_1, length_1, pushed_2, length_2, ...}.
-- A lane's counter minus its length is how many of its messages were popped
-- (workers pop from the head only), so a message at position p is still
-- waiting exactly when p is above that.
local result = {redis.call('HGET', KEYS[1], 'generation')}
for i = 2, #KEYS do
  result[#result + 1] = tonumber(redis.call('HGET', KEYS[1], 'pushed:' .. ARGV[i - 1]) or '0')
  result[#result + 1] = redis.call('LLEN', KEYS[i])
end
return result
