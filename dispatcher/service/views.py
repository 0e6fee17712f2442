"""What the CLI, the API and the dashboard read: jobs, totals and the control row, as
JSON-ready data. Each function reads in its own short transaction and writes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any, TypedDict

from dispatcher.domain.statuses import RecipientStatus, job_state
from dispatcher.domain.tenancy import EVERY_JOB, Viewer
from dispatcher.errors import NotFoundError
from dispatcher.persistence import store
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Job, Recipient
from dispatcher.persistence.store import visible_to
from dispatcher.service.control import control_view


class RecipientView(TypedDict):
    """One recipient of a job, as the CLI, the API and webhooks show it."""

    number: str
    status: str
    gateway_message_id: str | None
    error_code: str | None
    error_detail: str | None
    attempts: int
    next_attempt_at: str | None
    updated_at: str


class JobView(TypedDict):
    """A job with every recipient (``GET /v1/jobs/{id}``, ``dispatcher status``, webhooks)."""

    id: str
    status: str
    created_at: str
    kind: str
    sender: str | None
    maxconcat: int
    parts: int
    credits: int
    encoding: str
    reference: str | None
    priority: str
    send_at: str | None
    expires_at: str | None
    created_by: str
    counts: dict[str, int]
    recipients: list[RecipientView]


class JobRow(TypedDict):
    """A job in a listing (``GET /v1/jobs``, ``dispatcher jobs``): counts, not recipients."""

    id: str
    created_at: str
    status: str
    reference: str | None
    priority: str
    send_at: str | None
    recipients: int
    parts: int
    credits: int
    counts: dict[str, int]


def job_view(db: Database, job_id: str, *, viewer: Viewer = EVERY_JOB) -> JobView:
    """A job as JSON-ready data (docs/design.md, "Interfaces"): id, status, recipients,
    totals.

    NotFoundError for a job that does not exist or that ``viewer`` may not see,
    alike.
    """
    with db.transaction() as session:
        job = store.get_job(session, job_id=job_id, owner_key_id=viewer.owner_key_id)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}")
        recipients = store.job_recipients(session, job_id=job_id)
    return job_to_dict(job, recipients)


def summary(db: Database, job_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Recipients per status and error code, attempts, and a few gateway IDs."""
    with db.transaction() as session:
        result = store.totals(session, job_ids=job_ids)
        result["sample_ids"] = store.sample_message_ids(session, job_ids=job_ids, limit=5)
    return result


def list_jobs(
    db: Database,
    *,
    limit: int = 20,
    number: str | None = None,
    status: RecipientStatus | None = None,
    reference: str | None = None,
) -> list[JobRow]:
    """The newest jobs with their recipients per status, newest first."""
    selection = store.JobFilter(status=status, number=number, reference=reference)
    rows, _more = list_jobs_page(db, selection=selection, limit=limit)
    return rows


def list_jobs_page(
    db: Database,
    *,
    selection: store.JobFilter,
    limit: int,
    after: str | None = None,
    viewer: Viewer = EVERY_JOB,
) -> tuple[list[JobRow], bool]:
    """A page of jobs ``viewer`` may see, newest first, with ids below ``after``, and
    whether more follow.

    Shared by the CLI (``dispatcher jobs``) and the API (``GET /v1/jobs``).
    """
    selection = visible_to(viewer, selection)
    with db.transaction() as session:
        jobs, more = store.list_jobs(session, selection=selection, limit=limit, after=after)
        counts = store.status_counts(session, job_ids=[j.id for j in jobs])
    rows: list[JobRow] = []
    for job in jobs:
        job_counts = counts.get(job.id, {})
        rows.append(
            {
                "id": job.id,
                "created_at": job.created_at.isoformat(),
                "status": job_state(job_counts),
                "reference": job.reference,
                "priority": job.priority,
                "send_at": _iso(job.send_at),
                "recipients": job.recipient_count + job.refused_count,
                "parts": job.parts,
                "credits": job.parts * job.recipient_count,
                "counts": job_counts,
            }
        )
    return rows, more


def control(db: Database) -> dict[str, Any]:
    """Paused or not (with reason, time and who), and the breaker's state."""
    with db.transaction() as session:
        return control_view(store.get_control(session))


def job_status(recipients: Sequence[Recipient]) -> str:
    """A job's overall status (``dispatcher.domain.statuses.job_state``)."""
    return job_state(Counter(str(r.status) for r in recipients))


def job_to_dict(job: Job, recipients: Sequence[Recipient]) -> JobView:
    """The JSON shape of a job shared by the CLI and the API."""
    counts: dict[str, int] = defaultdict(int)
    for r in recipients:
        counts[r.status] += 1
    return {
        "id": job.id,
        "status": job_status(recipients),
        "created_at": job.created_at.isoformat(),
        "kind": job.kind,
        "sender": job.sender,
        "maxconcat": job.maxconcat,
        "parts": job.parts,
        "credits": job.parts * job.recipient_count,
        "encoding": job.encoding,
        "reference": job.reference,
        "priority": job.priority,
        "send_at": _iso(job.send_at),
        "expires_at": _iso(job.expires_at),
        "created_by": job.created_by,
        "counts": dict(counts),
        "recipients": [
            {
                "number": r.number,
                "status": r.status,
                "gateway_message_id": r.gateway_message_id,
                "error_code": r.error_code,
                "error_detail": r.error_detail,
                "attempts": r.attempts,
                "next_attempt_at": r.next_attempt_at.isoformat() if r.next_attempt_at else None,
                "updated_at": r.updated_at.isoformat(),
            }
            for r in recipients
        ],
    }


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None
