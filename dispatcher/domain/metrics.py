"""The rollup's vocabulary: metric names, histogram buckets and the arithmetic on them.

The rollup step writes ``stats_minutes`` rows named here and the readers (the
dashboard, ``/metrics``) read them back by the same names; both sides import this
module so that a name is spelled once. Rows, one per (minute, name, label):

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
point, so counters survive the deletion of old minutes; ``rollup`` / ``sealed_before``
and ``rollup`` / ``ran_at`` at ``EPOCH`` hold, as epoch seconds, that point and when
the last rollup ran.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

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

COUNTERS = (
    RECIPIENTS,
    ERROR_CODE,
    ATTEMPTS,
    LATENCY_MS,
    LATENCY_MS_SUM,
    ACCEPTED_AFTER_MS,
    ACCEPTED_AFTER_MS_SUM,
)
"""The rollup names that are counters: they only grow."""

INF = "+Inf"
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
)  # fmt: skip
ENQUEUE_BUCKETS_MS: tuple[float, ...] = (
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 1_800_000,
)  # fmt: skip


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
