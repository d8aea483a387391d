-- The one write of a job's document (tasks.store.fencing). KEYS: generation key, document,
-- events channel, ended channel, batch hash ('' for none), this minute's statistics hash
-- (keys.stats), then any entered sets (RabbitMQ: tasks.recovery.markers) the job leaves when it
-- ends. ARGV: generation ('' for none), document JSON, ttl, event JSON, status, batch
-- size to add (succeeded), started_at, finished_at, second of the minute, statistics ttl.
-- Returns 1 (written), 0 (the job had ended: nothing written), -1 (another generation holds it).
-- The terminal write also counts the job in its minute (worker.stats): once, like the batch.
-- Any status but queued, running and retrying is an end (the end-state rule, docs/wire-contract.md).
local current = redis.call('GET', KEYS[1])
if current == 'done' then return 0 end
if ARGV[1] ~= '' then
  -- Only a later delivery outranks this one. A generation that is missing (expired with a
  -- long job, or lost in a failover) or lower is this delivery's again.
  if (tonumber(current or '0') or 0) > tonumber(ARGV[1]) then return -1 end
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
end
local status = ARGV[5]
local finished = status ~= 'queued' and status ~= 'running' and status ~= 'retrying'
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('PUBLISH', KEYS[3], ARGV[4])
if finished then
  redis.call('PUBLISH', KEYS[4], ARGV[2])
  redis.call('SET', KEYS[1], 'done', 'EX', ARGV[3])
  redis.call('HINCRBY', KEYS[6], status .. ':' .. ARGV[9], 1)
  redis.call('EXPIRE', KEYS[6], ARGV[10])
  if #KEYS > 6 then
    local job = string.match(KEYS[2], '^[^:]*:result:(.*)$')
    for i = 7, #KEYS do redis.call('ZREM', KEYS[i], job) end
  end
end
if KEYS[5] ~= '' then
  if status == 'running' and ARGV[7] ~= '' then redis.call('HSETNX', KEYS[5], 'started_at', ARGV[7]) end
  if finished then
    local done = redis.call('HINCRBY', KEYS[5], 'done', 1)
    redis.call('HINCRBY', KEYS[5], status, 1)
    if status == 'succeeded' then redis.call('HINCRBY', KEYS[5], 'bytes_done', ARGV[6]) end
    if tonumber(redis.call('HGET', KEYS[5], 'total') or '0') <= done then
      redis.call('HSETNX', KEYS[5], 'finished_at', ARGV[8])
    end
  end
end
return 1
