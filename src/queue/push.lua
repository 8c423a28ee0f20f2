-- Pushes a batch of outbox messages onto their lanes, each at most once.
--
-- KEYS[1]        the queue's state hash `{q}:state` (generation, owner, and
--                a push counter per lane)
-- KEYS[2..]      the lanes, then the marker strings; all keys share the
--                queue's hash tag, so they live in one cluster slot
-- ARGV[1]        the generation the caller expects in the state hash
-- ARGV[2]        marker lifetime in seconds
-- ARGV[3]        marker bytes per block (the length every marker key has)
-- ARGV[4]        L, the number of lanes; KEYS[2..L+1] are the lanes and
--                ARGV[5..L+4] their names (the counter field is `pushed:<name>`)
-- then 4 values per message: index into KEYS of its lane, index into KEYS
-- of its marker, byte offset of its 4-byte slot in the marker, its token
-- (4 bytes), and then all payloads, in message order.
--
-- A marker slot holds the token of the outbox row that was pushed from that
-- id. A message is pushed unless its slot already holds its own token, so a
-- retried batch whose first attempt reached Redis pushes nothing twice, and
-- an id handed out again (its row has another token) is pushed normally.
--
-- Order of effects, so a failing script writes nothing that matters: check
-- the generation and read every marker (reads only; a key of the wrong type
-- fails here), push, count, and only then mark. A push that fails (the lane
-- holds a string: WRONGTYPE; out of memory, refused before the first write)
-- leaves no marker behind, so the retry pushes.
--
-- Returns {-1, found generation or false} when the generation does not
-- match (nothing written), else {1, p_1, ..., p_n}: for each message pushed
-- now, its position in its lane (the lane's counter after it, at least 1);
-- for a message skipped as already pushed, -1 - the lane's counter now
-- (which is at least its real position).
local found = redis.call('HGET', KEYS[1], 'generation')
if found ~= ARGV[1] then
  return {-1, found}
end
local ttl = tonumber(ARGV[2])
local block_bytes = tonumber(ARGV[3])
local lanes = tonumber(ARGV[4])
local first = 5 + lanes
local count = (#ARGV - first + 1) / 5
local payload_at = first + count * 4

local fresh = {}
local fresh_count = {}
local fresh_of = {}
for m = 1, count do
  local at = first + (m - 1) * 4
  local marker = KEYS[tonumber(ARGV[at + 1])]
  local offset = tonumber(ARGV[at + 2])
  if redis.call('GETRANGE', marker, offset, offset + 3) ~= ARGV[at + 3] then
    local lane = tonumber(ARGV[at])
    fresh[lane] = fresh[lane] or {}
    table.insert(fresh[lane], ARGV[payload_at + m - 1])
    fresh_of[m] = #fresh[lane]
  end
end

local totals = {}
for lane = 2, lanes + 1 do
  local field = 'pushed:' .. ARGV[3 + lane]
  if fresh[lane] then
    redis.call('RPUSH', KEYS[lane], unpack(fresh[lane]))
    totals[lane] = redis.call('HINCRBY', KEYS[1], field, #fresh[lane])
    fresh_count[lane] = #fresh[lane]
  else
    totals[lane] = tonumber(redis.call('HGET', KEYS[1], field) or '0')
    fresh_count[lane] = 0
  end
end

local result = {1}
local touched = {}
for m = 1, count do
  local at = first + (m - 1) * 4
  local lane = tonumber(ARGV[at])
  if fresh_of[m] then
    local marker = KEYS[tonumber(ARGV[at + 1])]
    if not touched[marker] then
      touched[marker] = true
      -- Full size at once: grown piecemeal, a string may take twice its length.
      if redis.call('STRLEN', marker) < block_bytes then
        redis.call('SETRANGE', marker, block_bytes - 1, '\0')
      end
    end
    redis.call('SETRANGE', marker, tonumber(ARGV[at + 2]), ARGV[at + 3])
    result[m + 1] = totals[lane] - fresh_count[lane] + fresh_of[m]
  else
    result[m + 1] = -1 - totals[lane]
  end
end
-- Every marker of the batch gets a full lifetime again, those of skipped
-- messages too: a retried batch stays remembered, and the script always
-- writes something, so a WAIT after it covers everything this server holds
-- (the retry of a batch whose push reached Redis otherwise writes nothing).
for k = lanes + 2, #KEYS do
  redis.call('EXPIRE', KEYS[k], ttl)
end
return result
