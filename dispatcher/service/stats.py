"""What the dispatcher is doing, read from periodic rollups: for the dashboard and /metrics.

The rollup step (``dispatcher.rollup``) is the only writer of ``stats_minutes`` and
``status_counts``. It recomputes recent minutes whole from the audit tables, so
readers never count the big tables and no worker ever updates a shared counter row.

``stats_minutes`` rows, one per (minute, name, label):

- ``recipients`` / a status (``sent``, ``failed``, ``unknown``, ``retry_wait``,
  ``cancelled``, ``expired``): recipients that moved into that status that minute.
- ``error_code`` / a gateway or dispatcher code (``GATEWAY_ERROR``, ``INVALID_NUMBER``,
  ``WORKER_LOST``, ...): recipients whose attempt ended with that code that minute.
- ``attempts`` / an ``AttemptOutcome``: HTTP attempts that finished that minute.
- ``latency_ms`` / a bucket's upper bound from ``LATENCY_BUCKETS_MS`` (``+Inf`` last):
  finished attempts whose gateway latency fell in that bucket (not cumulative).
- ``accepted_after_ms`` / a bucket's upper bound from ``ENQUEUE_BUCKETS_MS``: recipients
  accepted that minute, by time from their job's enqueue (or ``send_at``) to acceptance.
- ``latency_ms_sum`` and ``accepted_after_ms_sum`` / ``sum``: the sums of those two
  histograms' values that minute (Prometheus histograms carry their sum).

``error_code`` counts recipients that moved into ``failed`` or ``unknown``, labelled by
the code they hold (``none`` when they have none); transient codes that were retried
show in ``attempts`` / ``transient`` instead.

Rows at the fixed bucket ``EPOCH`` are all-time totals of everything before the sealed
point, so counters survive the deletion of old minutes (see ``dispatcher.rollup``);
``rollup`` / ``sealed_before`` and ``rollup`` / ``ran_at`` at ``EPOCH`` hold, as epoch
seconds, that point and when the last rollup ran.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dispatcher.domain.statuses import BatchStatus, RecipientStatus
from dispatcher.persistence.models import (
    Batch,
    Recipient,
    StatsMinute,
    StatusCount,
    WorkerHeartbeat,
)
from dispatcher.persistence.store import get_control
from dispatcher.service.control import control_view
from dispatcher.service.heartbeat import WorkerHealth, health

RECIPIENTS = "recipients"
ERROR_CODE = "error_code"
ATTEMPTS = "attempts"
LATENCY_MS = "latency_ms"
ACCEPTED_AFTER_MS = "accepted_after_ms"
LATENCY_MS_SUM = "latency_ms_sum"
ACCEPTED_AFTER_MS_SUM = "accepted_after_ms_sum"
SUM = "sum"
ROLLUP = "rollup"
SEALED_BEFORE = "sealed_before"
RAN_AT = "ran_at"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
"""The bucket of the all-time totals and the rollup's marks."""

INF = "+Inf"
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
)  # fmt: skip
ENQUEUE_BUCKETS_MS: tuple[float, ...] = (
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 1_800_000,
)  # fmt: skip

LANES = (0, 1, 2)


def bucket_label(bound: float | None) -> str:
    """The label of a histogram bucket: its upper bound, or ``+Inf``."""
    return INF if bound is None else f"{bound:g}"


def bucket_of(value: float, bounds: Sequence[float]) -> str:
    """The label of the bucket ``value`` falls in."""
    for bound in bounds:
        if value <= bound:
            return bucket_label(bound)
    return INF


def quantile(histogram: dict[str, float], q: float, bounds: Sequence[float]) -> float | None:
    """An estimate of quantile ``q`` (0..1) from bucket counts: the bucket's upper bound.

    None when the histogram is empty; the last finite bound when it falls in ``+Inf``.
    """
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for bound in bounds:
        seen += histogram.get(bucket_label(bound), 0.0)
        if seen >= rank:
            return bound
    return bounds[-1]


@dataclasses.dataclass(frozen=True)
class Series:
    """One metric over a window: totals by label and per-bucket values for a chart."""

    totals: dict[str, float]
    points: list[tuple[dt.datetime, dict[str, float]]]


@dataclasses.dataclass(frozen=True)
class Overview:
    """Everything the dashboard's overview shows, from rollups and a few cheap reads."""

    now: dt.datetime
    counts: dict[str, int]
    """Recipients by status, as of ``counts_at`` (every status present, zero if none)."""
    counts_at: dt.datetime | None
    control: dict[str, Any]
    throughput_hour: Series
    """``recipients`` by status, per minute over the last hour."""
    throughput_day: Series
    """``recipients`` by status, per hour over the last day."""
    errors_hour: dict[str, float]
    errors_day: dict[str, float]
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    """Gateway latency over the last hour, from the rollup histogram."""
    oldest_due_age_s: float | None
    """How long the oldest due, unclaimed batch has waited; None when nothing is due."""
    workers: list[dict[str, Any]]


def oldest_due_at(session: Session, *, now: dt.datetime) -> dt.datetime | None:
    """The oldest ``due_at`` among queued batches due now: one index probe per lane."""
    oldest: dt.datetime | None = None
    for lane in LANES:
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

    They only grow while the audit rows they count stay (see ``dispatcher.rollup``).
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


def workers(session: Session) -> list[dict[str, Any]]:
    """Every worker's last heartbeat, most recently seen first."""
    rows = session.execute(
        select(WorkerHeartbeat).order_by(WorkerHeartbeat.seen_at.desc())
    ).scalars()
    return [
        {
            "name": w.name,
            "hostname": w.hostname,
            "pid": w.pid,
            "queues": w.queues,
            "state": w.state,
            "started_at": w.started_at,
            "seen_at": w.seen_at,
            "consumed_at": w.consumed_at,
            "batches": w.batches,
        }
        for w in rows
    ]


def overview(session: Session, *, now: dt.datetime) -> Overview:
    """The dashboard overview as of ``now``."""
    hour_ago = now - dt.timedelta(hours=1)
    day_ago = now - dt.timedelta(days=1)
    counts, counts_at = status_counts(session)
    latency = series(session, name=LATENCY_MS, since=hour_ago, step=dt.timedelta(hours=1))
    oldest = oldest_due_at(session, now=now)
    return Overview(
        now=now,
        counts=counts,
        counts_at=counts_at,
        control=control_view(get_control(session)),
        throughput_hour=series(
            session, name=RECIPIENTS, since=hour_ago, step=dt.timedelta(minutes=1)
        ),
        throughput_day=series(session, name=RECIPIENTS, since=day_ago, step=dt.timedelta(hours=1)),
        errors_hour=series(
            session, name=ERROR_CODE, since=hour_ago, step=dt.timedelta(hours=1)
        ).totals,
        errors_day=series(
            session, name=ERROR_CODE, since=day_ago, step=dt.timedelta(days=1)
        ).totals,
        latency_p50_ms=quantile(latency.totals, 0.5, LATENCY_BUCKETS_MS),
        latency_p95_ms=quantile(latency.totals, 0.95, LATENCY_BUCKETS_MS),
        oldest_due_age_s=(now - oldest).total_seconds() if oldest is not None else None,
        workers=workers(session),
    )


COUNTERS = (
    RECIPIENTS,
    ERROR_CODE,
    ATTEMPTS,
    LATENCY_MS,
    LATENCY_MS_SUM,
    ACCEPTED_AFTER_MS,
    ACCEPTED_AFTER_MS_SUM,
)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What ``/metrics`` reports: cluster-wide, read from the database at scrape time."""

    now: dt.datetime
    totals: dict[str, dict[str, float]]
    """All-time counter totals by rollup name and label."""
    counts: dict[str, int]
    counts_at: dt.datetime | None
    rollup_at: dt.datetime | None
    control: dict[str, Any]
    due_batches: int
    due_recipients: int
    oldest_due_age_s: float | None
    workers: WorkerHealth


def due_work(session: Session, *, now: dt.datetime) -> tuple[int, int]:
    """Queued batches due now, and the recipients waiting in them (via the due index)."""
    due = (
        select(Batch.id)
        .where(Batch.status == BatchStatus.QUEUED, Batch.lane.in_(LANES), Batch.due_at <= now)
        .scalar_subquery()
    )
    batches = session.execute(
        select(func.count()).where(
            Batch.status == BatchStatus.QUEUED, Batch.lane.in_(LANES), Batch.due_at <= now
        )
    ).scalar_one()
    recipients = session.execute(
        select(func.count()).where(
            Recipient.batch_id.in_(due),
            Recipient.status.in_([RecipientStatus.QUEUED, RecipientStatus.RETRY_WAIT]),
        )
    ).scalar_one()
    return int(batches), int(recipients)


def snapshot(session: Session, *, now: dt.datetime, heartbeat_interval_s: float) -> Snapshot:
    """Everything ``/metrics`` exposes, as of ``now``."""
    counts, counts_at = status_counts(session)
    batches, recipients = due_work(session, now=now)
    oldest = oldest_due_at(session, now=now)
    return Snapshot(
        now=now,
        totals=counter_totals(session, COUNTERS),
        counts=counts,
        counts_at=counts_at,
        rollup_at=rollup_marks(session).get(RAN_AT),
        control=control_view(get_control(session)),
        due_batches=batches,
        due_recipients=recipients,
        oldest_due_age_s=(now - oldest).total_seconds() if oldest is not None else None,
        workers=health(session, now=now, interval_s=heartbeat_interval_s),
    )
