-- Put a lost job's message back at the back of its line, if its place is still the one the
-- sweep read (tasks.recovery.lost_sweep). KEYS: the queue list, its pending set, its place
-- counter, its suspects. ARGV: the job, the place the sweep read, its message.
-- Returns 1 if it put the message back.
local p = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not p or tonumber(p) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[2], string.format('%d', redis.call('INCR', KEYS[3])), ARGV[1])
redis.call('LPUSH', KEYS[1], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
