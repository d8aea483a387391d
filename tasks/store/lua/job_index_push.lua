-- Push a message onto a queue list, placing its jobs at that end of the line (tasks.recovery.job_index).
-- KEYS: the queue list, its pending set, place counter and highest place taken.
-- ARGV: the message, 'back' (LPUSH) or 'front' (RPUSH), then the jobs it carries (none: places nothing).
-- A bulk message's jobs share one place: they leave the line together. Returns the list's length.
local function front_place(pending, taken)
  local low = redis.pcall('ZRANGE', pending, 0, 0, 'WITHSCORES')
  local m = type(low) == 'table' and tonumber(low[2]) or nil
  local w = redis.pcall('GET', taken)
  w = type(w) == 'string' and tonumber(w) or nil
  if w and (not m or w < m) then m = w end
  return math.floor(m or 0) - 1
end
local back = ARGV[2] == 'back'
if #ARGV > 2 then
  local place
  if back then place = redis.pcall('INCR', KEYS[3]) else place = front_place(KEYS[2], KEYS[4]) end
  if type(place) == 'number' then
    for i = 3, #ARGV do redis.pcall('ZADD', KEYS[2], string.format('%d', place), ARGV[i]) end
  end
end
if back then return redis.call('LPUSH', KEYS[1], ARGV[1]) end
return redis.call('RPUSH', KEYS[1], ARGV[1])
