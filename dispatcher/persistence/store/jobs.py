"""Reading jobs: one job and its rows, listings paged by job id, and counts over jobs.

``owned_by`` is the one place a producer key's view of the jobs is drawn
(docs/design.md, section 3): every selection with an ``owner_key_id`` goes through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, exists, func, select
from sqlalchemy.orm import Session

from dispatcher.domain.filters import JobFilter
from dispatcher.domain.storable import unstorable
from dispatcher.persistence.models import Attempt, Job, Recipient
from dispatcher.persistence.shown import status_is


def owned_by(owner_key_id: int | None) -> list[ColumnElement[bool]]:
    """The condition that limits jobs to those one API key enqueued (none: every job).

    The one place a producer key's view of the jobs is drawn (``dispatcher.domain.tenancy``):
    every selection with an ``owner_key_id`` goes through it.
    """
    if owner_key_id is None:
        return []
    return [Job.owner_key_id == owner_key_id]


def get_job(session: Session, *, job_id: str, owner_key_id: int | None = None) -> Job | None:
    """The job with this id, or None; with ``owner_key_id``, None for another key's job."""
    if unstorable(job_id) is not None:
        return None  # No job has an id the database cannot even hold.
    if owner_key_id is None:
        return session.get(Job, job_id)
    return session.execute(
        select(Job).where(Job.id == job_id, *owned_by(owner_key_id))
    ).scalar_one_or_none()


def job_recipients(session: Session, *, job_id: str) -> list[Recipient]:
    """A job's recipients in insertion order."""
    return list(
        session.execute(
            select(Recipient).where(Recipient.job_id == job_id).order_by(Recipient.id)
        ).scalars()
    )


def list_jobs(
    session: Session, *, selection: JobFilter, limit: int, after: str | None = None
) -> tuple[list[Job], bool]:
    """A page of jobs, newest first, with ids below ``after``; and whether more follow.

    Job ids are time-ordered and unique, so "ids below the last one seen"
    continues a listing exactly, even while new jobs arrive at its head.
    """
    query = select(Job).where(*owned_by(selection.owner_key_id))
    query = query.order_by(Job.id.desc()).limit(limit + 1)
    if after is not None:
        query = query.where(Job.id < after)
    if selection.reference is not None:
        query = query.where(Job.reference == selection.reference)
    if selection.since is not None:
        query = query.where(Job.created_at >= selection.since)
    if selection.until is not None:
        query = query.where(Job.created_at < selection.until)
    conditions = [Recipient.job_id == Job.id]
    if selection.number is not None:
        conditions.append(Recipient.number == selection.number)
    if selection.status is not None:
        conditions.append(status_is(selection.status))
    if len(conditions) > 1:
        query = query.where(exists().where(*conditions))
    rows = list(session.execute(query).scalars())
    return rows[:limit], len(rows) > limit


def status_counts(
    session: Session, *, job_ids: Sequence[str] | None = None
) -> dict[str, dict[str, int]]:
    """Recipients per status, per job (all jobs when ``job_ids`` is None)."""
    query = select(Recipient.job_id, Recipient.status, func.count()).group_by(
        Recipient.job_id, Recipient.status
    )
    if job_ids is not None:
        query = query.where(Recipient.job_id.in_(list(job_ids)))
    counts: dict[str, dict[str, int]] = {}
    for job_id, status, n in session.execute(query):
        counts.setdefault(job_id, {})[status] = int(n)
    return counts


def totals(session: Session, *, job_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Recipients per status and per error code, and attempts, over some or all jobs."""
    by_status = select(Recipient.status, func.count()).group_by(Recipient.status)
    by_code = (
        select(Recipient.error_code, func.count())
        .where(Recipient.error_code.is_not(None))
        .group_by(Recipient.error_code)
    )
    attempts = select(func.count(), func.avg(Attempt.latency_ms))
    by_outcome = select(Attempt.outcome, func.count()).group_by(Attempt.outcome)
    if job_ids is not None:
        ids = list(job_ids)
        by_status = by_status.where(Recipient.job_id.in_(ids))
        by_code = by_code.where(Recipient.job_id.in_(ids))
        attempts = attempts.where(Attempt.job_id.in_(ids))
        by_outcome = by_outcome.where(Attempt.job_id.in_(ids))
    attempt_row = session.execute(attempts).one()
    return {
        "by_status": {s: int(n) for s, n in session.execute(by_status)},
        "by_error_code": {c: int(n) for c, n in session.execute(by_code)},
        "attempts": int(attempt_row[0]),
        "attempts_by_outcome": {o: int(n) for o, n in session.execute(by_outcome)},
        "mean_latency_ms": float(attempt_row[1]) if attempt_row[1] is not None else None,
    }


def sample_message_ids(
    session: Session, *, job_ids: Sequence[str] | None = None, limit: int = 5
) -> list[tuple[str, str]]:
    """A few (number, gateway message ID) pairs of sent recipients."""
    query = (
        select(Recipient.number, Recipient.gateway_message_id)
        .where(Recipient.gateway_message_id.is_not(None))
        .order_by(Recipient.id)
        .limit(limit)
    )
    if job_ids is not None:
        query = query.where(Recipient.job_id.in_(list(job_ids)))
    return [(n, str(m)) for n, m in session.execute(query)]
