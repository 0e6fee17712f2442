"""Recovering work nobody will finish: batches whose worker died mid-call (their
recipients ``unknown``, never resent: docs/design.md, section 3, guarantee 2),
batches whose validity has passed, and retries waiting past their job's age limit."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import case, exists, func, select, update
from sqlalchemy.orm import Session

from dispatcher.domain.statuses import (
    WAITING_STATUSES,
    AttemptOutcome,
    BatchStatus,
    RecipientStatus,
)
from dispatcher.persistence import columns, dialect
from dispatcher.persistence.models import Attempt, Batch, Job, Recipient, StatusEvent
from dispatcher.persistence.shown import status_is
from dispatcher.persistence.store._common import WORKER_LOST
from dispatcher.persistence.store.attempts import complete_attempt
from dispatcher.persistence.store.claims import sendable_recipients
from dispatcher.persistence.store.replies import settle_batch
from dispatcher.persistence.store.transitions import transition


def stale_submitting_batches(
    session: Session, *, older_than: dt.datetime, limit: int = 100
) -> list[int]:
    """Batches claimed before ``older_than`` and never completed (locked, on PostgreSQL)."""
    query = (
        select(Batch.id)
        .where(Batch.status == BatchStatus.SUBMITTING, Batch.claimed_at < older_than)
        .order_by(Batch.claimed_at)
        .limit(limit)
    )
    return list(session.execute(dialect.skip_locked(session, query)).scalars())


def abandon_batch(session: Session, *, batch_id: int, now: dt.datetime, cause: str) -> int:
    """Close a dead worker's batch: its in-flight attempt abandoned, recipients unknown.

    The recipients' attempt counts include the abandoned call: it may have reached
    the gateway. A late reply of it replaces this guess without counting it twice
    (``record_outcome``)."""
    moved = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == BatchStatus.SUBMITTING)
        .values(status=BatchStatus.DONE, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if not moved.rowcount:  # type: ignore[attr-defined]
        return 0
    in_flight = list(
        session.execute(
            select(Attempt.id).where(
                Attempt.batch_id == batch_id, Attempt.outcome == AttemptOutcome.IN_FLIGHT
            )
        ).scalars()
    )
    for attempt_id in in_flight:
        complete_attempt(
            session,
            attempt_id=attempt_id,
            values=columns.fit_attempt(
                {"outcome": AttemptOutcome.ABANDONED, "finished_at": now, "error": cause}
            ),
        )
    # Its recipients still waiting are the ones the call carried (and, on a database
    # written before the claim was kept per submission, those stored submitting),
    # less any whose outcome of that call was written: a reply recorded recipient by
    # recipient may have left the batch submitting with some of them answered.
    last = session.execute(
        select(func.max(Attempt.id)).where(Attempt.batch_id == batch_id)
    ).scalar_one()
    answered = exists().where(
        StatusEvent.recipient_id == Recipient.id, StatusEvent.attempt_id == last
    )
    ids = list(
        session.execute(
            select(Recipient.id).where(
                Recipient.batch_id == batch_id,
                Recipient.stored_status.in_([*WAITING_STATUSES, RecipientStatus.SUBMITTING]),
                ~answered,
            )
        ).scalars()
    )
    lost = transition(
        session,
        ids=ids,
        from_statuses=[RecipientStatus.SUBMITTING],
        to_status=RecipientStatus.UNKNOWN,
        at=now,
        cause=columns.fit_cause(cause),
        actor="sweeper",
        attempt_id=in_flight[-1] if in_flight else None,
        values=columns.fit(Recipient, {"error_code": WORKER_LOST, "error_detail": cause})
        | {"attempts": Recipient.attempts + 1},
        batches="in_flight",
    )
    if sendable_recipients(session, batch_id=batch_id):
        # Some the call's reply answered with a retry wait again, at their time; a
        # batch closed whole keeps its claim time as evidence.
        settle_batch(session, batch_id=batch_id, now=now)
    return lost


def expired_batches(
    session: Session, *, now: dt.datetime, limit: int = 100
) -> list[tuple[int, dt.datetime]]:
    """(id, expiry) of queued batches (due, scheduled or retrying) whose expiry has passed."""
    query = (
        select(Batch)
        .where(
            Batch.status == BatchStatus.QUEUED,
            Batch.expires_at.is_not(None),
            Batch.expires_at <= now,
        )
        .order_by(Batch.expires_at)
        .limit(limit)
    )
    batches = session.execute(dialect.skip_locked(session, query)).scalars()
    return [(b.id, b.expires_at) for b in batches if b.expires_at is not None]


def expire_batch(
    session: Session, *, batch_id: int, now: dt.datetime, cause: str, actor: str
) -> int:
    """End a batch whose validity has passed: its unsent recipients ``expired``, it done.

    The caller holds the batch: the sweeper locked it queued, or a worker claimed it."""
    ids = [r.id for r in sendable_recipients(session, batch_id=batch_id)]
    moved = transition(
        session,
        ids=ids,
        from_statuses=list(WAITING_STATUSES),
        to_status=RecipientStatus.EXPIRED,
        at=now,
        cause=cause,
        actor=actor,
        values={"error_code": "EXPIRED", "error_detail": cause[:500], "next_attempt_at": None},
        batches="held",
    )
    settle_batch(session, batch_id=batch_id, now=now)
    return moved


def overdue_retries(
    session: Session, *, created_before: dt.datetime, limit: int = 1000
) -> list[int]:
    """Recipients waiting to retry (not in a batch in flight) whose job became due
    before ``created_before``, or whose operator's retry was, if later.

    A scheduled job's age counts from its send time, not from when it was queued: a
    job queued days ahead must not fail on its first transient error at its time. A
    recipient an operator retried counts from the retry (its batch's creation), so
    the retry gets the same time to succeed as a first send (docs/operating.md).
    """
    due = func.coalesce(Job.send_at, Recipient.created_at)
    # Retried: an operator's retry keeps the count it started from (attempts_base).
    retried = (Recipient.attempts_base > 0) & (Batch.created_at > due)
    since = case((retried, Batch.created_at), else_=due)
    return list(
        session.execute(
            select(Recipient.id)
            .join(Job, Job.id == Recipient.job_id)
            .outerjoin(Batch, Batch.id == Recipient.batch_id)
            .where(status_is(RecipientStatus.RETRY_WAIT), since < created_before)
            .limit(limit)
        ).scalars()
    )
