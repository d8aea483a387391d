-- What one sweep of a queue starts from (tasks.recovery.lost_sweep).
-- KEYS: the queue list, its pending set, its highest place taken. ARGV: LIMIT.
-- Returns {highest place taken or nil, the list's length, {job, place, …}}.
local w = redis.call('GET', KEYS[3])
local n = redis.call('LLEN', KEYS[1])
local below
if n == 0 then below = '+inf' elseif w then below = '(' .. w else return {false, n, {}} end
return {w or false, n, redis.call('ZRANGE', KEYS[2], '-inf', below, 'BYSCORE', 'LIMIT', 0, ARGV[1], 'WITHSCORES')}
