-- An acknowledged message out of kombu's unacked index and hash, in one call
-- (worker.redis_transport: kombu's QoS.ack, which sent a MULTI of two commands).
-- KEYS: the unacked index, the unacked hash. ARGV: the delivery tag. Returns 0.
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 0
