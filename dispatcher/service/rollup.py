"""The rollup step: recent minutes recomputed whole from the audit tables, one run at a time.

How the figures are kept (recomputed windows, sealed all-time totals, one run at a
time) is told in ``dispatcher.persistence.store.rollup``, which holds the SQL; this module
owns the transaction and reports what a run did.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time

from dispatcher.domain.times import utcnow
from dispatcher.persistence.db import Database
from dispatcher.persistence.store.rollup import recompute

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RollupReport:
    """What one run did."""

    ran_at: dt.datetime
    recomputed_from: dt.datetime
    sealed_before: dt.datetime
    minute_rows: int
    duration_ms: float


def run(
    db: Database,
    *,
    now: dt.datetime | None = None,
    retention_days: int = 35,
    min_interval_s: float = 0.0,
) -> RollupReport | None:
    """Recompute the recent minutes and the status counts, in one transaction.

    None when another run holds the lock, or one ran less than ``min_interval_s`` ago.
    """
    started = time.perf_counter()
    now = now or utcnow()
    with db.transaction() as session:
        done = recompute(
            session,
            dialect=db.dialect,
            now=now,
            retention_days=retention_days,
            min_interval_s=min_interval_s,
        )
    if done is None:
        return None
    recompute_from, sealed_before, minute_rows = done
    report = RollupReport(
        ran_at=now,
        recomputed_from=recompute_from,
        sealed_before=sealed_before,
        minute_rows=minute_rows,
        duration_ms=(time.perf_counter() - started) * 1000,
    )
    log.debug("rollup: %s", report)
    return report
