"""/metrics after a real pipeline run, and worker heartbeats from real worker processes."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update

from dispatcher.api import create_app
from dispatcher.api.server import ServerThread
from dispatcher.domain.statuses import BatchStatus, RecipientStatus
from dispatcher.domain.times import utcnow
from dispatcher.domain.workers import RUNNING, STOPPED
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Attempt, Batch, Recipient, WorkerHeartbeat
from dispatcher.persistence.store.heartbeats import health
from dispatcher.service.dispatcher import Dispatcher
from support.numbers import number
from support.pipeline import Pipeline
from support.polling import wait_until

FAST = {"heartbeat_interval_s": "0.5", "rollup_interval_s": "1"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(service: Dispatcher) -> tuple[str, Samples]:
    """GET /metrics on a fresh app; the body and its samples by (name, labels)."""
    with ServerThread(create_app(service)) as server:
        response = requests.get(f"{server.base_url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return response.text, samples


def _heartbeats(db: Database) -> list[WorkerHeartbeat]:
    with db.transaction() as session:
        return list(session.execute(select(WorkerHeartbeat)).scalars())


def _consumed(db: Database) -> list[WorkerHeartbeat]:
    return [w for w in _heartbeats(db) if w.consumed_at is not None and w.state == RUNNING]


@pytest.fixture
def finished_run(pipeline: Pipeline) -> Pipeline:
    """A pipeline whose worker sent one job of mixed outcomes, then rolled up."""
    pipeline.sim.configure(
        number_rules={number(2): "INVALID_NUMBER", number(3): "NO_TEXT", number(4): "FUNNY_CODE"}
    )
    pipeline.start_workers(1, **FAST)
    job = pipeline.enqueue([number(i) for i in range(1, 9)], "metrics test").job_id
    pipeline.wait_for(job)
    wait_until(lambda: _consumed(pipeline.db), 20, message="a consumed heartbeat")
    assert pipeline.service.rollup(force=True) is not None
    return pipeline


@pytest.mark.services
def test_metrics_match_the_database_after_a_real_run(finished_run: Pipeline) -> None:
    body, samples = scrape(finished_run.service)
    db = finished_run.db
    with db.transaction() as session:
        statuses = Counter(session.execute(select(Recipient.status)).scalars())
        codes = Counter(
            session.execute(
                select(Recipient.error_code).where(Recipient.status == RecipientStatus.FAILED)
            ).scalars()
        )
        attempts = session.execute(select(Attempt.outcome, Attempt.latency_ms)).all()
    for status in RecipientStatus:
        key = ("sms_dispatcher_recipients", (("status", status.value),))
        assert samples[key] == statuses.get(status, 0), status
    assert samples[("sms_dispatcher_recipients_total", (("status", "sent"),))] == 5
    for code, count in codes.items():
        assert samples[("sms_dispatcher_recipient_errors_total", (("code", str(code)),))] == count
    assert set(codes) == {"INVALID_NUMBER", "NO_TEXT", "FUNNY_CODE"}
    outcomes = Counter(outcome for outcome, _ in attempts)
    for outcome, count in outcomes.items():
        assert samples[("sms_dispatcher_attempts_total", (("outcome", outcome),))] == count
    latency_count = samples[("sms_dispatcher_gateway_latency_seconds_count", ())]
    assert latency_count == sum(1 for _, ms in attempts if ms is not None)
    latency_sum = samples[("sms_dispatcher_gateway_latency_seconds_sum", ())]
    assert latency_sum == pytest.approx(sum(ms for _, ms in attempts if ms) / 1000)
    inf = samples[("sms_dispatcher_gateway_latency_seconds_bucket", (("le", "+Inf"),))]
    assert inf == latency_count
    accepted = samples[("sms_dispatcher_enqueue_to_accepted_seconds_count", ())]
    assert accepted == statuses[RecipientStatus.SENT]
    assert samples[("sms_dispatcher_paused", ())] == 0
    assert samples[("sms_dispatcher_breaker_state", (("state", "closed"),))] == 1
    assert samples[("sms_dispatcher_workers_alive", ())] == 1
    assert samples[("sms_dispatcher_workers_consuming", ())] == 1
    assert samples[("sms_dispatcher_queue_due_batches", ())] == 0
    assert samples[("sms_dispatcher_queue_oldest_age_seconds", ())] == 0
    # No secret of the run is in the exposition.
    assert finished_run.sim.config().password not in body
    assert number(1) not in body


@pytest.mark.services
def test_metrics_counters_only_grow_and_gauges_follow_the_queue(finished_run: Pipeline) -> None:
    service = finished_run.service
    _, before = scrape(service)
    finished_run.workers.stop_all()
    service.pause(actor="test")
    job = finished_run.enqueue([number(20), number(21)], "waits").job_id
    # Make it look as if the batch had waited a minute.
    with finished_run.db.transaction() as session:
        session.execute(
            update(Batch)
            .where(Batch.job_id == job)
            .values(due_at=utcnow() - dt.timedelta(seconds=60))
        )
    assert service.rollup(force=True) is not None
    _, after = scrape(service)
    for key, value in before.items():
        if key[0].endswith(("_total", "_count", "_sum", "_bucket")):
            assert after[key] >= value, key
    assert after[("sms_dispatcher_paused", ())] == 1
    assert after[("sms_dispatcher_pause_reason", (("reason", "manual"),))] == 1
    assert after[("sms_dispatcher_queue_due_batches", ())] == 1
    assert after[("sms_dispatcher_queue_due_recipients", ())] == 2
    assert after[("sms_dispatcher_queue_oldest_age_seconds", ())] >= 60
    assert after[("sms_dispatcher_recipients", (("status", "queued"),))] == 2
    # The worker shut down cleanly: stopped, so neither alive nor consuming.
    assert [w.state for w in _heartbeats(finished_run.db)] == [STOPPED]
    assert after[("sms_dispatcher_workers_alive", ())] == 0
    assert after[("sms_dispatcher_workers_consuming", ())] == 0


@pytest.mark.services
def test_each_worker_proves_it_consumes_from_redis(pipeline: Pipeline) -> None:
    pipeline.start_workers(2, **FAST)

    def both() -> list[WorkerHeartbeat]:
        rows = _consumed(pipeline.db)
        return rows if len(rows) == 2 else []

    rows = wait_until(
        both,
        20,
        message="both workers to consume their heartbeat task",
    )
    assert len({w.name for w in rows}) == 2
    assert all(w.queues and "dispatcher.dispatch" in w.queues for w in rows)
    first = {w.name: w.consumed_at or utcnow() for w in rows}
    # consumed_at keeps moving: the heartbeat task is sent again and again.
    wait_until(
        lambda: all(
            w.consumed_at is not None and w.consumed_at > first[w.name]
            for w in _heartbeats(pipeline.db)
        ),
        20,
        message="fresh heartbeats",
    )


@pytest.mark.services
def test_a_worker_shows_consuming_as_soon_as_it_is_ready(pipeline: Pipeline) -> None:
    """Its first heartbeat goes at start, not an interval later: a producer sending
    right after a deploy is not told that no worker consumes its lane (the soak's
    first send() was), and a health check passes as soon as the worker can work."""
    started = utcnow()
    pipeline.start_workers(1, heartbeat_interval_s="60", sweep_interval_s="30")
    rows = wait_until(
        lambda: _consumed(pipeline.db), 10, message="the first heartbeat, sent at start"
    )
    assert rows[0].consumed_at is not None
    assert (rows[0].consumed_at - started).total_seconds() < 30


@pytest.mark.services
def test_a_worker_that_stops_consuming_is_flagged(pg_db: Database) -> None:
    now = utcnow()
    with pg_db.transaction() as session:
        for name, consumed_ago_s in (("fresh@h", 1), ("stuck@h", 120)):
            session.add(
                WorkerHeartbeat(
                    name=name, hostname="h", pid=1, queues="q", started_at=now,
                    seen_at=now, consumed_at=now - dt.timedelta(seconds=consumed_ago_s),
                    batches=0, state=RUNNING,
                )
            )  # fmt: skip
    with pg_db.transaction() as session:
        result = health(session, now=now, interval_s=15)
    assert (result.alive, result.consuming, result.stale) == (2, 1, 0)


def test_the_embedded_worker_consumes_its_heartbeat(embedded_pipeline: Pipeline) -> None:
    embedded_pipeline.start_workers(1, **FAST)
    rows = wait_until(
        lambda: _consumed(embedded_pipeline.db), 30, message="a heartbeat through the file broker"
    )
    assert rows[0].pid > 0
    job = embedded_pipeline.enqueue([number(1)], "hello").job_id
    embedded_pipeline.wait_for(job)
    wait_until(
        lambda: [w for w in _heartbeats(embedded_pipeline.db) if w.batches >= 1],
        20,
        message="the batch count in the heartbeat",
    )
    embedded_pipeline.workers.stop_all()
    assert [w.state for w in _heartbeats(embedded_pipeline.db)] == [STOPPED]
    with embedded_pipeline.db.transaction() as session:
        queued = session.execute(select(Batch).where(Batch.status == BatchStatus.QUEUED)).scalars()
        assert list(queued) == []
