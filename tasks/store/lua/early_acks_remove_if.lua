-- Remove each job (and its call) still owed until exactly a deadline (tasks.recovery.early_acks):
-- one renewed meanwhile by its worker is still running there, and is left alone.
-- KEYS: an owed set, its calls. ARGV: deadline, jobs. Returns how many were removed.
local removed = 0
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and string.format('%.3f', tonumber(score)) == ARGV[1] then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
return removed
