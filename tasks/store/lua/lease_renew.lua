-- Move each held entry of kombu's unacked_index to now, by Redis's clock (the clock kombu's
-- scan reads, see worker.redis_transport); entries that are gone stay gone (XX). worker.renewer.
-- KEYS: the unacked index. ARGV: delivery tags. Returns, per tag, 1 if renewed, 0 if gone.
local now = redis.call('TIME')
local at = now[1] + now[2] / 1000000
local renewed = {}
for i, tag in ipairs(ARGV) do renewed[i] = redis.call('ZADD', KEYS[1], 'XX', 'CH', at, tag) end
return renewed
