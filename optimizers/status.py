"""A run's status: one type for the store, the engine, the CLI and the pages, so they agree on what a status allows.

The store holds what the worker last wrote. A worker that was killed cannot write "crashed", so a reader judges it:
a running run whose worker process is gone, or whose heartbeat is stale, has crashed (observed_status).
"""

from __future__ import annotations

import os
import time
from enum import StrEnum
from typing import Any


class RunStatus(StrEnum):
    CREATED = "created"  # stored, waiting for a worker
    RUNNING = "running"
    DONE = "done"
    BUDGET = "budget"  # stopped at its budget: it continues only with a larger one
    STOPPED = "stopped"  # by the user
    PAUSED = "paused"  # the endpoint went down
    FAILED = "failed"
    CRASHED = "crashed"  # never stored: observed for a running run whose worker is gone

    @property
    def live(self) -> bool:
        """A worker is (or is about to be) on it: the pages poll it and offer Stop."""
        return self in LIVE

    @property
    def resumable(self) -> bool:
        """Resume replays the stored part from the cache and continues with the same budget."""
        return self in RESUMABLE

    @property
    def ok(self) -> bool:
        """The run ended as asked (finished, at its budget, or stopped by the user): the CLI exits with 0."""
        return self in ENDED_OK


LIVE = frozenset({RunStatus.CREATED, RunStatus.RUNNING})
RESUMABLE = frozenset({RunStatus.STOPPED, RunStatus.PAUSED, RunStatus.FAILED, RunStatus.CRASHED})
ENDED_OK = frozenset({RunStatus.DONE, RunStatus.BUDGET, RunStatus.STOPPED})

HEARTBEAT_S = 1.0  # a worker beats this often, between events too (a step can score for minutes without one); each
# beat carries the spend so far, so a page shows progress within seconds of the start
STALE_S = 90.0  # a running run whose worker has not beaten for this long has crashed (or hangs)


def pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def observed_status(run: dict[str, Any], now: float | None = None) -> RunStatus:
    """The stored status, except that a running run whose worker is gone or silent is CRASHED."""
    status = RunStatus(run["status"])
    if status is not RunStatus.RUNNING:
        return status
    beat = run.get("heartbeat") or run["updated"]
    stale = beat < (now or time.time()) - STALE_S
    gone = bool(run.get("worker_pid")) and not pid_alive(run["worker_pid"])
    return RunStatus.CRASHED if stale or gone else RunStatus.RUNNING
