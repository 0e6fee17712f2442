"""Worker health, as each worker's heartbeat row tells it (docs/design.md section 5).

A worker proves two things. ``seen_at``: its process runs and reaches the database
(the sweeper thread writes it every ``DISPATCHER_HEARTBEAT_INTERVAL_S``).
``consumed_at``: it takes messages off the broker. For that the sweeper thread sends
a small heartbeat task to the worker's own direct queue (Celery's ``worker_direct``),
and only the worker's consumer can run it. A worker whose ``seen_at`` is fresh but
whose ``consumed_at`` is stale runs but does not consume: a broker it cannot reach,
a consumer stuck, every thread blocked.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

RUNNING = "running"
STOPPED = "stopped"
STALE_AFTER_BEATS = 3
"""A heartbeat (or a consumed heartbeat task) older than this many intervals is stale."""


@dataclasses.dataclass(frozen=True)
class WorkerHealth:
    """How many workers are alive (fresh ``seen_at``) and consuming (fresh ``consumed_at``)."""

    alive: int
    consuming: int
    stopped: int
    stale: int


def fresh_after(now: dt.datetime, interval_s: float) -> dt.datetime:
    """The oldest heartbeat that still counts as fresh at ``now``."""
    return now - dt.timedelta(seconds=STALE_AFTER_BEATS * interval_s)


def is_consuming(worker: dict[str, Any], *, now: dt.datetime, interval_s: float) -> bool:
    """Whether one worker row (as ``stats.workers`` gives it) shows recent consumption."""
    consumed = worker.get("consumed_at")
    return (
        worker.get("state") == RUNNING
        and consumed is not None
        and consumed >= fresh_after(now, interval_s)
    )
