-- kombu's delivery stamp in unacked_index, by Redis's clock (worker.redis_transport).
-- KEYS: the unacked index. ARGV: the delivery tag.
local now = redis.call('TIME')
return redis.call('ZADD', KEYS[1], now[1] + now[2] / 1000000, ARGV[1])
