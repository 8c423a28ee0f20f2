-- Pushes a batch of outbox messages onto their lanes, each at most once.
--
-- KEYS[1]          the queue's state hash `{q}:state` (generation, owner,
--                  and a push counter per lane)
-- KEYS[2..L+1]     the lanes, then KEYS[L+2..] the marker strings; all keys
--                  share the queue's hash tag, so they live in one cluster
--                  slot
-- ARGV[1]          the generation the caller expects in the state hash
-- ARGV[2]          marker lifetime in seconds
-- ARGV[3]          marker bytes per block (the length every marker key has)
-- ARGV[4]          L, the number of lanes
-- ARGV[5..L+4]     the lanes' names (the counter field is `pushed:<name>`)
-- ARGV[L+5..2L+4]  how many messages each lane gets; the payloads come
--                  grouped by lane, in KEYS order, each lane in id order
-- ARGV[2L+5]       the runs: the messages' marker slots as runs of adjacent
--                  slots, 6 bytes each: index into KEYS of the marker (2
--                  bytes, big-endian), byte offset of the first slot (2),
--                  number of slots (2)
-- ARGV[2L+6]       the runs' tokens, 4 bytes per slot, in run order
-- ARGV[2L+7]       8 bytes per message, in payload order: index into KEYS of
--                  its marker (2 bytes), byte offset of its slot (2), its
--                  token (4)
-- ARGV[2L+8..]     the payloads
--
-- A marker slot holds the token of the outbox row that was pushed from that
-- id (tokens are never zero). A message is pushed unless its slot already
-- holds its own token, so a retried batch whose first attempt reached Redis
-- pushes nothing twice, and an id handed out again (its row has another
-- token) is pushed normally.
--
-- The usual batch has never been pushed: every slot of its runs is empty,
-- and then no message needs a look of its own (each lane is one RPUSH of a
-- range of ARGV, the markers are written run by run). Only a batch with a
-- slot already set is compared message by message.
--
-- Order of effects, so a failing script writes nothing that matters: check
-- the generation, the lanes' types and read every marker (reads only; a
-- marker of the wrong type fails here), push, count, and only then mark. A
-- push that fails (out of memory, refused before the first write) leaves no
-- marker behind, so the retry pushes.
--
-- Returns {-1, found generation or false} when the generation does not
-- match (nothing written), else {1, c_1, ..., c_L, s_1, ..., s_k}: each
-- lane's counter after the push (the i-th of the n messages pushed onto a
-- lane now sits at position c - n + i), then the indexes (1-based, in
-- payload order) of the messages skipped as already pushed (their position
-- is at most their lane's counter).
local found = redis.call('HGET', KEYS[1], 'generation')
if found ~= ARGV[1] then
  return {-1, found}
end
local ttl = tonumber(ARGV[2])
local block_bytes = tonumber(ARGV[3])
local lanes = tonumber(ARGV[4])
local counts_at = 5 + lanes
local runs = ARGV[5 + 2 * lanes]
local tokens = ARGV[6 + 2 * lanes]
local meta = ARGV[7 + 2 * lanes]
local payload_at = 8 + 2 * lanes
local count = #ARGV - payload_at + 1

local counted = 0
for lane = 1, lanes do
  counted = counted + tonumber(ARGV[counts_at + lane - 1])
end
if counted ~= count or #meta ~= count * 8 or #runs % 6 ~= 0 then
  return redis.error_reply('push: ' .. counted .. ' lane counts, ' .. #meta ..
    ' bytes of metadata and ' .. #runs .. ' bytes of runs for ' .. count .. ' messages')
end
-- A lane of the wrong type would fail its RPUSH after other lanes' pushes.
for lane = 2, lanes + 1 do
  local kind = redis.call('TYPE', KEYS[lane])['ok']
  if kind ~= 'list' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE push: lane ' .. KEYS[lane] .. ' holds a ' .. kind)
  end
end

-- Each marker is read once, whole; `clean` while every slot of every run
-- is empty.
local blocks = {}
local ends = {}
local clean = true
local slots_total = 0
for at = 1, #runs, 6 do
  local k1, k2, o1, o2, n1, n2 = string.byte(runs, at, at + 5)
  local marker = k1 * 256 + k2
  local offset = o1 * 256 + o2
  local slots = n1 * 256 + n2
  if offset < (ends[marker] or 0) or offset + 4 * slots > block_bytes then
    return redis.error_reply('push: run at byte ' .. offset .. ' of marker ' .. marker ..
      ' overlaps the one before or leaves the block')
  end
  ends[marker] = offset + 4 * slots
  slots_total = slots_total + slots
  local block = blocks[marker]
  if block == nil then
    block = redis.call('GET', KEYS[marker]) or ''
    blocks[marker] = block
  end
  if clean and string.find(string.sub(block, offset + 1, offset + 4 * slots), '[^%z]') then
    clean = false
  end
end
if slots_total * 4 ~= #tokens then
  return redis.error_reply('push: ' .. #tokens .. ' bytes of tokens for ' .. slots_total .. ' slots')
end

local result = {1}
local skipped = {}
local first = payload_at
for lane = 1, lanes do
  local n = tonumber(ARGV[counts_at + lane - 1])
  local last = first + n - 1
  local pushed = n
  if clean then
    if n > 0 then
      redis.call('RPUSH', KEYS[lane + 1], unpack(ARGV, first, last))
    end
  else
    local fresh = {}
    for m = first, last do
      local at = (m - payload_at) * 8 + 1
      local k1, k2, o1, o2 = string.byte(meta, at, at + 3)
      local block = blocks[k1 * 256 + k2] or ''
      local offset = o1 * 256 + o2
      if string.sub(block, offset + 1, offset + 4) == string.sub(meta, at + 4, at + 7) then
        skipped[#skipped + 1] = m - payload_at + 1
      else
        fresh[#fresh + 1] = ARGV[m]
      end
    end
    pushed = #fresh
    if pushed > 0 then
      redis.call('RPUSH', KEYS[lane + 1], unpack(fresh))
    end
  end
  local field = 'pushed:' .. ARGV[4 + lane]
  if pushed > 0 then
    result[lane + 1] = redis.call('HINCRBY', KEYS[1], field, pushed)
  else
    result[lane + 1] = tonumber(redis.call('HGET', KEYS[1], field) or '0')
  end
  first = last + 1
end
for _, m in ipairs(skipped) do
  result[#result + 1] = m
end

-- Each marker is written once: its old bytes with every run's tokens in
-- place (a skipped message's slot already holds its token), at full size
-- (grown piecemeal, a string may take twice its length), with a fresh
-- lifetime; so a retried batch stays remembered, and the script always
-- writes something, so a WAIT after it covers everything this server holds.
local pieces_of = {}
local done_of = {}
local token_at = 1
for at = 1, #runs, 6 do
  local k1, k2, o1, o2, n1, n2 = string.byte(runs, at, at + 5)
  local marker = k1 * 256 + k2
  local offset = o1 * 256 + o2
  local bytes = (n1 * 256 + n2) * 4
  local pieces = pieces_of[marker]
  if pieces == nil then
    pieces = {}
    pieces_of[marker] = pieces
    done_of[marker] = 0
    if #blocks[marker] < block_bytes then
      blocks[marker] = blocks[marker] .. string.rep('\0', block_bytes - #blocks[marker])
    end
  end
  local old, done = blocks[marker], done_of[marker]
  if offset > done then
    pieces[#pieces + 1] = string.sub(old, done + 1, offset)
  end
  pieces[#pieces + 1] = string.sub(tokens, token_at, token_at + bytes - 1)
  token_at = token_at + bytes
  done_of[marker] = offset + bytes
end
for marker, pieces in pairs(pieces_of) do
  local old = blocks[marker]
  if done_of[marker] < #old then
    pieces[#pieces + 1] = string.sub(old, done_of[marker] + 1)
  end
  redis.call('SET', KEYS[marker], table.concat(pieces), 'EX', ttl)
end
return result
