"""Worker health: each worker's row in ``worker_heartbeats``, written by the worker itself.

What ``seen_at`` and ``consumed_at`` prove is told in ``dispatcher.domain.workers``.
Each write here is its own short transaction, so a heartbeat never waits behind a
worker's dispatch work.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from dispatcher.domain.times import utcnow
from dispatcher.domain.workers import RUNNING, STOPPED
from dispatcher.persistence.db import Database
from dispatcher.persistence.store.heartbeats import update_heartbeat, upsert_heartbeat


class Heartbeats:
    """Writes one worker's heartbeat row; each call is its own short transaction."""

    def __init__(self, database: Database, name: str) -> None:
        self.db = database
        self.name = name
        # The row started() wrote, to write again if it goes missing.
        self._row: dict[str, Any] | None = None

    def started(
        self, *, hostname: str, pid: int, queues: str, now: dt.datetime | None = None
    ) -> None:
        """The worker is ready: a fresh row (a restart under the same name replaces it)."""
        now = now or utcnow()
        self._row = {
            "name": self.name,
            "hostname": hostname[:255],
            "pid": pid,
            "queues": queues[:200],
            "started_at": now,
            "seen_at": now,
            "consumed_at": None,
            "batches": 0,
            "state": RUNNING,
        }
        with self.db.transaction() as session:
            upsert_heartbeat(session, self._row)

    def beat(self, *, batches: int, now: dt.datetime | None = None) -> None:
        """The process runs and reaches the database. A row gone missing (the table
        emptied, a database restored from a backup older than the worker) is written
        again: a running worker must not stay invisible to ``dispatcher state``, the
        health check and the NoWorkerConsuming alert until it restarts."""
        values = {"seen_at": now or utcnow(), "batches": batches, "state": RUNNING}
        with self.db.transaction() as session:
            if not update_heartbeat(session, self.name, values) and self._row is not None:
                upsert_heartbeat(session, self._row | values)

    def consumed(self, *, now: dt.datetime | None = None) -> None:
        """A heartbeat task came through the broker to this worker."""
        now = now or utcnow()
        self._update(seen_at=now, consumed_at=now)

    def stopped(self, *, batches: int, now: dt.datetime | None = None) -> None:
        """A clean shutdown."""
        self._update(seen_at=now or utcnow(), batches=batches, state=STOPPED)

    def _update(self, **values: Any) -> None:
        with self.db.transaction() as session:
            update_heartbeat(session, self.name, values)
