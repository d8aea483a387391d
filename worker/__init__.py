"""The runnable side: the Celery app, the producer API, the CLI, the sandbox
server and the demo. Imports ``tasks`` and ``config``; nothing imports it."""
