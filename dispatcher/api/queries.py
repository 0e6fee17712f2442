"""Read queries the API needs beyond what the store offers: the filtered, paginated job list.

These belong in ``dispatcher.store`` (``list_jobs_page`` beside ``recent_jobs``)
and ``Dispatcher.list_jobs``; they live here until they move. They only read,
in their own transaction, with the service's database.

Pagination is by cursor, newest first. Job ids are time-ordered (ULID layout)
and unique, so "ids below the last one seen" continues a listing exactly, even
while new jobs arrive at its head. The cursor is opaque to clients: a version
tag and the last id, base64url-encoded.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, select

from dispatcher import store
from dispatcher.db import Database
from dispatcher.models import PENDING_STATUSES, Job, Recipient, RecipientStatus

_CURSOR_VERSION = "j1:"
JOB_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
"""What ``store.new_job_id`` makes: 26 Crockford base32 characters."""


class InvalidCursorError(ValueError):
    """A cursor this API did not hand out."""


def is_job_id(value: str) -> bool:
    """Whether ``value`` could be a job id (anything else cannot exist)."""
    return bool(JOB_ID.match(value))


def encode_cursor(job_id: str) -> str:
    """The cursor that continues a listing after ``job_id``."""
    return base64.urlsafe_b64encode((_CURSOR_VERSION + job_id).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The job id a cursor continues after; InvalidCursorError for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursorError("the cursor is not one this API gave out") from None
    job_id = raw.removeprefix(_CURSOR_VERSION)
    if not raw.startswith(_CURSOR_VERSION) or not is_job_id(job_id):
        raise InvalidCursorError("the cursor is not one this API gave out")
    return job_id


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs a listing holds; every field narrows it."""

    status: RecipientStatus | None = None
    """Jobs with at least one recipient in this status."""
    number: str | None = None
    """Jobs with a recipient of this number (international digits)."""
    reference: str | None = None
    since: dt.datetime | None = None
    """Created at or after."""
    until: dt.datetime | None = None
    """Created before."""


def _status(counts: dict[str, int]) -> str:
    pending = any(RecipientStatus(s) in PENDING_STATUSES for s in counts)
    return "in_progress" if pending else "completed"


def list_jobs(
    db: Database, *, selection: JobFilter, limit: int, after: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of jobs, newest first, after the job id ``after``; and the next page's cursor."""
    query = (
        select(Job.id, Job.created_at, Job.reference, Job.recipient_count, Job.refused_count)
        .order_by(Job.id.desc())
        .limit(limit + 1)
    )
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
        conditions.append(Recipient.status == str(selection.status))
    if len(conditions) > 1:
        query = query.where(exists().where(*conditions))
    with db.transaction() as session:
        rows = list(session.execute(query))
        page, more = rows[:limit], len(rows) > limit
        counts = store.status_counts(session, job_ids=[r.id for r in page])
    jobs = [
        {
            "id": r.id,
            "created_at": r.created_at.isoformat(),
            "status": _status(counts.get(r.id, {})),
            "reference": r.reference,
            "recipients": r.recipient_count + r.refused_count,
            "counts": counts.get(r.id, {}),
        }
        for r in page
    ]
    return jobs, (encode_cursor(page[-1].id) if more and page else None)


def job_status(db: Database, job_id: str) -> str:
    """``in_progress`` while any recipient of the job is pending, else ``completed``."""
    pending = [str(s) for s in PENDING_STATUSES]
    with db.transaction() as session:
        busy = session.execute(
            select(exists().where(Recipient.job_id == job_id, Recipient.status.in_(pending)))
        ).scalar_one()
    return "in_progress" if busy else "completed"
