"""The attempt row of a claimed batch: written as in flight, with its recipients moved
to ``submitting``, before the HTTP call, and completed after it (docs/design.md,
section 3, guarantees 2 and 3)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.orm import Session

from dispatcher.domain.statuses import WAITING_STATUSES, AttemptOutcome, RecipientStatus
from dispatcher.persistence import dialect
from dispatcher.persistence.models import Attempt
from dispatcher.persistence.store._common import json_rows
from dispatcher.persistence.store.claims import ClaimedBatch
from dispatcher.persistence.store.transitions import transition


def start_attempt(
    session: Session,
    *,
    batch: ClaimedBatch,
    request: str,
    now: dt.datetime,
    cause: str,
    actor: str,
) -> int:
    """Write the in-flight attempt row for a claimed batch and move its recipients to
    ``submitting`` with one status event each; returns the attempt's id.

    On PostgreSQL in one statement; the recipients were locked by the claim, so
    the from-statuses read then are still theirs.
    """
    recipients = batch.recipients
    numbers = ",".join(r.number for r in recipients)
    values = {
        "batch_id": batch.id,
        "job_id": batch.job_id,
        "attempt_no": batch.attempts,
        "numbers": numbers,
        "request": request,
        "now": now,
        "worker": actor,
    }
    if dialect.is_postgresql(session):
        return int(
            session.execute(
                _START_ATTEMPT,
                values
                | {
                    "in_flight": str(AttemptOutcome.IN_FLIGHT),
                    "ids": json_rows(
                        ("id", "status"), [(r.id, r.status) for r in batch.recipients]
                    ),
                    "to_status": str(RecipientStatus.SUBMITTING),
                    "cause": cause,
                },
            ).scalar_one()
        )
    attempt_id = insert_attempt(
        session,
        attempt=Attempt(
            batch_id=batch.id,
            job_id=batch.job_id,
            attempt_no=batch.attempts,
            numbers=numbers,
            request=request,
            started_at=now,
            worker=actor,
        ),
    )
    transition(
        session,
        ids=[r.id for r in batch.recipients],
        from_statuses=WAITING_STATUSES,
        to_status=RecipientStatus.SUBMITTING,
        at=now,
        cause=cause,
        actor=actor,
        attempt_id=attempt_id,
    )
    return attempt_id


_START_ATTEMPT = text(
    """
    WITH claimed AS (
        SELECT * FROM json_to_recordset(CAST(:ids AS json)) AS f (id bigint, status text)
    ),
    attempt AS (
        INSERT INTO attempts (batch_id, job_id, attempt_no, numbers, request, started_at,
            outcome, worker)
        VALUES (:batch_id, :job_id, :attempt_no, :numbers, :request, :now, :in_flight, :worker)
        RETURNING id
    ),
    moved AS (
        UPDATE recipients SET status = :to_status, updated_at = :now
        WHERE batch_id = :batch_id AND id = ANY (ARRAY(SELECT id FROM claimed))
            AND (status || '') IN ('queued', 'retry_wait')
        RETURNING id, job_id
    ),
    events AS (
        INSERT INTO status_events (recipient_id, job_id, at, from_status, to_status, cause,
            actor, attempt_id)
        SELECT m.id, m.job_id, :now, f.status, :to_status, :cause, :worker, a.id
        FROM moved m JOIN claimed f ON f.id = m.id CROSS JOIN attempt a
    )
    SELECT id FROM attempt
    """
)


def insert_attempt(session: Session, *, attempt: Attempt) -> int:
    """Add an attempt row and return its id."""
    session.add(attempt)
    session.flush()
    return attempt.id


def complete_attempt(session: Session, *, attempt_id: int, values: dict[str, Any]) -> None:
    """Fill in an attempt row's result."""
    session.execute(
        update(Attempt)
        .where(Attempt.id == attempt_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
