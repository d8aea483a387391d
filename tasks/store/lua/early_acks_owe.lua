-- Owe jobs until a deadline by Redis's clock (tasks.recovery.early_acks).
-- KEYS: owed sets. ARGV: seconds from now, mode, then per key the count of its jobs, then the jobs.
-- Mode XX only renews; NX only adds where the job is not owed yet; '' sets whatever is there.
-- Returns the deadline.
local t = redis.call('TIME')
local at = string.format('%.3f', t[1] + t[2] / 1000000 + tonumber(ARGV[1]))
local mode, arg = ARGV[2], 3
for k = 1, #KEYS do
  local n = tonumber(ARGV[arg])
  for i = arg + 1, arg + n do
    if mode == '' then redis.call('ZADD', KEYS[k], at, ARGV[i]) else redis.call('ZADD', KEYS[k], mode, at, ARGV[i]) end
  end
  arg = arg + n + 1
end
return at
