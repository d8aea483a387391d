-- Acknowledged messages out of kombu's unacked index and hash, in one call
-- (worker.redis_transport: kombu's QoS.ack, which sent a MULTI of two commands per message).
-- KEYS: the unacked index, the unacked hash. ARGV: the delivery tags. Returns 0.
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return 0
