"""What a test reads back: the database's rows, the SQL sent, the simulator's requests."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, func, select

from dispatcher.domain.statuses import FINAL_STATUSES, RecipientStatus
from dispatcher.gateway.protocol import SEND_PATH
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Attempt, Batch, Job, Recipient, StatusEvent
from support.polling import wait_until


def recipients_of(db: Database, job_id: str) -> list[Recipient]:
    """A job's recipients in insertion order."""
    with db.transaction() as session:
        return list(
            session.scalars(
                select(Recipient).where(Recipient.job_id == job_id).order_by(Recipient.id)
            )
        )


def attempts_of(db: Database, job_id: str | None = None) -> list[Attempt]:
    """Attempt rows, oldest first (of one job, or all)."""
    query = select(Attempt).order_by(Attempt.id)
    if job_id is not None:
        query = query.where(Attempt.job_id == job_id)
    with db.transaction() as session:
        return list(session.scalars(query))


def batches_of(db: Database, job_id: str | None = None) -> list[Batch]:
    """Batch rows in order (of one job, or all)."""
    query = select(Batch).order_by(Batch.id)
    if job_id is not None:
        query = query.where(Batch.job_id == job_id)
    with db.transaction() as session:
        return list(session.scalars(query))


def events_of(db: Database, job_id: str) -> list[StatusEvent]:
    """A job's status events, oldest first."""
    with db.transaction() as session:
        return list(
            session.scalars(
                select(StatusEvent).where(StatusEvent.job_id == job_id).order_by(StatusEvent.id)
            )
        )


def row_counts(db: Database) -> dict[str, int]:
    """Rows per table of the dispatcher's schema."""
    counts = {}
    with db.transaction() as session:
        for model in (Job, Batch, Recipient, Attempt, StatusEvent):
            counts[model.__tablename__] = int(
                session.execute(select(func.count()).select_from(model)).scalar_one()
            )
    return counts


def job_final(db: Database, job_id: str) -> bool:
    """True once every recipient of the job is in a final state."""
    rows = recipients_of(db, job_id)
    return bool(rows) and all(RecipientStatus(r.status) in FINAL_STATUSES for r in rows)


def wait_for_jobs(db: Database, job_ids: Iterable[str], timeout_s: float = 60.0) -> None:
    """Wait until every recipient of these jobs is final."""
    ids = list(job_ids)
    wait_until(
        lambda: all(job_final(db, job_id) for job_id in ids),
        timeout_s,
        interval_s=0.1,
        message=f"jobs {ids} to be final",
    )


def send_requests(sim: GatewaySimulator) -> int:
    """How many ``sendmsg.aspx`` requests the simulator has received."""
    return int(sim.stats()["requests_by_path"].get(SEND_PATH, 0))


@contextmanager
def statements_starting(db: Database, prefix: str) -> Iterator[list[str]]:
    """The SQL statements sent on ``db`` while inside, that start with ``prefix``."""
    seen: list[str] = []

    def watch(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().startswith(prefix):
            seen.append(statement)

    for engine in db.engines():
        event.listen(engine, "before_cursor_execute", watch)
    try:
        yield seen
    finally:
        for engine in db.engines():
            event.remove(engine, "before_cursor_execute", watch)


def claims_of(db: Database, job_id: str) -> list[tuple[int, int, str]]:
    """(attempt id, recipient id, status before) of every claim a job's attempts record
    (``Attempt.claimed``: the claim is kept per submission, not as status events)."""
    return [
        (attempt.id, int(rid), str(status))
        for attempt in attempts_of(db, job_id)
        for rid, status in json.loads(attempt.claimed or "[]")
    ]
