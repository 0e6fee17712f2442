"""The rollup's SQL: the only writer of ``stats_minutes`` and ``status_counts``.

Each run recomputes the recent minutes whole from the audit tables (status events,
attempts, recipients, jobs) inside one transaction: their rows are deleted and
inserted again. So a transaction that committed late, with an event time inside the
window, is still counted, a run that dies half-way leaves the previous figures, and
no worker ever updates a shared counter row.

Counters must only grow (Prometheus reads a drop as a restart), and minute rows age
out, so all-time totals live beside them: rows at the fixed bucket ``EPOCH`` hold
everything before the *sealed* point, and minutes from that point on are added at
read time (``dispatcher.persistence.reads.stats.counter_totals``). A run seals the
minutes that leave its window by adding a fresh count of their events to the epoch
rows, in the same transaction that moves the sealed point; the first run seals all
history before its window.

One run at a time: ``pg_try_advisory_xact_lock`` on PostgreSQL (a worker that does
not get it skips the run), SQLite's write lock elsewhere. Runs closer together than
the interval are skipped too, so every worker may try on its own schedule.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    case,
    delete,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.orm import Session

from dispatcher.domain import metrics
from dispatcher.domain.statuses import AttemptOutcome, RecipientStatus
from dispatcher.persistence.dialect import Functions, try_advisory_lock
from dispatcher.persistence.models import (
    Attempt,
    Job,
    Recipient,
    StatsMinute,
    StatusCount,
    StatusEvent,
)
from dispatcher.persistence.reads.stats import rollup_marks

WINDOW = dt.timedelta(minutes=10)
"""Minutes this far back are recomputed on every run: longer than any transaction
that writes events stays open, so late commits land inside it."""

ROLLUP_LOCK_KEY = 0x534D_5352_4F4C_4C55
"""The PostgreSQL advisory lock that keeps rollups one at a time."""

COUNTED_STATUSES = (
    RecipientStatus.SENT,
    RecipientStatus.FAILED,
    RecipientStatus.UNKNOWN,
    RecipientStatus.RETRY_WAIT,
    RecipientStatus.CANCELLED,
    RecipientStatus.EXPIRED,
)
ERROR_STATUSES = (RecipientStatus.FAILED, RecipientStatus.UNKNOWN)

_Window = tuple[dt.datetime | None, dt.datetime]


def floor_minute(at: dt.datetime) -> dt.datetime:
    """``at`` rounded down to its minute."""
    return at.replace(second=0, microsecond=0)


def _bucket(value: Any, bounds: Sequence[float]) -> ColumnElement[str]:
    return case(
        *[(value <= bound, literal(metrics.bucket_label(bound))) for bound in bounds],
        else_=literal(metrics.INF),
    )


def _between(column: Any, window: _Window) -> list[ColumnElement[bool]]:
    start, end = window
    conditions = [column < end]
    if start is not None:
        conditions.append(column >= start)
    return conditions


_Query = Callable[[Functions, _Window, bool], Select[Any]]


def _grouped(sql: Functions, at: Any, label: Any, value: Any, by_minute: bool) -> list[Any]:
    columns = [label.label("label"), value.label("value")]
    return [sql.minute(at).label("minute"), *columns] if by_minute else columns


def _recipients(sql: Functions, window: _Window, by_minute: bool) -> Select[Any]:
    e = StatusEvent
    columns = _grouped(sql, e.at, e.to_status, func.count(), by_minute)
    return (
        select(*columns)
        .where(*_between(e.at, window), e.to_status.in_([str(s) for s in COUNTED_STATUSES]))
        .group_by(*[c for c in columns if c.name != "value"])
    )


def _error_codes(sql: Functions, window: _Window, by_minute: bool) -> Select[Any]:
    # Each failure's code as it happened, carried by its event: what the recipient
    # has now (cleared by a retry, changed by a settle) would make counts move back.
    e = StatusEvent
    columns = _grouped(sql, e.at, e.error_code, func.count(), by_minute)
    return (
        select(*columns)
        .where(
            *_between(e.at, window),
            e.to_status.in_([str(s) for s in ERROR_STATUSES]),
            e.error_code.is_not(None),
        )
        .group_by(*[c for c in columns if c.name != "value"])
    )


def _finished(window: _Window) -> list[ColumnElement[bool]]:
    conditions = _between(Attempt.finished_at, window)
    conditions.append(Attempt.outcome != str(AttemptOutcome.IN_FLIGHT))
    return conditions


def _attempts(sql: Functions, window: _Window, by_minute: bool) -> Select[Any]:
    columns = _grouped(sql, Attempt.finished_at, Attempt.outcome, func.count(), by_minute)
    return (
        select(*columns)
        .where(*_finished(window))
        .group_by(*[c for c in columns if c.name != "value"])
    )


def _latency(sql: Functions, window: _Window, by_minute: bool) -> Select[Any]:
    label = _bucket(Attempt.latency_ms, metrics.LATENCY_BUCKETS_MS)
    columns = _grouped(sql, Attempt.finished_at, label, func.count(), by_minute)
    return (
        select(*columns)
        .where(*_finished(window), Attempt.latency_ms.is_not(None))
        .group_by(*[c for c in columns if c.name != "value"])
    )


def _latency_sum(sql: Functions, window: _Window, by_minute: bool) -> Select[Any]:
    columns = _grouped(
        sql, Attempt.finished_at, literal(metrics.SUM), func.sum(Attempt.latency_ms), by_minute
    )
    query = select(*columns).where(*_finished(window), Attempt.latency_ms.is_not(None))
    return query.group_by(columns[0]) if by_minute else query


def _accepted_after(sql: Functions) -> ColumnElement[float]:
    return sql.ms_between(StatusEvent.at, func.coalesce(Job.send_at, Job.created_at))


def _sent_between(window: _Window) -> list[ColumnElement[bool]]:
    return [*_between(StatusEvent.at, window), StatusEvent.to_status == str(RecipientStatus.SENT)]


def _accepted(sql: Functions, window: _Window, by_minute: bool) -> Select[Any]:
    label = _bucket(_accepted_after(sql), metrics.ENQUEUE_BUCKETS_MS)
    columns = _grouped(sql, StatusEvent.at, label, func.count(), by_minute)
    return (
        select(*columns)
        .join_from(StatusEvent, Job, Job.id == StatusEvent.job_id)
        .where(*_sent_between(window))
        .group_by(*[c for c in columns if c.name != "value"])
    )


def _accepted_sum(sql: Functions, window: _Window, by_minute: bool) -> Select[Any]:
    value = func.sum(_accepted_after(sql))
    columns = _grouped(sql, StatusEvent.at, literal(metrics.SUM), value, by_minute)
    query = (
        select(*columns)
        .join_from(StatusEvent, Job, Job.id == StatusEvent.job_id)
        .where(*_sent_between(window))
    )
    return query.group_by(columns[0]) if by_minute else query


METRICS: dict[str, _Query] = {
    metrics.RECIPIENTS: _recipients,
    metrics.ERROR_CODE: _error_codes,
    metrics.ATTEMPTS: _attempts,
    metrics.LATENCY_MS: _latency,
    metrics.LATENCY_MS_SUM: _latency_sum,
    metrics.ACCEPTED_AFTER_MS: _accepted,
    metrics.ACCEPTED_AFTER_MS_SUM: _accepted_sum,
}


def _minute_rows(session: Session, sql: Functions, window: _Window) -> list[dict[str, Any]]:
    rows = []
    for name, query in METRICS.items():
        for row in session.execute(query(sql, window, True)):
            minute, label, value = tuple(row)
            if value:
                rows.append(
                    {
                        "bucket_at": sql.as_datetime(minute),
                        "name": name,
                        "label": str(label),
                        "value": float(value),
                    }
                )
    return rows


def _totals(session: Session, sql: Functions, window: _Window) -> dict[tuple[str, str], float]:
    totals: dict[tuple[str, str], float] = defaultdict(float)
    for name, query in METRICS.items():
        for row in session.execute(query(sql, window, False)):
            label, value = tuple(row)
            if value:
                totals[(name, str(label))] += float(value)
    return totals


def _seal(session: Session, increments: dict[tuple[str, str], float]) -> None:
    """Add sealed minutes to the all-time rows at ``EPOCH``."""
    if not increments:
        return
    current = {
        (row.name, row.label): row.value
        for row in session.execute(
            select(StatsMinute).where(
                StatsMinute.bucket_at == metrics.EPOCH, StatsMinute.name.in_(list(METRICS))
            )
        ).scalars()
    }
    session.execute(
        delete(StatsMinute).where(
            StatsMinute.bucket_at == metrics.EPOCH, StatsMinute.name.in_(list(METRICS))
        )
    )
    merged = dict(current)
    for key, value in increments.items():
        merged[key] = merged.get(key, 0.0) + value
    session.execute(
        insert(StatsMinute),
        [
            {"bucket_at": metrics.EPOCH, "name": name, "label": label, "value": value}
            for (name, label), value in merged.items()
        ],
    )


def _write_marks(session: Session, *, sealed_before: dt.datetime, ran_at: dt.datetime) -> None:
    session.execute(
        delete(StatsMinute).where(
            StatsMinute.bucket_at == metrics.EPOCH, StatsMinute.name == metrics.ROLLUP
        )
    )
    session.execute(
        insert(StatsMinute),
        [
            {
                "bucket_at": metrics.EPOCH,
                "name": metrics.ROLLUP,
                "label": metrics.SEALED_BEFORE,
                "value": sealed_before.timestamp(),
            },
            {
                "bucket_at": metrics.EPOCH,
                "name": metrics.ROLLUP,
                "label": metrics.RAN_AT,
                "value": ran_at.timestamp(),
            },
        ],
    )


def _recount_statuses(session: Session, *, now: dt.datetime) -> None:
    counts = dict(
        session.execute(select(Recipient.status, func.count()).group_by(Recipient.status)).all()
    )
    session.execute(delete(StatusCount))
    session.execute(
        insert(StatusCount),
        [
            {"status": s.value, "recipients": int(counts.get(s, 0)), "computed_at": now}
            for s in RecipientStatus
        ],
    )


def recompute(
    session: Session,
    *,
    dialect: str,
    now: dt.datetime,
    retention_days: int,
    min_interval_s: float,
) -> tuple[dt.datetime, dt.datetime, int] | None:
    """Recompute the recent minutes and the status counts inside ``session``'s transaction.

    Returns (recomputed from, sealed before, minute rows written); None when another
    run holds the lock, or one ran less than ``min_interval_s`` ago.
    """
    sql = Functions(dialect)
    if not try_advisory_lock(session, ROLLUP_LOCK_KEY):
        return None
    marks = rollup_marks(session)
    ran_at = marks.get(metrics.RAN_AT)
    if ran_at is not None and ran_at <= now < ran_at + dt.timedelta(seconds=min_interval_s):
        return None
    previous = marks.get(metrics.SEALED_BEFORE)
    sealed_before = floor_minute(now) - WINDOW
    if previous is not None:
        sealed_before = max(sealed_before, previous)
    end = floor_minute(now) + dt.timedelta(minutes=1)
    retention_start = floor_minute(now) - dt.timedelta(days=retention_days)
    recompute_from = retention_start if previous is None else max(previous, retention_start)
    if previous is None or previous < sealed_before:
        _seal(session, _totals(session, sql, (previous, sealed_before)))
    session.execute(
        delete(StatsMinute).where(
            StatsMinute.name.in_(list(METRICS)),
            StatsMinute.bucket_at >= recompute_from,
        )
    )
    rows = _minute_rows(session, sql, (recompute_from, end))
    if rows:
        session.execute(insert(StatsMinute), rows)
    session.execute(
        delete(StatsMinute).where(
            StatsMinute.bucket_at < retention_start, StatsMinute.bucket_at > metrics.EPOCH
        )
    )
    _write_marks(session, sealed_before=sealed_before, ran_at=now)
    _recount_statuses(session, now=now)
    return recompute_from, sealed_before, len(rows)
