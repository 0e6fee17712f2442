"""What the dispatcher is doing, read from periodic rollups: for the dashboard and /metrics.

The rollup step (``dispatcher.service.rollup``) is the only writer of ``stats_minutes``
and ``status_counts``. It recomputes recent minutes whole from the audit tables, so
readers never count the big tables and no worker ever updates a shared counter row.
The names of the rows are those of ``dispatcher.domain.metrics``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from dispatcher.domain.metrics import (
    COUNTERS,
    ERROR_CODE,
    LATENCY_BUCKETS_MS,
    LATENCY_MS,
    RAN_AT,
    RECIPIENTS,
    Series,
    quantile,
)
from dispatcher.domain.workers import WorkerHealth
from dispatcher.persistence.db import Session
from dispatcher.persistence.reads.stats import (
    counter_totals,
    due_work,
    oldest_due_at,
    rollup_marks,
    series,
    status_counts,
)
from dispatcher.persistence.store import get_control, unknown_since
from dispatcher.persistence.store.heartbeats import health, workers
from dispatcher.service.control import control_view


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
    unknown_unacknowledged: int = 0
    """Recipients `unknown` now that became so since an operator last acknowledged."""


def snapshot(session: Session, *, now: dt.datetime, heartbeat_interval_s: float) -> Snapshot:
    """Everything ``/metrics`` exposes, as of ``now``."""
    counts, counts_at = status_counts(session)
    batches, recipients = due_work(session, now=now)
    oldest = oldest_due_at(session, now=now)
    control = get_control(session)
    return Snapshot(
        now=now,
        totals=counter_totals(session, COUNTERS),
        counts=counts,
        counts_at=counts_at,
        rollup_at=rollup_marks(session).get(RAN_AT),
        control=control_view(control),
        due_batches=batches,
        due_recipients=recipients,
        oldest_due_age_s=(now - oldest).total_seconds() if oldest is not None else None,
        workers=health(session, now=now, interval_s=heartbeat_interval_s),
        unknown_unacknowledged=unknown_since(session, since=control.unknown_acknowledged_at),
    )
