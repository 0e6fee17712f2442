"""Scheduling: ``send_at`` holds a job in the database until its time.

The database is the schedule: a scheduled job's batches are due at ``send_at``,
its enqueue wakes nobody (no broker countdown), and the sweeper wakes a worker
once it falls due. Driven in-process on SQLite and PostgreSQL, and end to end
with real workers on PostgreSQL + Redis and on the embedded defaults.
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import update

from dispatcher.domain.message import SEND_AT_TOLERANCE
from dispatcher.domain.statuses import BatchStatus, RecipientStatus
from dispatcher.domain.times import utcnow
from dispatcher.errors import InvalidOptionError
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Batch, Job, Recipient
from dispatcher.persistence.store import oldest_due_query
from dispatcher.service import dispatcher as service_module
from dispatcher.service.dispatcher import Dispatcher
from support.numbers import number
from support.pipeline import Pipeline
from support.polling import wait_until
from support.reads import attempts_of, batches_of, recipients_of, row_counts

PLUS_TWO = dt.timezone(dt.timedelta(hours=2))


def test_send_at_is_stored_in_utc_and_makes_the_batches_due_then(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    local = (utcnow() + dt.timedelta(hours=1)).astimezone(PLUS_TWO).replace(microsecond=0)
    result = service.enqueue([number(1), number(2)], "later", send_at=local)

    assert result.send_at == local
    view = service.job_view(result.job_id)
    assert view["send_at"] == local.astimezone(dt.UTC).isoformat()
    assert str(view["send_at"]).endswith("+00:00")
    [batch] = batches_of(service.db, result.job_id)
    assert batch.due_at == local
    assert batch.status == BatchStatus.QUEUED

    report = service.dispatch_due()
    assert report.batches == 0, "a job scheduled for later was sent early"
    assert simulator.ledger() == []
    assert {r.status for r in recipients_of(service.db, result.job_id)} == {"queued"}


def test_a_naive_send_at_is_refused_and_nothing_is_written(service: Dispatcher) -> None:
    before = row_counts(service.db)
    with pytest.raises(InvalidOptionError, match="timezone-aware"):
        service.enqueue(number(1), "hi", send_at=dt.datetime(2030, 1, 1, 9, 0))
    with pytest.raises(InvalidOptionError, match="datetime"):
        service.enqueue(number(1), "hi", send_at="2030-01-01T09:00:00Z")  # type: ignore[arg-type]
    assert row_counts(service.db) == before


def test_a_send_at_just_past_is_due_at_once(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    """Within SEND_AT_TOLERANCE (clock skew between producer and dispatcher) a past
    send time is sent at once."""
    past = utcnow() - SEND_AT_TOLERANCE + dt.timedelta(seconds=30)
    result = service.enqueue(number(1), "overdue", send_at=past)
    assert service.dispatch_due().batches == 1
    assert [e["number"] for e in simulator.ledger()] == [number(1)]
    assert recipients_of(service.db, result.job_id)[0].status == RecipientStatus.SENT


@pytest.mark.parametrize(
    "send_at",
    [
        pytest.param(
            utcnow() - SEND_AT_TOLERANCE - dt.timedelta(seconds=30), id="beyond-tolerance"
        ),
        pytest.param(dt.datetime(2001, 1, 1, tzinfo=dt.UTC), id="years-ago"),
        pytest.param(dt.datetime(1, 1, 1, tzinfo=dt.UTC), id="year-1"),
    ],
)
def test_a_send_at_in_the_past_is_refused(service: Dispatcher, send_at: dt.datetime) -> None:
    """A send time long gone is a wrong date or zone, not a wish to send now."""
    before = row_counts(service.db)
    with pytest.raises(InvalidOptionError, match="in the past"):
        service.enqueue(number(1), "hi", send_at=send_at)
    assert row_counts(service.db) == before


def test_a_replay_is_answered_after_its_send_time_has_passed(
    service: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idempotent retry of a scheduled request returns its job even once the send
    time is past the tolerance: the past check comes after the replay lookup."""
    send_at = utcnow() + dt.timedelta(seconds=1)
    first = service.enqueue(number(1), "hi", send_at=send_at, idempotency_key="k-1")
    later = utcnow() + SEND_AT_TOLERANCE + dt.timedelta(minutes=1)
    monkeypatch.setattr(service_module, "utcnow", lambda: later)
    again = service.enqueue(number(1), "hi", send_at=send_at, idempotency_key="k-1")
    assert again.replayed
    assert again.job_id == first.job_id
    with pytest.raises(InvalidOptionError, match="in the past"):
        service.enqueue(number(1), "hi", send_at=send_at, idempotency_key="k-2")


@pytest.mark.parametrize(
    ("send_at", "needle"),
    [
        pytest.param(
            dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            "out of range",
            id="year-1-plus-one-hour",
        ),
        pytest.param(
            dt.datetime(
                9999, 12, 31, 23, 59, 59, tzinfo=dt.timezone(-dt.timedelta(hours=23, minutes=59))
            ),
            "out of range",
            id="year-9999-minus-23-59",
        ),
    ],
)
def test_a_send_at_with_no_utc_time_is_refused(
    service: Dispatcher, send_at: dt.datetime, needle: str
) -> None:
    before = row_counts(service.db)
    with pytest.raises(InvalidOptionError, match=needle):
        service.enqueue(number(1), "hi", send_at=send_at)
    assert row_counts(service.db) == before


def test_a_scheduled_job_can_be_cancelled_before_its_time(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    soon = utcnow() + dt.timedelta(milliseconds=300)
    result = service.enqueue([number(1), number(2)], "never", send_at=soon)
    cancelled = service.cancel(result.job_id, actor="test")
    assert cancelled.affected == 2
    wait_until(lambda: utcnow() > soon, 5)
    assert service.dispatch_due().batches == 0
    assert simulator.ledger() == []
    assert {r.status for r in recipients_of(service.db, result.job_id)} == {"cancelled"}
    assert [b.status for b in batches_of(service.db, result.job_id)] == [BatchStatus.DONE]


def test_a_backlog_of_scheduled_jobs_never_stands_before_due_work(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    later = utcnow() + dt.timedelta(days=1)
    scheduled = [
        service.enqueue(number(100 + i), f"later {i}", send_at=later, priority=priority).job_id
        for i, priority in enumerate(["high", "normal", "bulk"] * 20)
    ]
    due = service.enqueue(number(1), "now").job_id

    assert service.dispatch_due().batches == 1
    assert [e["number"] for e in simulator.ledger()] == [number(1)]
    assert recipients_of(service.db, due)[0].status == RecipientStatus.SENT
    assert all(recipients_of(service.db, j)[0].status == "queued" for j in scheduled)


def test_the_claim_probes_the_due_index_per_lane_on_postgresql(pg_db: Database) -> None:
    """EXPLAIN of the claim query over a large scheduled backlog: an index scan on
    ``ix_batches_due``, never a scan of the table."""
    now = utcnow()
    with pg_db.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO jobs (id, created_at, text, kind, maxconcat, parts, encoding, "
            "recipient_count, refused_count, created_by, priority) VALUES "
            "('01BACKLOG0000000000000000A', now(), 'x', 'text', 1, 1, 'GSM-7', 1, 0, 't', 'bulk')"
        )
        # 20,000 batches scheduled for the coming days, across lanes, plus history.
        conn.exec_driver_sql(
            "INSERT INTO batches (job_id, status, due_at, attempts, created_at, updated_at, lane) "
            "SELECT '01BACKLOG0000000000000000A', CASE WHEN g %% 4 = 0 THEN 'done' ELSE 'queued' "
            "END, now() + (g || ' seconds')::interval, 0, now(), now(), g %% 3 "
            "FROM generate_series(1, 20000) AS g"
        )
        conn.exec_driver_sql("ANALYZE batches")
        for lane in (0, 1, 2):
            query = oldest_due_query(
                Batch, now=now, queued=BatchStatus.QUEUED, where=(Batch.lane == lane,)
            ).with_for_update(skip_locked=True)
            compiled = query.compile(dialect=pg_db.engine.dialect)
            plan = "\n".join(
                row[0] for row in conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params)
            )
            assert "ix_batches_due" in plan, plan
            assert "Seq Scan" not in plan, plan


# --- with real workers -------------------------------------------------------------


def test_a_worker_sends_a_scheduled_job_when_it_falls_due_and_not_before(
    pipeline: Pipeline,
) -> None:
    pipeline.start_workers(1)
    send_at = utcnow() + dt.timedelta(seconds=2)
    result = pipeline.enqueue([number(1), number(2)], "on time", send_at=send_at)
    assert pipeline.producer.waker.sent == 0, "a scheduled job must not wake anyone early"

    pipeline.wait_for(result.job_id, timeout_s=30)
    assert {r.status for r in recipients_of(pipeline.db, result.job_id)} == {"sent"}
    [attempt] = attempts_of(pipeline.db, result.job_id)
    assert attempt.started_at >= send_at, "claimed before its send_at"
    ledger = pipeline.sim.ledger()
    assert sorted(e["number"] for e in ledger) == [number(1), number(2)]
    assert all(e["at"] >= send_at.timestamp() for e in ledger)
    pipeline.check_invariants()


def test_a_scheduled_job_cancelled_before_its_time_is_never_sent(pipeline: Pipeline) -> None:
    pipeline.start_workers(1)
    send_at = utcnow() + dt.timedelta(seconds=1.5)
    cancelled = pipeline.enqueue(number(1), "cancelled", send_at=send_at).job_id
    kept = pipeline.enqueue(number(2), "kept", send_at=send_at).job_id
    assert pipeline.service.cancel(cancelled, actor="test").affected == 1

    pipeline.wait_for(kept, timeout_s=30)
    assert [e["number"] for e in pipeline.sim.ledger()] == [number(2)]
    assert recipients_of(pipeline.db, cancelled)[0].status == RecipientStatus.CANCELLED
    pipeline.check_invariants()


def test_scheduling_on_the_embedded_defaults(embedded_pipeline: Pipeline) -> None:
    embedded_pipeline.start_workers(1)
    send_at = (utcnow() + dt.timedelta(seconds=2)).astimezone(PLUS_TWO)
    result = embedded_pipeline.enqueue(number(1), "embedded, later", send_at=send_at)
    with embedded_pipeline.db.transaction() as session:
        job = session.get(Job, result.job_id)
        assert job is not None
        assert job.send_at == send_at
    embedded_pipeline.wait_for(result.job_id, timeout_s=60)
    [attempt] = attempts_of(embedded_pipeline.db, result.job_id)
    assert attempt.started_at >= send_at
    assert wait_until(lambda: embedded_pipeline.sim.ledger(), 5)[0]["number"] == number(1)
    embedded_pipeline.check_invariants()


def test_a_send_at_years_ahead_is_refused(service: Dispatcher) -> None:
    before = row_counts(service.db)
    with pytest.raises(InvalidOptionError, match="days ahead"):
        service.enqueue(number(1), "hi", send_at=dt.datetime(9999, 12, 31, 23, 0, tzinfo=dt.UTC))
    assert row_counts(service.db) == before


def test_retry_age_counts_from_the_send_time_not_the_enqueue(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    """A job queued days ahead that meets a transient error at its time is retried,
    not failed for being older than DISPATCHER_MAX_RETRY_AGE_S."""
    simulator.configure(number_rules={number(1): "GATEWAY_ERROR"})
    result = service.enqueue(number(1), "at nine", send_at=utcnow())
    queued_long_ago = utcnow() - dt.timedelta(seconds=service.settings.max_retry_age_s * 3)
    with service.db.transaction() as session:
        session.execute(
            update(Recipient)
            .where(Recipient.job_id == result.job_id)
            .values(created_at=queued_long_ago)
        )
    service.dispatch_due()
    assert recipients_of(service.db, result.job_id)[0].status == RecipientStatus.RETRY_WAIT
    service.sweep()
    [recipient] = recipients_of(service.db, result.job_id)
    assert recipient.status == RecipientStatus.RETRY_WAIT
    assert recipient.error_code != "RETRY_AGE_EXCEEDED"
