"""Upload jobs: validating sources, the HTTP client, retry policy, result documents
and the Celery task that ties them together. Imports ``config``; never ``worker``."""
