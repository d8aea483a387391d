"""A background loop's failures, logged once per streak: when it starts failing and when it recovers.

The worker's threads (lease renewal, sweep, heartbeat, metrics) retry every round
whatever goes wrong; logging each failed round would bury the log. Redis and OS
errors are expected there (one line); anything else also logs its traceback, unless
the caller expects every error (the metrics' scrape).
"""

from __future__ import annotations

import logging

import redis

from wsupload.tasks.observe.bounds import clip


class FailureStreak:
    def __init__(
        self,
        log: logging.Logger,
        failing: str,
        recovered: str,
        expected: tuple[type[BaseException], ...] = (redis.RedisError, OSError),
    ) -> None:
        self.log = log
        self.expected = expected
        """Errors logged without their traceback."""
        self.failing_line = failing
        """Logged at the first failure: ``%s`` for the error's type and text, then the caller's args."""
        self.recovered_line = recovered
        self.failing = False

    def failed(self, exc: BaseException, *args: object) -> None:
        if self.failing:
            return
        self.failing = True
        self.log.warning(
            self.failing_line,
            type(exc).__name__,
            clip(str(exc)),
            *args,
            exc_info=not isinstance(exc, self.expected),
        )

    def succeeded(self) -> None:
        if self.failing:
            self.failing = False
            self.log.info(self.recovered_line)
