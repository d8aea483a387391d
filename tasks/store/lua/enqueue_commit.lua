-- The enqueue commit (tasks.enqueue). Atomic, so workers see all of a call's jobs or none of them.
-- KEYS: queue, marker (a key only this script creates: the first document it writes,
--       or the batch hash), the queue's pending set and place counter (tasks.recovery.lost_sweep),
--       nstage staging lists, the documents of every job in order (staged ones first),
--       then for a batch its hash, member list and, if named, name key.
-- ARGV: nstage, nstaged (jobs in the staging lists), nnow (jobs sent with this call),
--       nmsgs (messages carrying them: fewer when bulk messages carry several), ttl,
--       nfields (0: no batch), batch id, then nnow documents, nmsgs messages,
--       every job id in order, and nfields field/value pairs.
-- Returns 1, or 0 when the marker shows it already ran (redis-py resends a command
-- whose reply was lost). Every check comes before the first write, and that write is
-- a SET or HSET: under maxmemory Redis refuses it before anything is written, and
-- lets a script that has written go on, so no error can leave half a commit.
-- Each job gets its place in the queue's line (see tasks.recovery.lost_sweep): LPUSH puts its first
-- argument nearest the front, so the jobs are taken in order, and their places ascend
-- in that order from the counter (a bulk message's jobs are consecutive in that order).
local nstage, nstaged, nnow = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local nmsgs, ttl, nfields = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local njobs = nstaged + nnow
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'list' and kind ~= 'none' then
  return redis.error_reply('ERR the queue key holds a ' .. kind .. ', not a list')
end
for i = 5, 4 + nstage do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    return redis.error_reply('ERR the staged messages expired before the commit')
  end
end
local function push(command, key, list, first, last)
  for i = first, last, 1000 do  -- unpack is bounded by the Lua stack: a slice at a time
    redis.call(command, key, unpack(list, i, math.min(i + 999, last)))
  end
end
local docs, arg = 4 + nstage + nstaged, 7
local ids = arg + nnow + nmsgs
for i = 1, nnow do redis.call('SET', KEYS[docs + i], ARGV[arg + i], 'EX', ttl) end
local batch = docs + nnow
if nfields > 0 then
  local fields = ids + njobs
  redis.call('HSET', KEYS[batch + 1], unpack(ARGV, fields + 1, fields + 2 * nfields))
  redis.call('EXPIRE', KEYS[batch + 1], ttl)
  if njobs > 0 then
    push('RPUSH', KEYS[batch + 2], ARGV, ids + 1, ids + njobs)
    redis.call('EXPIRE', KEYS[batch + 2], ttl)
  end
end
for i = 5, 4 + nstage do
  local staged = redis.call('LRANGE', KEYS[i], 0, -1)
  push('LPUSH', KEYS[1], staged, 1, #staged)
  redis.call('DEL', KEYS[i])
end
push('LPUSH', KEYS[1], ARGV, arg + nnow + 1, ids)
if njobs > 0 then
  local first = redis.call('INCRBY', KEYS[4], njobs) - njobs
  for i = 1, njobs, 500 do
    local places = {}
    for j = i, math.min(i + 499, njobs) do
      places[#places + 1] = first + j
      places[#places + 1] = ARGV[ids + j]
    end
    redis.call('ZADD', KEYS[3], unpack(places))
  end
end
for i = 5 + nstage, docs do redis.call('EXPIRE', KEYS[i], ttl) end
if KEYS[batch + 3] then redis.call('SET', KEYS[batch + 3], ARGV[7], 'EX', ttl) end
return 1
