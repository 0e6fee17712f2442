"""Completion webhooks' rows: jobs waiting for theirs, deliveries and their tries.

A job asks for a webhook with ``callback_state = 'waiting'``; when its last
recipient is final the job moves to ``queued`` and one ``webhook_deliveries`` row is
made, in the same transaction, so a delivery is queued once (docs/design.md section 5).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from dispatcher.domain.statuses import PENDING_STATUSES, DeliveryStatus
from dispatcher.persistence.models import Job, Recipient, WebhookAttempt, WebhookDelivery


def finished_waiting_jobs(session: Session, *, limit: int) -> Sequence[tuple[str, str]]:
    """(job id, callback URL) of jobs waiting for a webhook whose recipients are all final."""
    pending = exists().where(
        Recipient.job_id == Job.id,
        Recipient.stored_status.in_([str(s) for s in PENDING_STATUSES]),
    )
    rows = session.execute(
        select(Job.id, Job.callback_url)
        .where(Job.callback_state == "waiting", ~pending)
        .order_by(Job.created_at)
        .limit(limit)
    ).all()
    # A waiting job always has its URL (the enqueue sets both together).
    return [(job_id, url) for job_id, url in rows if url is not None]


def queue_delivery(session: Session, *, job_id: str, url: str, now: dt.datetime) -> bool:
    """Move a waiting job to ``queued`` and make its delivery; False if it moved already."""
    moved = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.callback_state == "waiting")
        .values(callback_state="queued")
        .execution_options(synchronize_session=False)
    )
    if not moved.rowcount:  # type: ignore[attr-defined]
        return False
    session.add(
        WebhookDelivery(
            job_id=job_id,
            url=url,
            status=DeliveryStatus.QUEUED,
            attempts=0,
            due_at=now,
            created_at=now,
            updated_at=now,
        )
    )
    return True


def count_due(session: Session, *, now: dt.datetime, cap: int) -> int:
    """Deliveries due at ``now``, counted up to ``cap`` (a gauge, not an audit figure)."""
    return len(
        session.execute(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.status == DeliveryStatus.QUEUED, WebhookDelivery.due_at <= now)
            .limit(cap)
        ).all()
    )


def release_stale(session: Session, *, claimed_before: dt.datetime, now: dt.datetime) -> int:
    """Deliveries ``sending`` since before ``claimed_before`` go back to the queue."""
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.status == DeliveryStatus.SENDING,
            WebhookDelivery.claimed_at < claimed_before,
        )
        .values(status=DeliveryStatus.QUEUED, claimed_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def record_try(
    session: Session,
    *,
    delivery_id: int,
    at: dt.datetime,
    http_status: int | None,
    error: str | None,
    latency_ms: float,
    changes: dict[str, Any],
) -> None:
    """One try's row, and the delivery released from its claim with ``changes`` applied."""
    session.add(
        WebhookAttempt(
            delivery_id=delivery_id,
            at=at,
            http_status=http_status,
            error=error,
            latency_ms=latency_ms,
        )
    )
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(claimed_at=None, updated_at=at, **changes)
        .execution_options(synchronize_session=False)
    )
