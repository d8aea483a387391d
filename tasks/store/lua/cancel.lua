-- Cancel jobs (tasks.store.cancels): end each one that has not ended `cancelled`, as the
-- producer's fenced final write. KEYS: events channel, ended channel, cancel channel, this
-- minute's statistics hash (keys.stats); then per job its generation key, its document and its
-- cancel request (keys.cancel). ARGV: ttl, the error JSON, finished_at, second of the minute,
-- statistics ttl, the batch keys' prefix, then the job ids in the order of their keys.
-- Returns per job {1, the document written} (cancelled now), {0, its status} (it had ended)
-- or {-1, ''} (no document: never enqueued, or expired).
-- The generation key becomes 'done', so every later write of a delivery is refused and no
-- delivery claims the job (fencing_save.lua, fencing_claim.lua); the request key tells a
-- running delivery to stop, and its job id on the cancel channel tells it at once. The batch
-- key is built here from the document's batch_id, as fencing_claim.lua does (one Redis or a
-- Sentinel master, not a Redis Cluster).
local active = {queued = true, running = true, retrying = true}
local ttl = ARGV[1]
local replies = {}
for i = 7, #ARGV do
  local job_id = ARGV[i]
  local base = 4 + (i - 7) * 3
  local generation_key, doc_key, cancel_key = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
  local raw = redis.call('GET', doc_key)
  local ok, job = false, nil
  if raw then ok, job = pcall(cjson.decode, raw) end
  if not ok or type(job) ~= 'table' then job = nil end
  local status = job and job.status
  if not raw then
    replies[#replies + 1] = {-1, ''}
  elseif redis.call('GET', generation_key) == 'done' or (type(status) == 'string' and status ~= '' and not active[status]) then
    replies[#replies + 1] = {0, type(status) == 'string' and status or 'ended'}
  else
    -- A document no one can read is cancelled whole: what is left to go on is the key.
    job = job or {}
    job.job_id = job_id
    job.status = 'cancelled'
    job.result = cjson.null
    job.error = cjson.decode(ARGV[2])
    job.finished_at = ARGV[3]
    job.next_attempt_at = nil
    job.progress = nil -- an ended document carries no byte progress
    local written = cjson.encode(job)
    redis.call('SET', doc_key, written, 'EX', ttl)
    redis.call('SET', generation_key, 'done', 'EX', ttl)
    redis.call('HSET', cancel_key, 'at', ARGV[3], 'callback', '1')
    redis.call('EXPIRE', cancel_key, ttl)
    redis.call('PUBLISH', KEYS[1], cjson.encode({job_id = job_id, status = 'cancelled'}))
    redis.call('PUBLISH', KEYS[2], written)
    redis.call('PUBLISH', KEYS[3], job_id)
    redis.call('HINCRBY', KEYS[4], 'cancelled:' .. ARGV[4], 1)
    redis.call('EXPIRE', KEYS[4], ARGV[5])
    if type(job.batch_id) == 'string' and job.batch_id ~= '' then
      local batch = ARGV[6] .. job.batch_id
      if redis.call('EXISTS', batch) == 1 then
        local done = redis.call('HINCRBY', batch, 'done', 1)
        redis.call('HINCRBY', batch, 'cancelled', 1)
        if tonumber(redis.call('HGET', batch, 'total') or '0') <= done then
          redis.call('HSETNX', batch, 'finished_at', ARGV[3])
        end
      end
    end
    replies[#replies + 1] = {1, written}
  end
end
return replies
