"""The SQL of the dispatch services: a job written whole, and the control row's rules.

The services decide what to write and own the transaction; the conditions and
expressions that say it in SQL live here, since only persistence builds SQL
(docs/design.md, "Layers"). Nothing here commits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from sqlalchemy import func
from sqlalchemy.orm import Session

from dispatcher.domain.statuses import BreakerState, PauseReason, RecipientStatus
from dispatcher.persistence import dialect, store
from dispatcher.persistence.models import DispatchControl, Job, Recipient

# --- a job, written whole ------------------------------------------------------------


def write_job(
    session: Session,
    *,
    job: Job,
    groups: Sequence[Sequence[str]],
    refused: Sequence[tuple[str, str]],
    due_at: dt.datetime,
    lane: int,
    expires_at: dt.datetime | None,
    now: dt.datetime,
    actor: str,
) -> None:
    """Write ``job``, a batch per group of accepted numbers (queued), the ``refused``
    (number, detail) pairs (failed with INVALID_NUMBER, in no batch) and each
    recipient's first status event.

    A small job on PostgreSQL goes in by one statement (``store.insert_small_job``);
    any other by separate inserts, which write the same rows.
    """
    accepted = sum(len(numbers) for numbers in groups)
    small = len(groups) <= 1 and accepted + len(refused) <= store.SMALL_JOB_MAX_ROWS
    if small and dialect.is_postgresql(session):
        store.insert_small_job(
            session,
            job=job,
            accepted=groups[0] if groups else [],
            refused=refused,
            due_at=due_at,
            lane=lane,
            expires_at=expires_at,
            now=now,
            actor=actor,
        )
        return
    store.insert_job(session, job=job)
    batch_ids = store.insert_batches(
        session,
        job_id=job.id,
        count=len(groups),
        due_at=due_at,
        lane=lane,
        expires_at=expires_at,
        now=now,
    )
    rows: list[dict[str, object]] = []
    for batch_id, numbers in zip(batch_ids, groups, strict=True):
        rows.extend(
            {
                "job_id": job.id,
                "batch_id": batch_id,
                "number": number,
                "status": str(RecipientStatus.QUEUED),
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
            for number in numbers
        )
    rows.extend(
        {
            "job_id": job.id,
            "batch_id": None,
            "number": number,
            "status": str(RecipientStatus.FAILED),
            "error_code": "INVALID_NUMBER",
            "error_detail": detail,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for number, detail in refused
    )
    store.insert_recipients(session, rows=rows)
    # Each recipient's first event: its status as written, caused by its refusal or
    # by the enqueue.
    store.record_transitions(
        session,
        where=Recipient.job_id == job.id,
        to_status=None,
        at=now,
        cause=func.coalesce(Recipient.error_detail, "enqueued"),
        actor=actor,
    )


# --- the control row's compare-and-sets ------------------------------------------------


def take_probe(
    session: Session, *, state: BreakerState, now: dt.datetime, lease_until: dt.datetime
) -> bool:
    """Make this claimer the breaker's probe, leased until ``lease_until``, if the
    breaker is still in ``state`` and its retry time has come; True if it won."""
    return store.update_control(
        session,
        values={"breaker_state": BreakerState.PROBING, "breaker_retry_at": lease_until},
        where=(DispatchControl.breaker_state == str(state))
        & (DispatchControl.breaker_retry_at.is_(None) | (DispatchControl.breaker_retry_at <= now)),
    )


def count_breaker_failure(session: Session) -> None:
    """Add one to the breaker's count of whole submissions failed in a row."""
    store.update_control(session, values={"breaker_failures": DispatchControl.breaker_failures + 1})


def open_breaker(session: Session, *, trips: int, now: dt.datetime, retry_at: dt.datetime) -> None:
    """Open the breaker (its ``trips``-th time in a row) until ``retry_at``; the first
    trip stamps when the outage began, later ones keep that time."""
    store.update_control(
        session,
        values={
            "breaker_state": BreakerState.OPEN,
            "breaker_trips": trips,
            "breaker_opened_at": now if trips == 1 else DispatchControl.breaker_opened_at,
            "breaker_retry_at": retry_at,
        },
    )


def set_pause(session: Session, *, values: Mapping[str, object]) -> bool:
    """Write a pause's ``values`` unless dispatch is already paused for its credentials;
    True if it did."""
    # A credentials pause outranks the others: it needs a person whatever the balance.
    return store.update_control(
        session,
        values=dict(values),
        where=DispatchControl.paused.is_(False)
        | (DispatchControl.pause_reason != str(PauseReason.LOGIN_INVALID)),
    )


def claim_credit_check(session: Session, *, now: dt.datetime, due_before: dt.datetime) -> bool:
    """Stamp the credit check at ``now`` if none ran since ``due_before``: one sweeper
    asks the gateway at a time. True if this one is to ask."""
    return store.update_control(
        session,
        values={"credit_checked_at": now},
        where=DispatchControl.credit_checked_at.is_(None)
        | (DispatchControl.credit_checked_at <= due_before),
    )


def end_pause_for(session: Session, reason: PauseReason, *, values: Mapping[str, object]) -> bool:
    """Write ``values`` (the unpaused ones) if dispatch is paused for ``reason``, and
    only then; True if it did."""
    return store.update_control(
        session, values=dict(values), where=DispatchControl.pause_reason == str(reason)
    )
