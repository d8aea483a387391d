-- The owed jobs due now, each moved to now + grace in the same call (tasks.recovery.early_acks):
-- a sweeper that dies before publishing them leaves them due again, not lost.
-- KEYS: an owed set. ARGV: grace, limit. Returns {deadline given, job, job, …}.
local t = redis.call('TIME')
local now = t[1] + t[2] / 1000000
local at = string.format('%.3f', now + tonumber(ARGV[1]))
local due = redis.call('ZRANGE', KEYS[1], '-inf', string.format('%.3f', now), 'BYSCORE', 'LIMIT', 0, ARGV[2])
for _, job in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', at, job) end
table.insert(due, 1, at)
return due
