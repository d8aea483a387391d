-- The enqueue commit on RabbitMQ (tasks.enqueue): enqueue_commit.lua without its queue,
-- each job owed instead (tasks.recovery.early_acks). KEYS: marker (as there), the owed set,
-- the documents of every job in order (staged ones first), then for a batch its hash, member
-- list and, if named, name key. ARGV: nstaged, nnow, ttl, nfields, batch id, grace, then nnow
-- documents, every job id in order, and nfields field/value pairs. Returns the deadline the
-- jobs are owed until (as early_acks_remove_if.lua compares it), or 0 when the marker shows it
-- already ran.
local nstaged, nnow, ttl, nfields = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local njobs = nstaged + nnow
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local kind = redis.call('TYPE', KEYS[2]).ok
if kind ~= 'zset' and kind ~= 'none' then
  return redis.error_reply('ERR the owed key holds a ' .. kind .. ', not a sorted set')
end
local docs, ids = 2 + nstaged, 6 + nnow
for i = 1, nnow do redis.call('SET', KEYS[docs + i], ARGV[6 + i], 'EX', ttl) end
local batch = docs + nnow
if nfields > 0 then
  local fields = ids + njobs
  redis.call('HSET', KEYS[batch + 1], unpack(ARGV, fields + 1, fields + 2 * nfields))
  redis.call('EXPIRE', KEYS[batch + 1], ttl)
  for i = ids + 1, ids + njobs, 1000 do
    redis.call('RPUSH', KEYS[batch + 2], unpack(ARGV, i, math.min(i + 999, ids + njobs)))
  end
  if njobs > 0 then redis.call('EXPIRE', KEYS[batch + 2], ttl) end
end
local t = redis.call('TIME')
local at = string.format('%.3f', t[1] + t[2] / 1000000 + tonumber(ARGV[6]))
for i = 1, njobs, 500 do
  local owed = {}
  for j = i, math.min(i + 499, njobs) do
    owed[#owed + 1] = at
    owed[#owed + 1] = ARGV[ids + j]
  end
  redis.call('ZADD', KEYS[2], unpack(owed))
end
for i = 3, 2 + nstaged do redis.call('EXPIRE', KEYS[i], ttl) end
if KEYS[batch + 3] then redis.call('SET', KEYS[batch + 3], ARGV[5], 'EX', ttl) end
return at
