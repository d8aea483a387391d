"""Upload jobs: the Celery tasks, the two orchestrators, and the rooms they draw on.

Imports ``config`` and ``wsupload.errors`` (the one error hierarchy); never ``worker``. The map::

    tasks/
    ├── upload.py         the Celery task ``wsupload.upload``: one job per message
    ├── upload_many.py    the Celery task ``wsupload.upload_many``: a bulk message
    ├── scan.py           the Celery task ``wsupload.scan``: one run of a scheduled batch
    ├── marker.py         the Celery task ``wsupload.marker``: a worker met the sweep's marker (RabbitMQ)
    ├── callbacks.py      POSTing a job's final document to the URL it asked for, signed
    ├── job.py            running one job: open the source, upload with retries, record the outcome
    ├── enqueue.py        putting jobs on the queue: documents and messages, all of a call or none
    ├── runtime.py        what a worker process builds once and every task uses
    ├── sources/          opening and checking local files and object-store keys, formats, discovery,
    │                     the producer's check before enqueueing (check_source)
    ├── wavespeed/        the HTTP client, the multipart body, the retry policy, the shared rate limit
    ├── store/            Redis: connections, keys, result documents, fencing, cancels, paused queues, batches,
    │                     dead letters, dedup, each role's ACL rules, and lua/: every Lua script, one .lua file each
    ├── recovery/         leases, the job index, the lost-message sweep, early-acknowledged jobs and the
    │                     marker sweep (RabbitMQ)
    ├── wire/             the message contract: encode, decode, per-job options, publishing to RabbitMQ
    └── observe/          telemetry, log fields, redaction of secrets, bounds on what is kept from input,
                          a large upload's byte progress
"""
