"""``GET /metrics``: Prometheus exposition, read from the database at scrape time.

Every ``serve`` process answers with the same cluster-wide figures, because they come
from the rollups (``dispatcher.rollup``) and a few cheap indexed reads, not from
process-local counters. Counters are all-time totals kept by the single-writer
rollup, so they only grow; they move when the rollup runs, not at each send.

Nothing here is secret: no numbers, message text, URLs or credentials, only counts,
statuses, codes and worker node names. It still tells an outsider how busy the
gateway account is and which workers run, so ``DISPATCHER_METRICS_TOKEN`` can
require a bearer token for it, and ``docker-compose.yml`` does not publish it
beyond the host.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Iterator, Sequence

from fastapi import Request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from dispatcher.domain import metrics as names
from dispatcher.domain.statuses import BreakerState, PauseReason
from dispatcher.domain.times import utcnow
from dispatcher.persistence.db import Database
from dispatcher.service import stats

PREFIX = "sms_dispatcher_"


def _histogram(
    name: str,
    documentation: str,
    counts: dict[str, float],
    total_ms: float,
    bounds_ms: Sequence[float],
) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    seen = 0.0
    for bound in bounds_ms:
        seen += counts.get(names.bucket_label(bound), 0.0)
        buckets.append((f"{bound / 1000:g}", seen))
    seen += counts.get(names.INF, 0.0)
    buckets.append(("+Inf", seen))
    return HistogramMetricFamily(
        PREFIX + name, documentation, buckets=buckets, sum_value=total_ms / 1000
    )


def _counter(
    name: str, documentation: str, label: str, values: dict[str, float]
) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, documentation, labels=[label])
    for value, count in sorted(values.items()):
        family.add_metric([value], count)
    return family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=value)


def _one_hot(
    name: str, documentation: str, label: str, options: Iterable[str], current: str | None
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, documentation, labels=[label])
    for option in options:
        family.add_metric([option], 1.0 if option == current else 0.0)
    return family


def families(snapshot: stats.Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot."""
    totals = snapshot.totals
    yield _counter(
        "recipients_total",
        "Recipients that moved into each status (a recipient retried counts again).",
        "status",
        totals[names.RECIPIENTS],
    )
    yield _counter(
        "recipient_errors_total",
        "Recipients that ended failed or unknown, by the error code each had as it did.",
        "code",
        totals[names.ERROR_CODE],
    )
    yield _counter(
        "attempts_total",
        "HTTP attempts to the gateway that finished, by outcome.",
        "outcome",
        totals[names.ATTEMPTS],
    )
    yield _histogram(
        "gateway_latency_seconds",
        "Time of one HTTP attempt to the gateway.",
        totals[names.LATENCY_MS],
        totals[names.LATENCY_MS_SUM].get(names.SUM, 0.0),
        names.LATENCY_BUCKETS_MS,
    )
    yield _histogram(
        "enqueue_to_accepted_seconds",
        "Time from a job's enqueue (or its send_at) to the gateway accepting a recipient.",
        totals[names.ACCEPTED_AFTER_MS],
        totals[names.ACCEPTED_AFTER_MS_SUM].get(names.SUM, 0.0),
        names.ENQUEUE_BUCKETS_MS,
    )
    status = GaugeMetricFamily(
        PREFIX + "recipients", "Recipients in each status at the last rollup.", labels=["status"]
    )
    for name, count in sorted(snapshot.counts.items()):
        status.add_metric([name], float(count))
    yield status
    if snapshot.rollup_at is not None:
        yield _gauge(
            "rollup_age_seconds",
            "Time since the last rollup (counters and status counts are this old).",
            (snapshot.now - snapshot.rollup_at).total_seconds(),
        )
    yield _gauge(
        "unknown_unacknowledged",
        "Recipients unknown now that became so since an operator last acknowledged them "
        "(settled or acknowledged, they leave it).",
        snapshot.unknown_unacknowledged,
    )
    yield _gauge("queue_due_batches", "Queued batches due now.", snapshot.due_batches)
    yield _gauge(
        "queue_due_recipients", "Recipients in queued batches due now.", snapshot.due_recipients
    )
    yield _gauge(
        "queue_oldest_age_seconds",
        "How long the oldest due, unclaimed batch has waited (0 when none is due).",
        snapshot.oldest_due_age_s or 0.0,
    )
    control = snapshot.control
    yield _gauge("paused", "1 while dispatch is paused.", 1.0 if control["paused"] else 0.0)
    yield _one_hot(
        "pause_reason",
        "1 for the reason dispatch is paused; all 0 when it is not.",
        "reason",
        [r.value for r in PauseReason],
        control["pause_reason"] if control["paused"] else None,
    )
    yield _one_hot(
        "breaker_state",
        "1 for the circuit breaker's current state.",
        "state",
        [s.value for s in BreakerState],
        control["breaker_state"],
    )
    workers = snapshot.workers
    yield _gauge("workers_alive", "Workers with a fresh heartbeat.", workers.alive)
    yield _gauge(
        "workers_consuming",
        "Workers that consumed their heartbeat task from the broker recently.",
        workers.consuming,
    )
    yield _gauge(
        "workers_stale", "Workers not stopped cleanly whose heartbeat is stale.", workers.stale
    )
    if control["last_balance"] is not None:
        yield _gauge(
            "credit_balance",
            "The gateway balance at the last check (checks run while paused for credit).",
            float(control["last_balance"]),
        )


class DatabaseCollector(Collector):
    """Reads a snapshot from the database on each scrape."""

    def __init__(self, database: Database, *, heartbeat_interval_s: float) -> None:
        self.database = database
        self.heartbeat_interval_s = heartbeat_interval_s

    def collect(self) -> Iterator[Metric]:
        """The metric families, as of now."""
        with self.database.transaction() as session:
            snapshot = stats.snapshot(
                session, now=utcnow(), heartbeat_interval_s=self.heartbeat_interval_s
            )
        yield from families(snapshot)


def registry(database: Database, *, heartbeat_interval_s: float) -> CollectorRegistry:
    """A registry of its own (not the process-global one) holding the database collector."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DatabaseCollector(database, heartbeat_interval_s=heartbeat_interval_s))
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    """The text format Prometheus scrapes."""
    return generate_latest(reg)


def authorized(request: Request, token: str) -> bool:
    """Whether the request presents ``token`` as its bearer token (constant time)."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())
