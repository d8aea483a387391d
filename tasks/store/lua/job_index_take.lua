-- A worker took the message: its jobs no longer wait in the line (tasks.recovery.job_index; run
-- inside unacked_record.lua, which records it unacked). KEYS: pairs of (pending set, highest place taken), one
-- per list the message may have come from. ARGV: the jobs the message carries. Returns 0.
for i = 1, #KEYS, 2 do
  local w = redis.pcall('GET', KEYS[i + 1])
  w = type(w) == 'string' and tonumber(w) or nil
  local high = w
  for j = 1, #ARGV do
    local p = redis.pcall('ZSCORE', KEYS[i], ARGV[j])
    if type(p) == 'string' then
      redis.pcall('ZREM', KEYS[i], ARGV[j])
      if not high or tonumber(p) > high then high = tonumber(p) end
    end
  end
  if high ~= w then redis.pcall('SET', KEYS[i + 1], string.format('%d', high)) end
end
return 0
