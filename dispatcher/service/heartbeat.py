"""Worker health: each worker's row in ``worker_heartbeats``, written by the worker itself.

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

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from dispatcher.domain.times import utcnow
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import WorkerHeartbeat

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


def _upsert(session: Session, values: dict[str, Any]) -> None:
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(WorkerHeartbeat).values(**values)
    changed = {k: statement.excluded[k] for k in values if k != "name"}
    session.execute(statement.on_conflict_do_update(index_elements=["name"], set_=changed))


class Heartbeats:
    """Writes one worker's heartbeat row; each call is its own short transaction."""

    def __init__(self, database: Database, name: str) -> None:
        self.db = database
        self.name = name

    def started(
        self, *, hostname: str, pid: int, queues: str, now: dt.datetime | None = None
    ) -> None:
        """The worker is ready: a fresh row (a restart under the same name replaces it)."""
        now = now or utcnow()
        with self.db.transaction() as session:
            _upsert(
                session,
                {
                    "name": self.name,
                    "hostname": hostname[:255],
                    "pid": pid,
                    "queues": queues[:200],
                    "started_at": now,
                    "seen_at": now,
                    "consumed_at": None,
                    "batches": 0,
                    "state": RUNNING,
                },
            )

    def beat(self, *, batches: int, now: dt.datetime | None = None) -> None:
        """The process runs and reaches the database."""
        self._update(seen_at=now or utcnow(), batches=batches, state=RUNNING)

    def consumed(self, *, now: dt.datetime | None = None) -> None:
        """A heartbeat task came through the broker to this worker."""
        now = now or utcnow()
        self._update(seen_at=now, consumed_at=now)

    def stopped(self, *, batches: int, now: dt.datetime | None = None) -> None:
        """A clean shutdown."""
        self._update(seen_at=now or utcnow(), batches=batches, state=STOPPED)

    def _update(self, **values: Any) -> None:
        with self.db.transaction() as session:
            session.execute(
                update(WorkerHeartbeat)
                .where(WorkerHeartbeat.name == self.name)
                .values(**values)
                .execution_options(synchronize_session=False)
            )


def health(session: Session, *, now: dt.datetime, interval_s: float) -> WorkerHealth:
    """Count workers by health as of ``now`` (the table holds one row per worker name)."""
    fresh_after = now - dt.timedelta(seconds=STALE_AFTER_BEATS * interval_s)
    running = WorkerHeartbeat.state == RUNNING
    alive = running & (WorkerHeartbeat.seen_at >= fresh_after)
    row = session.execute(
        select(
            func.count().filter(alive),
            func.count().filter(alive & (WorkerHeartbeat.consumed_at >= fresh_after)),
            func.count().filter(WorkerHeartbeat.state == STOPPED),
            func.count().filter(running & (WorkerHeartbeat.seen_at < fresh_after)),
        )
    ).one()
    return WorkerHealth(alive=row[0], consuming=row[1], stopped=row[2], stale=row[3])


def is_consuming(worker: dict[str, Any], *, now: dt.datetime, interval_s: float) -> bool:
    """Whether one worker row (as ``stats.workers`` gives it) shows recent consumption."""
    consumed = worker.get("consumed_at")
    fresh_after = now - dt.timedelta(seconds=STALE_AFTER_BEATS * interval_s)
    return worker.get("state") == RUNNING and consumed is not None and consumed >= fresh_after
