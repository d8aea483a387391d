-- Pause every worker's next request after a 429 (tasks.wavespeed.rate_limit).
-- KEYS: pause. ARGV: milliseconds. Extends the pause, never shortens it; returns its end (ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ms > current then redis.call('SET', KEYS[1], until_ms, 'PX', tonumber(ARGV[1]) + 1000) end
return until_ms
