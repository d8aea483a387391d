"""The policy of ``wsupload worker --processes N|auto``: how many children, their threads, when to restart one.

Pure functions, tested without processes, files or a clock (``worker.parent`` does
the I/O and calls them):

- ``auto_processes``: the cores this process may use, the smaller of its CPU
  affinity and its cgroup CPU quota (``cpu.max`` of cgroup v2, else v1's
  ``cpu.cfs_quota_us``/``cpu.cfs_period_us``), rounded down, at least 1. One worker
  process keeps about 1.3 cores busy (the GIL), so a quota of 1.5 cores gets one.
- ``split_concurrency``: ``WSUPLOAD_CONCURRENCY`` is the worker's total; each child
  gets its share, the remainder spread one each over the first children; a total
  smaller than the processes gives fewer children (each needs a thread).
- ``restart_delay``: a child that crashed is started again at once (within the
  parent's poll, ``POLL`` seconds); one that keeps crashing, each time within
  ``STABLE`` seconds of its start, waits ``BACKOFF_FIRST`` seconds, doubling each
  time, up to ``BACKOFF_MAX`` seconds. A child that ran ``STABLE`` seconds starts
  the count again.
- ``describe_exit``: a child's return code as the parent's log line says it.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Sequence

AUTO = "auto"
POLL = 0.1
"""Seconds between two looks of the parent at its children (a crash is seen within it)."""
STABLE = 30.0
"""A child that ran this long before it exited is not crashing in a loop: it is restarted at once."""
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
"""The longest wait before restarting a child that keeps crashing."""


def cgroup_quota(
    cpu_max: str | None = None, cfs_quota: str | None = None, cfs_period: str | None = None
) -> float | None:
    """Cores allowed by the cgroup's CPU quota, or None if unlimited or unknown.

    ``cpu_max``: cgroup v2's ``cpu.max`` (``"max 100000"`` or ``"150000 100000"``);
    else v1's ``cpu.cfs_quota_us`` (``-1``: unlimited) and ``cpu.cfs_period_us``.
    """
    if cpu_max is not None:
        fields = cpu_max.split()
        if len(fields) >= 1 and fields[0] == "max":
            return None
        quota_text, period_text = fields[0], fields[1] if len(fields) > 1 else "100000"
    elif cfs_quota is not None and cfs_period is not None:
        quota_text, period_text = cfs_quota.strip(), cfs_period.strip()
    else:
        return None
    try:
        quota, period = int(quota_text), int(period_text)
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def auto_processes(affinity: int | None, quota: float | None) -> int:
    """The processes ``auto`` means: the smaller of the CPUs in the affinity mask and the quota (rounded down), ≥ 1."""
    limits = [float(n) for n in (affinity, quota) if n is not None]
    if not limits:
        return 1
    return max(1, math.floor(min(limits)))


def split_concurrency(total: int, processes: int) -> list[int]:
    """Each child's threads: ``total`` over ``processes`` children, the remainder one each to the first ones.

    Fewer children than ``processes`` when ``total`` is smaller (a child runs at least one thread).
    """
    children = max(1, min(processes, total))
    share, extra = divmod(total, children)
    return [share + (1 if k < extra else 0) for k in range(children)]


def restart_delay(quick_crashes: int) -> float:
    """Seconds before restarting a child after its ``quick_crashes``-th exit in a row within ``STABLE`` of its start.

    0 for the first (restarted at once), then ``BACKOFF_FIRST`` doubling, at most ``BACKOFF_MAX``.
    """
    if quick_crashes <= 1:
        return 0.0
    return float(min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** min(quick_crashes - 2, 16)))


def quick_crashes_after(previous: int, ran_for: float) -> int:
    """The count of crashes in a row once a child that ran ``ran_for`` seconds exited: reset by a stable run."""
    return 1 if ran_for >= STABLE else previous + 1


def describe_exit(returncode: int) -> str:
    """``exited with code 1``, or ``killed by SIGKILL`` (Popen's negative return code)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"


def child_name(parent_pid: int, index: int, host: str = "%h") -> str:
    """A child's Celery node name: ``wsupload-<parent pid>-<k>@<host>`` (k from 1; Celery expands ``%h``)."""
    return f"wsupload-{parent_pid}-{index}@{host}"


def parent_pid_of(node_name: str) -> int | None:
    """The parent's pid in a child's node name (``child_name``), None if it is not one."""
    head = node_name.partition("@")[0].split("-")
    if len(head) != 3 or head[0] != "wsupload" or not (head[1].isdigit() and head[2].isdigit()):
        return None
    return int(head[1])


def stop_exit_code(codes: Sequence[int | None]) -> int:
    """The parent's exit code once every child ended after a stop: 0 if each stopped warmly (0), else 1."""
    return 0 if all(code == 0 for code in codes) else 1
