-- Whether an upload request may go now (tasks.wavespeed.rate_limit); time is Redis's (TIME).
-- KEYS: tat, active, pause. ARGV: interval_ms (0 = no rate), max_active (0 = none), lease_ms, token.
-- Returns 0 when the request may go now (and takes its place), else milliseconds to wait.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pause = tonumber(redis.call('GET', KEYS[3]) or '0')
if pause > now then return pause - now end
local interval = tonumber(ARGV[1])
local max_active = tonumber(ARGV[2])
if max_active > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= max_active then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return math.max(1, math.min(100, tonumber(first[2]) - now))
  end
end
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat > now then return tat - now end
  redis.call('SET', KEYS[1], now + interval, 'PX', interval + 1000)
end
if max_active > 0 then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]) + 1000)
end
return 0
