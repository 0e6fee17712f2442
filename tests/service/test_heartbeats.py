"""A worker's heartbeat row (README, "Worker health"): written by the worker itself,
and written again when it has gone missing while the worker runs."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, select

from dispatcher.domain.times import utcnow
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import WorkerHeartbeat
from dispatcher.persistence.store.heartbeats import health
from dispatcher.service.heartbeat import Heartbeats


def _row(database: Database, name: str) -> WorkerHeartbeat | None:
    with database.transaction() as session:
        row = session.execute(
            select(WorkerHeartbeat).where(WorkerHeartbeat.name == name)
        ).scalar_one_or_none()
        if row is not None:
            session.expunge(row)
        return row


def test_a_beat_writes_a_missing_row_again(database: Database) -> None:
    """The table emptied under a running worker (a restore from an older backup, a
    benchmark's truncate): the next beat brings the worker back, so it does not read
    as absent (NoWorkerConsuming firing, send() warning) until it restarts."""
    started = utcnow() - dt.timedelta(minutes=5)
    beats = Heartbeats(database, "celery@w1")
    beats.started(hostname="host-1", pid=4242, queues="dispatch.high", now=started)
    with database.transaction() as session:
        session.execute(delete(WorkerHeartbeat))

    now = utcnow()
    beats.beat(batches=7, now=now)

    row = _row(database, "celery@w1")
    assert row is not None
    assert (row.hostname, row.pid, row.queues, row.batches, row.state) == (
        "host-1",
        4242,
        "dispatch.high",
        7,
        "running",
    )
    assert row.seen_at.replace(tzinfo=None) == now.replace(tzinfo=None)
    assert row.started_at.replace(tzinfo=None) == started.replace(tzinfo=None)
    with database.transaction() as session:
        found = health(session, now=now, interval_s=10)
    assert (found.alive, found.consuming) == (1, 0)

    # The heartbeat task consuming from the broker marks it consuming again.
    Heartbeats(database, "celery@w1").consumed(now=now)
    with database.transaction() as session:
        assert health(session, now=now, interval_s=10).consuming == 1


def test_a_beat_keeps_what_the_row_holds(database: Database) -> None:
    """A present row is updated, not replaced: its consumed time stays."""
    now = utcnow()
    beats = Heartbeats(database, "celery@w2")
    beats.started(hostname="host-2", pid=1, queues="dispatch.normal", now=now)
    beats.consumed(now=now)
    beats.beat(batches=3, now=now + dt.timedelta(seconds=1))
    row = _row(database, "celery@w2")
    assert row is not None
    assert row.consumed_at is not None
    assert row.batches == 3


def test_a_worker_that_never_started_writes_nothing(database: Database) -> None:
    """The heartbeat task's writer knows no host or queues: it never invents a row."""
    Heartbeats(database, "celery@ghost").consumed()
    assert _row(database, "celery@ghost") is None
