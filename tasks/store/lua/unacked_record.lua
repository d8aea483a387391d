-- A delivered message recorded as unacked and its jobs taken out of their line, in one call
-- (worker.redis_transport: kombu's QoS.append, which sent a MULTI of three commands), with the
-- acknowledgements the event loop made since its last call riding along.
-- KEYS: the unacked index, the unacked hash, then job_index_take.lua's pairs (none for a message
-- that carries no job). ARGV: the delivery tag, the unacked entry, the number N of acknowledged
-- tags that follow, those N tags, then the jobs. Returns 0.
-- Its first command writes: a Redis that refuses writes (full, a replica) refuses it whole.
local function stamp(KEYS, ARGV)
--!include lease_stamp
end
local function take(KEYS, ARGV)
--!include job_index_take
end
stamp({KEYS[1]}, {ARGV[1]})
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local acked = tonumber(ARGV[3])
for i = 4, 3 + acked do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
local first_job = 4 + acked
if #KEYS > 2 and #ARGV >= first_job then
  local pairs_, jobs = {}, {}
  for i = 3, #KEYS do pairs_[i - 2] = KEYS[i] end
  for i = first_job, #ARGV do jobs[i - first_job + 1] = ARGV[i] end
  take(pairs_, jobs)
end
return 0
