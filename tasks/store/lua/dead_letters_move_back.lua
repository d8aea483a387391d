-- Take a dead letter off its list and put its message on the queue in one step
-- (tasks.store.dead_letters): two people requeueing at once move it once, and a crash
-- moves it whole or not at all. KEYS: the dead-letter list, the queue.
-- ARGV: the entry as stored, the message. Returns 1 if moved, 0 if the entry was gone.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[2])
  return 1
end
return 0
