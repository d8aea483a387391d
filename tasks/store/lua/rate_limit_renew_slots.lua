-- Keep fleet-limiter slots still held (tasks.wavespeed.rate_limit, renewed by worker.renewer).
-- KEYS: active. ARGV: lease_ms, tokens. Moves the expiry of the slots still held forward;
-- returns how many tokens it was given.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + ms, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ms + 1000)
return #ARGV - 1
