-- A worker met the marker ARGV[1] (tasks.recovery.markers): if it is the one outstanding on its
-- queue and no worker met it before, record when (ms, Redis's clock). KEYS: the queue's marker hash.
-- Returns 1 if recorded, 0 for a marker replaced meanwhile (or met already).
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'seen_at') == 1 then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'seen_at', string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000)))
return 1
