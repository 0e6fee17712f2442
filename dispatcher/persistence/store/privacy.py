"""Retention and erasure: finding what a purge or an erasure touches, and removing
numbers and texts from every column that can hold them, while the counts, times and
statuses of the history stay."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from sqlalchemy import ColumnElement, exists, func, select, update
from sqlalchemy.orm import Session

from dispatcher.domain.statuses import RecipientStatus
from dispatcher.persistence import dialect
from dispatcher.persistence.models import Attempt, Job, Recipient, StatusEvent
from dispatcher.persistence.store.keyset import KeyColumn, keyset_after

PURGED = "purged"
"""What replaces a number once retention has removed it."""


ERASED = "erased"
"""What replaces a number erased on its owner's request."""
NUMBER_MARKERS = frozenset({PURGED, ERASED})
MIN_SCRUB_LENGTH = 5
"""Shorter stored inputs (a refused ``12``) are not numbers anyone owns, and replacing
them inside free text would mangle attempt counts and codes."""


def _pending_recipient_of_job() -> ColumnElement[bool]:
    pending = [str(s) for s in RecipientStatus if not s.is_final]
    return exists().where(Recipient.job_id == Job.id, Recipient.stored_status.in_(pending))


def purgeable_jobs(
    session: Session,
    *,
    created_before: dt.datetime,
    after: tuple[dt.datetime, str] | None,
    limit: int,
) -> list[tuple[str, dt.datetime]]:
    """(id, created_at) of unpurged jobs created before ``created_before`` whose
    recipients are all final, oldest first (locked, skipping those another purger has)."""
    query = (
        select(Job.id, Job.created_at)
        .where(
            Job.created_at < created_before,
            Job.purged_at.is_(None),
            ~_pending_recipient_of_job(),
        )
        .order_by(Job.created_at, Job.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(keyset_after([Job.created_at, Job.id], after))
    rows = session.execute(dialect.skip_locked(session, query, of=Job))
    return [(row[0], row[1]) for row in rows]


def count_purgeable(session: Session, *, created_before: dt.datetime) -> tuple[int, int]:
    """How many jobs, and recipients of them, a purge at this cutoff would touch."""
    jobs = (
        select(Job.id)
        .where(
            Job.created_at < created_before,
            Job.purged_at.is_(None),
            ~_pending_recipient_of_job(),
        )
        .subquery()
    )
    n_jobs = session.execute(select(func.count()).select_from(jobs)).scalar_one()
    n_recipients = session.execute(
        select(func.count()).select_from(Recipient).where(Recipient.job_id.in_(select(jobs.c.id)))
    ).scalar_one()
    return int(n_jobs), int(n_recipients)


def _names_own_number(column: KeyColumn) -> ColumnElement[bool]:
    return (func.length(Recipient.number) >= MIN_SCRUB_LENGTH) & column.contains(
        Recipient.number, autoescape=False
    )


def events_naming_their_number(
    session: Session, *, recipients: ColumnElement[bool]
) -> list[tuple[int, str, str]]:
    """(event id, cause, number) of the events of ``recipients`` whose cause quotes
    the recipient's own number."""
    rows = session.execute(
        select(StatusEvent.id, StatusEvent.cause, Recipient.number)
        .join(Recipient, Recipient.id == StatusEvent.recipient_id)
        .where(recipients, _names_own_number(StatusEvent.cause))
    )
    return [(r[0], r[1], r[2]) for r in rows]


def details_naming_their_number(
    session: Session, *, recipients: ColumnElement[bool]
) -> list[tuple[int, str, str]]:
    """(recipient id, error detail, number) of ``recipients`` whose detail quotes it."""
    rows = session.execute(
        select(Recipient.id, Recipient.error_detail, Recipient.number).where(
            recipients, _names_own_number(Recipient.error_detail)
        )
    )
    return [(r[0], r[1] or "", r[2]) for r in rows]


def set_event_causes(session: Session, *, causes: dict[int, str]) -> None:
    """Rewrite some events' causes (the history keeps its rows and times)."""
    if causes:
        session.execute(
            update(StatusEvent),
            [{"id": event_id, "cause": cause} for event_id, cause in causes.items()],
        )


def set_error_details(session: Session, *, details: dict[int, str]) -> None:
    """Rewrite some recipients' error details."""
    if details:
        session.execute(
            update(Recipient),
            [{"id": rid, "error_detail": detail} for rid, detail in details.items()],
        )


@dataclass(frozen=True, slots=True)
class AttemptText:
    """The fields of an attempt that can name numbers."""

    id: int
    numbers: str
    request: str | None
    raw_reply: str | None
    error: str | None


def attempt_texts(session: Session, *, job_ids: Collection[str]) -> list[AttemptText]:
    """The number-bearing fields of these jobs' attempts."""
    rows = session.execute(
        select(Attempt.id, Attempt.numbers, Attempt.request, Attempt.raw_reply, Attempt.error)
        .where(Attempt.job_id.in_(list(job_ids)))
        .order_by(Attempt.id)
    )
    return [AttemptText(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def set_attempt_texts(session: Session, *, rows: Sequence[AttemptText]) -> None:
    """Write back attempts' number-bearing fields."""
    if rows:
        session.execute(
            update(Attempt),
            [
                {
                    "id": r.id,
                    "numbers": r.numbers,
                    "request": r.request,
                    "raw_reply": r.raw_reply,
                    "error": r.error,
                }
                for r in rows
            ],
        )


def replace_numbers(session: Session, *, recipients: ColumnElement[bool], marker: str) -> int:
    """Replace the number of every recipient matching ``recipients`` by ``marker``."""
    result = session.execute(
        update(Recipient)
        .where(recipients, Recipient.number.not_in(list(NUMBER_MARKERS)))
        .values(number=marker)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def remove_job_texts(session: Session, *, job_ids: Collection[str], now: dt.datetime) -> int:
    """Empty these jobs' texts (and the request digest, which a short text would not
    protect) and stamp ``purged_at``; the counts and everything else stay."""
    if not job_ids:
        return 0
    result = session.execute(
        update(Job)
        .where(Job.id.in_(list(job_ids)))
        .values(text="", request_hash=None, purged_at=func.coalesce(Job.purged_at, now))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def recipients_with_number(
    session: Session, *, number: str, limit: int
) -> list[tuple[int, str, str]]:
    """(id, job id, status) of up to ``limit`` recipients with this number, locked.

    The lock keeps two erasures apart. A claim takes no recipient lock: what keeps a
    number from being scrubbed out of a batch on its way to the gateway is the
    cancel of the waiting ones, which locks and touches their batches (a claim then
    waits, or claims again and finds them cancelled) and moves none in flight, which
    the erasure then refuses (``service.privacy``).
    """
    rows = session.execute(
        select(Recipient.id, Recipient.job_id, Recipient.status)
        .where(Recipient.number == number)
        .order_by(Recipient.created_at, Recipient.id)
        .limit(limit)
        .with_for_update()
    )
    return [(r[0], r[1], r[2]) for r in rows]


def count_with_number(session: Session, *, number: str) -> dict[str, int]:
    """Recipients with this number, per status."""
    rows = session.execute(
        select(Recipient.status, func.count())
        .where(Recipient.number == number)
        .group_by(Recipient.status)
    )
    return {status: int(n) for status, n in rows}


def jobs_only_to(session: Session, *, job_ids: Collection[str], number: str) -> list[str]:
    """Those of ``job_ids`` whose every recipient has this number."""
    if not job_ids:
        return []
    # Recipients erased or purged before belong to nobody any more.
    other = exists().where(
        Recipient.job_id == Job.id, Recipient.number.not_in([number, *NUMBER_MARKERS])
    )
    return list(session.execute(select(Job.id).where(Job.id.in_(list(job_ids)), ~other)).scalars())


RecipientScope: TypeAlias = ColumnElement[bool]
"""A condition on recipients, as ``store.events_naming_their_number``,
``store.details_naming_their_number`` and ``store.replace_numbers`` take it."""


def recipients_of_jobs(job_ids: Collection[str]) -> RecipientScope:
    """Every recipient of the jobs ``job_ids``."""
    return Recipient.job_id.in_(job_ids)


def recipients_by_id(ids: Collection[int]) -> RecipientScope:
    """The recipients ``ids``."""
    return Recipient.id.in_(ids)
