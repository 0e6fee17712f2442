"""Reads of the rollup tables and the cheap live figures beside them.

``stats_minutes`` and ``status_counts`` are written only by the rollup
(``dispatcher.persistence.store.rollup``); the names and buckets are those of
``dispatcher.domain.metrics``. The live reads here probe indexes only: one per lane
for the oldest due batch, never a count of the big tables.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dispatcher.domain.lanes import LANE_NUMBERS
from dispatcher.domain.metrics import EPOCH, ROLLUP, SEALED_BEFORE, Series
from dispatcher.domain.statuses import WAITING_STATUSES, BatchStatus, RecipientStatus
from dispatcher.persistence.models import Batch, Recipient, StatsMinute, StatusCount


def oldest_due_at(session: Session, *, now: dt.datetime) -> dt.datetime | None:
    """The oldest ``due_at`` among queued batches due now: one index probe per lane."""
    oldest: dt.datetime | None = None
    for lane in LANE_NUMBERS:
        value = session.execute(
            select(func.min(Batch.due_at)).where(
                Batch.status == BatchStatus.QUEUED, Batch.lane == lane, Batch.due_at <= now
            )
        ).scalar_one()
        if value is not None and (oldest is None or value < oldest):
            oldest = value
    return oldest


def status_counts(session: Session) -> tuple[dict[str, int], dt.datetime | None]:
    """Recipients by status from the last rollup, and when it was computed."""
    counts = {status.value: 0 for status in RecipientStatus}
    computed_at: dt.datetime | None = None
    for row in session.execute(select(StatusCount)).scalars():
        counts[row.status] = int(row.recipients)
        computed_at = row.computed_at if computed_at is None else min(computed_at, row.computed_at)
    return counts, computed_at


def series(session: Session, *, name: str, since: dt.datetime, step: dt.timedelta) -> Series:
    """One rollup metric since ``since``, summed into buckets of ``step``."""
    rows = session.execute(
        select(StatsMinute.bucket_at, StatsMinute.label, StatsMinute.value).where(
            StatsMinute.name == name, StatsMinute.bucket_at >= since
        )
    ).all()
    totals: dict[str, float] = {}
    buckets: dict[dt.datetime, dict[str, float]] = {}
    step_s = step.total_seconds()
    for bucket_at, label, value in rows:
        totals[label] = totals.get(label, 0.0) + value
        offset = (bucket_at - since).total_seconds() // step_s
        key = since + dt.timedelta(seconds=offset * step_s)
        point = buckets.setdefault(key, {})
        point[label] = point.get(label, 0.0) + value
    return Series(totals=totals, points=sorted(buckets.items()))


def rollup_marks(session: Session) -> dict[str, dt.datetime]:
    """The rollup's marks (``sealed_before``, ``ran_at``) as datetimes; empty before any run."""
    rows = session.execute(
        select(StatsMinute.label, StatsMinute.value).where(
            StatsMinute.bucket_at == EPOCH, StatsMinute.name == ROLLUP
        )
    ).all()
    return {label: dt.datetime.fromtimestamp(value, dt.UTC) for label, value in rows}


def counter_totals(session: Session, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """All-time totals by name and label: the sealed totals plus the minutes since.

    They only grow while the audit rows they count stay (``persistence.store.rollup``).
    """
    sealed_before = rollup_marks(session).get(SEALED_BEFORE)
    totals: dict[str, dict[str, float]] = {name: {} for name in names}
    if sealed_before is None:
        return totals
    rows = session.execute(
        select(StatsMinute.name, StatsMinute.label, func.sum(StatsMinute.value))
        .where(
            StatsMinute.name.in_(list(names)),
            (StatsMinute.bucket_at == EPOCH) | (StatsMinute.bucket_at >= sealed_before),
        )
        .group_by(StatsMinute.name, StatsMinute.label)
    ).all()
    for name, label, value in rows:
        totals[name][label] = float(value)
    return totals


def due_work(session: Session, *, now: dt.datetime) -> tuple[int, int]:
    """Queued batches due now, and the recipients waiting in them (via the due index)."""
    due = (
        select(Batch.id)
        .where(
            Batch.status == BatchStatus.QUEUED, Batch.lane.in_(LANE_NUMBERS), Batch.due_at <= now
        )
        .scalar_subquery()
    )
    batches = session.execute(
        select(func.count()).where(
            Batch.status == BatchStatus.QUEUED, Batch.lane.in_(LANE_NUMBERS), Batch.due_at <= now
        )
    ).scalar_one()
    recipients = session.execute(
        select(func.count()).where(
            Recipient.batch_id.in_(due),
            Recipient.stored_status.in_(WAITING_STATUSES),
        )
    ).scalar_one()
    return int(batches), int(recipients)
