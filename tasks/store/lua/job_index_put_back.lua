#!lua flags=allow-oom
-- job_index_push.lua to the front, even on a full Redis (allow-oom, Redis >= 7): BRPOP took the
-- message from there (worker.redis_transport). KEYS and ARGV as job_index_push.lua's.
--!include job_index_push
