"""The rollup: minutes recomputed whole from the audit tables, counters that only grow."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from dispatcher.domain import metrics
from dispatcher.domain.statuses import RecipientStatus
from dispatcher.domain.times import utcnow
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Attempt, Recipient, StatsMinute, StatusEvent
from dispatcher.persistence.reads import stats as reads
from dispatcher.persistence.store import rollup as rollup_sql
from dispatcher.service import rollup
from dispatcher.service.dispatcher import Dispatcher
from support.numbers import number


def _run_pipeline(service: Dispatcher, simulator: GatewaySimulator) -> str:
    simulator.configure(
        number_rules={number(2): "INVALID_NUMBER", number(3): "NO_TEXT", number(4): "GATEWAY_ERROR"}
    )
    job = service.enqueue([number(i) for i in range(1, 7)], "rollup test").job_id
    # One recipient per batch is not how the service batches; one submission of six.
    service.dispatch_due(budget_s=10)
    return job


def _expected(db: Database) -> dict[str, Counter[str]]:
    """The same figures counted in Python from the raw audit rows."""
    with db.transaction() as session:
        events = session.execute(select(StatusEvent.to_status, StatusEvent.error_code)).all()
        attempts = session.execute(select(Attempt.outcome, Attempt.latency_ms)).all()
    counted = {str(s) for s in rollup_sql.COUNTED_STATUSES}
    return {
        metrics.RECIPIENTS: Counter(s for s, _ in events if s in counted),
        metrics.ERROR_CODE: Counter(
            code for s, code in events if s in ("failed", "unknown") and code is not None
        ),
        metrics.ATTEMPTS: Counter(o for o, _ in attempts if o != "in_flight"),
        metrics.LATENCY_MS: Counter(
            metrics.bucket_of(ms, metrics.LATENCY_BUCKETS_MS)
            for _, ms in attempts
            if ms is not None
        ),
    }


def _totals(db: Database) -> dict[str, dict[str, float]]:
    with db.transaction() as session:
        return reads.counter_totals(session, metrics.COUNTERS)


def _minute_rows(db: Database) -> list[tuple[dt.datetime, str, str, float]]:
    """Every rollup row but the time of the last run."""
    with db.transaction() as session:
        rows = session.execute(
            select(StatsMinute.bucket_at, StatsMinute.name, StatsMinute.label, StatsMinute.value)
        ).all()
    return sorted((a, b, c, d) for a, b, c, d in rows if c != metrics.RAN_AT)


def test_rollup_counts_match_the_audit_tables(
    service: Dispatcher, simulator: GatewaySimulator, database: Database
) -> None:
    _run_pipeline(service, simulator)
    report = service.rollup(force=True)
    assert report is not None
    totals = _totals(database)
    expected = _expected(database)
    for name, by_label in expected.items():
        assert totals[name] == {k: float(v) for k, v in by_label.items()}, name
    assert totals[metrics.RECIPIENTS]["sent"] == 3
    assert totals[metrics.ERROR_CODE] == {"INVALID_NUMBER": 1.0, "NO_TEXT": 1.0}
    # The per-minute rows agree with the totals (nothing is sealed yet but history).
    with database.transaction() as session:
        minute = reads.series(
            session, name=metrics.RECIPIENTS, since=utcnow() - dt.timedelta(hours=1),
            step=dt.timedelta(hours=1),
        )  # fmt: skip
        counts, counts_at = reads.status_counts(session)
        live = Counter(session.execute(select(Recipient.status)).scalars())
    assert minute.totals == totals[metrics.RECIPIENTS]
    assert counts == {s.value: live.get(s, 0) for s in RecipientStatus}
    assert counts_at == report.ran_at
    latency_count = sum(totals[metrics.LATENCY_MS].values())
    assert latency_count == sum(expected[metrics.ATTEMPTS].values())
    assert totals[metrics.LATENCY_MS_SUM][metrics.SUM] > 0


def test_rollup_is_idempotent_and_counts_late_commits(
    service: Dispatcher, simulator: GatewaySimulator, database: Database
) -> None:
    job = _run_pipeline(service, simulator)
    assert service.rollup(force=True) is not None
    first = _minute_rows(database)
    assert service.rollup(force=True) is not None
    assert _minute_rows(database) == first, "a second run over the same data changes nothing"

    # A transaction that committed after the last run, with an event time five
    # minutes back (inside the window), is counted by the next run.
    late_at = utcnow() - dt.timedelta(minutes=5)
    with database.transaction() as session:
        recipient = session.execute(select(Recipient).where(Recipient.job_id == job)).scalars()
        target = next(iter(recipient))
        session.add(
            StatusEvent(
                recipient_id=target.id, job_id=job, at=late_at, from_status="retry_wait",
                to_status="expired", cause="late commit", actor="test",
            )
        )  # fmt: skip
    before = _totals(database)
    assert "expired" not in before[metrics.RECIPIENTS]
    assert service.rollup(force=True) is not None
    assert _totals(database)[metrics.RECIPIENTS]["expired"] == 1.0


def test_sealing_and_retention_keep_counters_monotonic(
    service: Dispatcher, simulator: GatewaySimulator, database: Database
) -> None:
    _run_pipeline(service, simulator)
    now = utcnow()
    assert rollup.run(database, now=now) is not None
    totals = _totals(database)
    # Later runs seal the minutes that leave the window, then retention drops them:
    # the totals stay exactly the same.
    later = now + dt.timedelta(minutes=30)
    report = rollup.run(database, now=later, retention_days=35)
    assert report is not None
    assert report.sealed_before > now
    assert _totals(database) == totals
    much_later = now + dt.timedelta(days=3)
    assert rollup.run(database, now=much_later, retention_days=2) is not None
    assert _totals(database) == totals
    minute_rows = [r for r in _minute_rows(database) if r[0] > metrics.EPOCH]
    assert minute_rows == [], "minutes older than the retention are gone"


def test_a_recent_run_is_skipped_unless_forced(service: Dispatcher, database: Database) -> None:
    assert rollup.run(database, min_interval_s=60) is not None
    assert rollup.run(database, min_interval_s=60) is None
    assert rollup.run(database, min_interval_s=0) is not None


@pytest.mark.services
def test_one_rollup_at_a_time_on_postgresql(pg_db: Database) -> None:
    url = pg_db.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as other, other.transaction():
        other.execute("SELECT pg_advisory_xact_lock(%s)", (rollup_sql.ROLLUP_LOCK_KEY,))
        assert rollup.run(pg_db) is None, "the lock holder's run goes alone"
    assert rollup.run(pg_db) is not None


def test_rollup_command(embedded_env: object, tmp_path: object) -> None:
    from dispatcher import runtime
    from dispatcher.cli import main

    runtime.reset()
    try:
        runner = CliRunner()
        assert runner.invoke(main, ["migrate"]).exit_code == 0
        result = runner.invoke(main, ["rollup", "--json"])
        assert result.exit_code == 0, result.output
        assert '"minute_rows": 0' in result.output
    finally:
        runtime.reset()


def test_a_retry_never_makes_an_error_code_counter_go_down(
    service: Dispatcher, simulator: GatewaySimulator, database: Database
) -> None:
    """Each failure is counted by the code it had as it happened (its event's), not the
    recipient's code now, which a retry clears: no counter moves back, and no code is
    ever called "none" (issue 16, item 3)."""
    job = _run_pipeline(service, simulator)
    service.rollup(force=True)
    before = _totals(database)[metrics.ERROR_CODE]
    assert before["INVALID_NUMBER"] == 1.0
    assert "none" not in before

    simulator.configure(number_rules={})
    retried = service.retry(actor="ops", job_id=job, error_code="INVALID_NUMBER")
    assert retried.affected == 1
    service.dispatch_due(budget_s=10)
    service.rollup(force=True)
    after = _totals(database)[metrics.ERROR_CODE]
    for code, count in before.items():
        assert after.get(code, 0.0) >= count, (code, before, after)
    assert "none" not in after
