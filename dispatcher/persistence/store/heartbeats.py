"""The ``worker_heartbeats`` rows: written by each worker for itself, counted by readers.

What the two timestamps prove is told in ``dispatcher.domain.workers``; the
transactions belong to ``dispatcher.service.heartbeat``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from dispatcher.domain.workers import RUNNING, STOPPED, WorkerHealth, fresh_after
from dispatcher.persistence import dialect
from dispatcher.persistence.models import WorkerHeartbeat


def upsert_heartbeat(session: Session, values: dict[str, Any]) -> None:
    """Insert the row named ``values["name"]``, or replace its other columns."""
    session.execute(dialect.upsert(session, WorkerHeartbeat, values, key=("name",)))


def update_heartbeat(session: Session, name: str, values: dict[str, Any]) -> bool:
    """Set some columns of worker ``name``'s row; False when it has no row."""
    result = session.execute(
        update(WorkerHeartbeat)
        .where(WorkerHeartbeat.name == name)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def health(
    session: Session, *, now: dt.datetime, interval_s: float, hostname: str | None = None
) -> WorkerHealth:
    """Count workers by health as of ``now`` (the table holds one row per worker name);
    with ``hostname``, only that host's (a container's health check)."""
    fresh = fresh_after(now, interval_s)
    running = WorkerHeartbeat.state == RUNNING
    alive = running & (WorkerHeartbeat.seen_at >= fresh)
    query = select(
        func.count().filter(alive),
        func.count().filter(alive & (WorkerHeartbeat.consumed_at >= fresh)),
        func.count().filter(WorkerHeartbeat.state == STOPPED),
        func.count().filter(running & (WorkerHeartbeat.seen_at < fresh)),
    )
    if hostname is not None:
        query = query.where(WorkerHeartbeat.hostname == hostname[:255])
    row = session.execute(query).one()
    return WorkerHealth(alive=row[0], consuming=row[1], stopped=row[2], stale=row[3])


def workers(session: Session) -> list[dict[str, Any]]:
    """Every worker's last heartbeat, most recently seen first."""
    rows = session.execute(
        select(WorkerHeartbeat).order_by(WorkerHeartbeat.seen_at.desc())
    ).scalars()
    return [
        {
            "name": w.name,
            "hostname": w.hostname,
            "pid": w.pid,
            "queues": w.queues,
            "state": w.state,
            "started_at": w.started_at,
            "seen_at": w.seen_at,
            "consumed_at": w.consumed_at,
            "batches": w.batches,
        }
        for w in rows
    ]


def lanes_served(
    session: Session, *, now: dt.datetime, interval_s: float
) -> dict[str, tuple[int, int]]:
    """Per wake-up queue, how many running workers were seen lately and how many of
    those also consumed from the broker lately (``WorkerHealth``'s terms)."""
    fresh = fresh_after(now, interval_s)
    rows = session.execute(
        select(WorkerHeartbeat.queues, WorkerHeartbeat.consumed_at).where(
            WorkerHeartbeat.state == RUNNING, WorkerHeartbeat.seen_at >= fresh
        )
    ).all()
    served: dict[str, tuple[int, int]] = {}
    for queues, consumed_at in rows:
        consuming = int(consumed_at is not None and consumed_at >= fresh)
        for queue in (q.strip() for q in (queues or "").split(",") if q.strip()):
            alive_n, consuming_n = served.get(queue, (0, 0))
            served[queue] = (alive_n + 1, consuming_n + consuming)
    return served
