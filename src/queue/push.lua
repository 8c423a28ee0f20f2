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
-- ARGV[L+5]      9 bytes per message, in message order: index into KEYS of
--                its lane (1 byte), index into KEYS of its marker (2 bytes,
--                big-endian), byte offset of its 4-byte slot in the marker
--                (2 bytes, big-endian), its token (4 bytes)
-- ARGV[L+6..]    the payloads, in message order
--
-- (One packed argument rather than four per message: Redis parses one
-- string instead of thousands, and the script reads each marker once.)
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
local meta = ARGV[5 + lanes]
local payload_at = 6 + lanes
local count = #ARGV - payload_at + 1
if #meta ~= count * 9 then
  return redis.error_reply('push: ' .. #meta .. ' bytes of metadata for ' .. count .. ' messages')
end

-- Each marker is read once, whole.
local blocks = {}
local lane_of, marker_of, offset_of, token_of = {}, {}, {}, {}
local fresh = {}
local fresh_of = {}
for m = 1, count do
  local at = (m - 1) * 9 + 1
  local lane, k1, k2, o1, o2 = string.byte(meta, at, at + 4)
  local marker = k1 * 256 + k2
  local offset = o1 * 256 + o2
  local token = string.sub(meta, at + 5, at + 8)
  local block = blocks[marker]
  if block == nil then
    block = redis.call('GET', KEYS[marker]) or ''
    blocks[marker] = block
  end
  lane_of[m], marker_of[m], offset_of[m], token_of[m] = lane, marker, offset, token
  if string.sub(block, offset + 1, offset + 4) ~= token then
    local list = fresh[lane]
    if list == nil then
      list = {}
      fresh[lane] = list
    end
    list[#list + 1] = ARGV[payload_at + m - 1]
    fresh_of[m] = #list
  end
end

local totals = {}
local fresh_count = {}
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
local marks = {}
for m = 1, count do
  local lane = lane_of[m]
  if fresh_of[m] then
    local list = marks[marker_of[m]]
    if list == nil then
      list = {}
      marks[marker_of[m]] = list
    end
    list[#list + 1] = m
    result[m + 1] = totals[lane] - fresh_count[lane] + fresh_of[m]
  else
    result[m + 1] = -1 - totals[lane]
  end
end

-- Each touched marker is written once: its old bytes with the new tokens
-- in their slots, at full size (grown piecemeal, a string may take twice
-- its length), with a fresh lifetime.
local function by_offset(a, b)
  return offset_of[a] < offset_of[b]
end
for marker, list in pairs(marks) do
  table.sort(list, by_offset)
  local old = blocks[marker]
  if #old < block_bytes then
    old = old .. string.rep('\0', block_bytes - #old)
  end
  local pieces = {}
  local done = 0
  for _, m in ipairs(list) do
    local offset = offset_of[m]
    if offset >= done then
      if offset > done then
        pieces[#pieces + 1] = string.sub(old, done + 1, offset)
      end
      pieces[#pieces + 1] = token_of[m]
      done = offset + 4
    end
  end
  if done < #old then
    pieces[#pieces + 1] = string.sub(old, done + 1)
  end
  redis.call('SET', KEYS[marker], table.concat(pieces), 'EX', ttl)
end
-- The markers of messages skipped as already pushed get a full lifetime
-- again too: a retried batch stays remembered, and the script always writes
-- something, so a WAIT after it covers everything this server holds (the
-- retry of a batch whose push reached Redis otherwise writes nothing).
for marker in pairs(blocks) do
  if marks[marker] == nil then
    redis.call('EXPIRE', KEYS[marker], ttl)
  end
end
return result
