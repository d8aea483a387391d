-- A delivery's claim of its job (tasks.store.fencing).
-- KEYS: generation key, document, events channel, and kombu's unacked index (the leases).
-- ARGV: ttl, the delivery's tag in that index ('' for no lease to check); then, to write the
-- first attempt too (FirstAttempt): max deliveries, max attempts, started_at, worker, event
-- JSON, the batch keys' prefix. Returns {the new generation, 0 if the job ended or -1 if the
-- delivery's lease is gone (another delivery of its message may run now: it claims nothing);
-- the stored document; the document written, if any}: the claim and the read are one round trip.
-- The first attempt is written as fencing_save.lua would write it (document, event, the batch's
-- started_at) and only from a plain queued document: strings, booleans and null, the
-- attempts count, options of strings and booleans (what cjson writes back unchanged).
-- The batch key is built here from the document's batch_id, so the script touches a key
-- not passed in KEYS: fine on one Redis or a Sentinel master, as this project runs, not
-- on a Redis Cluster.
local doc = redis.call('GET', KEYS[2])
if redis.call('GET', KEYS[1]) == 'done' then return {0, doc} end
if ARGV[2] ~= '' and not redis.call('ZSCORE', KEYS[4], ARGV[2]) then return {-1, doc} end
local generation = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
if not ARGV[3] or not doc or generation > tonumber(ARGV[3]) then return {generation, doc} end
local ok, job = pcall(cjson.decode, doc)
if not ok or type(job) ~= 'table' or job.status ~= 'queued' then return {generation, doc} end
local attempts = job.attempts
if type(attempts) ~= 'number' or attempts < 0 or attempts % 1 ~= 0 or attempts >= tonumber(ARGV[4]) then
  return {generation, doc}
end
for name, value in pairs(job) do
  local kind = type(value)
  if kind == 'table' then
    if name ~= 'options' then return {generation, doc} end
    for _, option in pairs(value) do
      if type(option) ~= 'string' and type(option) ~= 'boolean' then return {generation, doc} end
    end
  elseif kind == 'number' and name ~= 'attempts' then
    return {generation, doc}
  end
end
job.status = 'running'
job.attempts = attempts + 1
job.next_attempt_at = nil
if type(job.started_at) ~= 'string' or job.started_at == '' then job.started_at = ARGV[5] end
job.generation = generation
job.worker = ARGV[6]
local written = cjson.encode(job)
redis.call('SET', KEYS[2], written, 'EX', ARGV[1])
redis.call('PUBLISH', KEYS[3], ARGV[7])
if type(job.batch_id) == 'string' and job.batch_id ~= '' then
  redis.call('HSETNX', ARGV[8] .. job.batch_id, 'started_at', job.started_at)
end
return {generation, doc, written}
