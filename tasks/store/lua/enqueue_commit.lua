-- The enqueue commit (tasks.enqueue), for either broker. Atomic, so workers see all of a call's
-- jobs or none of them. Its mode (ARGV[1]) says what holds the jobs once their documents are written:
--   'push' (the Redis broker): their messages, pushed onto the queue, and each job's place in
--          the queue's line (tasks.recovery.job_index);
--   'owe'  (RabbitMQ, where the messages are published after the commit): an entry for each job
--          in the queue's owed set, due at now + grace by Redis's clock (tasks.recovery.early_acks),
--          and in its entered set at that deadline in ms (tasks.recovery.markers): by then its
--          message is on the queue, or the job is still owed and the owed sweep publishes it.
-- KEYS: marker (a key only this script creates: the first document it writes, or the batch
--       hash), then for 'push' the queue, its pending set and place counter (tasks.recovery.lost_sweep)
--       and nstage staging lists, for 'owe' the owed set and the entered set; then the documents of every job in order
--       (staged ones first), then for a batch its hash, member list and, if named, name key.
-- ARGV: mode, nstage, nstaged (jobs staged: their documents, and for 'push' their messages in the
--       staging lists), nnow (jobs sent with this call), nmsgs (messages carrying them: fewer when
--       bulk messages carry several; 0 for 'owe'), ttl, nfields (0: no batch), batch id, grace
--       (seconds, for 'owe'; '' for 'push'), then nnow documents, nmsgs messages, every job id in
--       order, and nfields field/value pairs.
-- Returns 0 when the marker shows it already ran (redis-py resends a command whose reply was
-- lost); else 1 for 'push', and for 'owe' the deadline the jobs are owed until (as
-- early_acks_remove_if.lua compares it). Every check comes before the first write, and that
-- write is a SET or HSET: under maxmemory Redis refuses it before anything is written, and
-- lets a script that has written go on, so no error can leave half a commit.
-- 'push' gives each job its place in the queue's line: LPUSH puts its first argument nearest
-- the front, so the jobs are taken in order, and their places ascend in that order from the
-- counter (a bulk message's jobs are consecutive in that order).
local push = ARGV[1] == 'push'
local nstage, nstaged, nnow = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local nmsgs, ttl, nfields = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local njobs = nstaged + nnow
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local kind = redis.call('TYPE', KEYS[2]).ok
if push and kind ~= 'list' and kind ~= 'none' then
  return redis.error_reply('ERR the queue key holds a ' .. kind .. ', not a list')
elseif not push and kind ~= 'zset' and kind ~= 'none' then
  return redis.error_reply('ERR the owed key holds a ' .. kind .. ', not a sorted set')
end
local stages = push and 4 or 3  -- the KEYS before the staging lists
for i = stages + 1, stages + nstage do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    return redis.error_reply('ERR the staged messages expired before the commit')
  end
end
local function slices(command, key, list, first, last)
  for i = first, last, 1000 do  -- unpack is bounded by the Lua stack: a slice at a time
    redis.call(command, key, unpack(list, i, math.min(i + 999, last)))
  end
end
local docs, arg = stages + nstage + nstaged, 9
local ids = arg + nnow + nmsgs
local function add_jobs(key, score, key2, score2)  -- every job into the sorted set key, the j-th scored
  for i = 1, njobs, 500 do                          -- score(j); and into key2 at score2, if given
    local members = {}
    for j = i, math.min(i + 499, njobs) do
      members[#members + 1] = score(j)
      members[#members + 1] = ARGV[ids + j]
    end
    redis.call('ZADD', key, unpack(members))
    if key2 then
      for m = 1, #members, 2 do members[m] = score2 end  -- the same table, its scores replaced
      redis.call('ZADD', key2, unpack(members))
    end
  end
end
for i = 1, nnow do redis.call('SET', KEYS[docs + i], ARGV[arg + i], 'EX', ttl) end
local batch = docs + nnow
if nfields > 0 then
  local fields = ids + njobs
  redis.call('HSET', KEYS[batch + 1], unpack(ARGV, fields + 1, fields + 2 * nfields))
  redis.call('EXPIRE', KEYS[batch + 1], ttl)
  if njobs > 0 then
    slices('RPUSH', KEYS[batch + 2], ARGV, ids + 1, ids + njobs)
    redis.call('EXPIRE', KEYS[batch + 2], ttl)
  end
end
local answer = 1
if push then
  for i = stages + 1, stages + nstage do
    local staged = redis.call('LRANGE', KEYS[i], 0, -1)
    slices('LPUSH', KEYS[2], staged, 1, #staged)
    redis.call('DEL', KEYS[i])
  end
  slices('LPUSH', KEYS[2], ARGV, arg + nnow + 1, ids)
  if njobs > 0 then
    local first = redis.call('INCRBY', KEYS[4], njobs) - njobs
    add_jobs(KEYS[3], function(j) return first + j end)
  end
else
  local t = redis.call('TIME')
  answer = string.format('%.3f', t[1] + t[2] / 1000000 + tonumber(ARGV[9]))
  add_jobs(KEYS[2], function() return answer end, KEYS[3], string.format('%d', math.floor(tonumber(answer) * 1000)))
end
for i = stages + nstage + 1, docs do redis.call('EXPIRE', KEYS[i], ttl) end
if KEYS[batch + 3] then redis.call('SET', KEYS[batch + 3], ARGV[8], 'EX', ttl) end
return answer
