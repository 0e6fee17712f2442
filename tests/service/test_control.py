"""Pause, circuit breaker, retry age and wake-up fan-out, driven in-process.

The service runs in the test process against SQLite and PostgreSQL, with a real
gateway client calling the simulator over HTTP; the fan-out test uses the real
Celery waker on the session's Redis.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import update

from dispatcher import runtime
from dispatcher.celery_app import CeleryWaker, make_celery
from dispatcher.domain.lanes import QUEUE_DISPATCH
from dispatcher.domain.limits import CallLimiter
from dispatcher.domain.times import utcnow
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence import migrate
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Batch, DispatchControl, Recipient
from dispatcher.service.dispatcher import Dispatcher
from support.numbers import number
from support.reads import recipients_of, send_requests
from support.settings import make_service, make_settings

pytestmark = pytest.mark.usefixtures("clean_env")


def move_probe_time_to_now(database: Database) -> None:
    """Skip the breaker's wait without sleeping: its next probe is due now."""
    with database.transaction() as session:
        session.execute(
            update(DispatchControl).values(breaker_retry_at=utcnow() - dt.timedelta(seconds=1))
        )


# --- pause ---------------------------------------------------------------------------


def test_a_manual_pause_stops_claims_until_resumed(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    job = service.enqueue(number(1), "held").job_id
    control = service.pause(actor="ops:alice", detail="maintenance")
    assert control["paused"] is True
    assert control["pause_reason"] == "manual"
    assert control["paused_by"] == "ops:alice"
    assert control["pause_detail"] == "maintenance"
    assert control["paused_at"] is not None

    assert service.dispatch_one(worker="w") is None
    assert send_requests(simulator) == 0
    assert [r.status for r in recipients_of(service.db, job)] == ["queued"]

    assert service.resume(actor="ops:alice")["paused"] is False
    assert service.dispatch_one(worker="w") is not None
    assert [r.status for r in recipients_of(service.db, job)] == ["sent"]


def test_login_invalid_fails_its_batch_and_pauses_everything_else(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    simulator.configure(password="not-what-the-dispatcher-has")
    first = service.enqueue(number(1), "one").job_id
    second = service.enqueue(number(2), "two").job_id

    report = service.dispatch_due(worker="w")

    assert report.batches == 1, "the second batch must not be submitted"
    assert send_requests(simulator) == 1
    [failed] = recipients_of(service.db, first)
    assert (failed.status, failed.error_code, failed.attempts) == ("failed", "LOGIN_INVALID", 1)
    assert [r.status for r in recipients_of(service.db, second)] == ["queued"]
    control = service.control()
    assert (control["paused"], control["pause_reason"]) == (True, "login_invalid")

    # A balance check cannot end a credentials pause: only a person can.
    simulator.configure(password=service.settings.gateway_password.get_secret_value())  # type: ignore[union-attr]
    service.sweep()
    assert service.control()["paused"] is True
    service.resume(actor="ops")
    service.dispatch_due(worker="w")
    assert [r.status for r in recipients_of(service.db, second)] == ["sent"]


# --- the circuit breaker -------------------------------------------------------------


def test_an_outage_opens_the_breaker_without_spending_attempts_and_a_probe_closes_it(
    database: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    svc = make_service(
        database,
        simulator,
        tmp_path,
        breaker_threshold=2,
        retry_backoff_s=0.01,
        retry_backoff_max_s=0.01,
        max_attempts=2,
    )
    try:
        simulator.configure(transient_error_rate=1.0)
        jobs = [svc.enqueue(number(i), f"outage {i}").job_id for i in range(4)]

        svc.dispatch_due(worker="w")  # stops by itself once the breaker opens

        assert send_requests(simulator) == 2
        control = svc.control()
        assert control["breaker_state"] == "open"
        assert control["breaker_retry_at"] is not None
        rows = [r for job in jobs for r in recipients_of(svc.db, job)]
        # The first failure spent an attempt, the one that tripped the breaker did not.
        assert sorted(r.attempts for r in rows) == [0, 0, 0, 1]
        assert all(r.status in ("queued", "retry_wait") for r in rows)
        assert svc.dispatch_one(worker="w") is None, "nothing is claimed while open"

        # A failed probe keeps it open, spends nothing, and waits longer.
        move_probe_time_to_now(svc.db)
        assert svc.dispatch_one(worker="w") is not None
        assert send_requests(simulator) == 3
        assert svc.control()["breaker_state"] == "open"
        rows = [r for job in jobs for r in recipients_of(svc.db, job)]
        assert sum(r.attempts for r in rows) == 1
        assert all(r.status != "failed" for r in rows)

        # The gateway is back: the probe succeeds, the breaker closes, all is sent.
        simulator.configure(transient_error_rate=0.0)
        move_probe_time_to_now(svc.db)
        svc.dispatch_due(worker="w")
        assert svc.control()["breaker_state"] == "closed"
        rows = [r for job in jobs for r in recipients_of(svc.db, job)]
        assert [r.status for r in rows] == ["sent"] * 4
    finally:
        svc.close()


def test_an_expired_batch_drawn_as_the_probe_does_not_hold_up_the_next(
    database: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    """After an outage the oldest due batches are often expired OTPs: the probe that
    draws one expires it and probes with the next due batch at once."""
    svc = make_service(
        database, simulator, tmp_path, breaker_threshold=1, retry_backoff_s=0.01,
        retry_backoff_max_s=0.01,
    )  # fmt: skip
    try:
        simulator.configure(transient_error_rate=1.0)
        svc.enqueue(number(1), "trips the breaker")
        svc.dispatch_due(worker="w")
        assert svc.control()["breaker_state"] == "open"

        simulator.configure(transient_error_rate=0.0)
        stale = svc.enqueue(number(2), "code 1234", valid_for_s=0.05).job_id
        time.sleep(0.1)
        fresh = svc.enqueue(number(3), "code 5678").job_id
        with svc.db.transaction() as session:
            # The stale batch is the oldest due one, so the probe draws it first.
            session.execute(
                update(Batch)
                .where(Batch.job_id == stale)
                .values(due_at=utcnow() - dt.timedelta(hours=1))
            )
        move_probe_time_to_now(svc.db)
        svc.dispatch_due(worker="w")

        assert [r.status for r in recipients_of(svc.db, stale)] == ["expired"]
        assert [r.status for r in recipients_of(svc.db, fresh)] == ["sent"]
        assert svc.control()["breaker_state"] == "closed"
    finally:
        svc.close()


def test_only_one_of_many_claimers_sends_the_probe(
    database: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    svc = make_service(database, simulator, tmp_path, breaker_threshold=1)
    try:
        simulator.configure(transient_error_rate=1.0)
        for i in range(6):
            svc.enqueue(number(i), f"probe race {i}")
        svc.dispatch_one(worker="w")
        assert svc.control()["breaker_state"] == "open"
        move_probe_time_to_now(svc.db)
        simulator.configure(latency_ms=300)

        barrier = threading.Barrier(4)
        claims = []

        def contender() -> None:
            barrier.wait(timeout=10)
            claims.append(svc.claim(worker=threading.current_thread().name))

        threads = [threading.Thread(target=contender) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        won = [c for c in claims if c is not None]
        assert len(won) == 1
        assert won[0].probe is True
        assert svc.control()["breaker_state"] == "probing"
    finally:
        svc.close()


# --- the sweeper ---------------------------------------------------------------------


def test_retries_older_than_the_maximum_age_fail(
    database: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    svc = make_service(database, simulator, tmp_path, max_retry_age_s=600)
    try:
        simulator.configure(number_rules={number(1): "GATEWAY_ERROR"})
        job = svc.enqueue([number(1), number(2)], "late").job_id
        svc.dispatch_one(worker="w")
        assert sorted(r.status for r in recipients_of(svc.db, job)) == ["retry_wait", "sent"]

        assert svc.sweep()["overdue_failed"] == 0
        with svc.db.transaction() as session:
            session.execute(
                update(Recipient)
                .where(Recipient.job_id == job)
                .values(created_at=utcnow() - dt.timedelta(seconds=601))
            )
        assert svc.sweep()["overdue_failed"] == 1

        by_number = {r.number: r for r in recipients_of(svc.db, job)}
        assert by_number[number(1)].status == "failed"
        assert by_number[number(1)].error_code == "RETRY_AGE_EXCEEDED"
        assert by_number[number(2)].status == "sent"
        assert svc.dispatch_one(worker="w") is None
    finally:
        svc.close()


@pytest.mark.services
def test_the_sweeper_never_keeps_more_wake_ups_waiting_than_the_fan_out(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path, broker_url: str
) -> None:
    settings = make_settings(pg_db, simulator, tmp_path, broker_url=broker_url, wake_fanout=3)
    app = make_celery(settings)
    waker = CeleryWaker(app)
    svc = Dispatcher(settings, database=pg_db, waker=waker)
    queue = redis.Redis.from_url(broker_url)
    try:
        svc.enqueue([f"+4477009{i:05d}" for i in range(500)], "five batches")
        assert queue.llen(QUEUE_DISPATCH) == 3, "enqueue wakes at most the fan-out"

        assert svc.sweep()["woken"] == 0, "three already wait: nothing more"
        assert queue.llen(QUEUE_DISPATCH) == 3

        queue.delete(QUEUE_DISPATCH)  # the broker lost them
        assert svc.sweep()["woken"] == 3
        assert queue.llen(QUEUE_DISPATCH) == 3

        svc.pause(actor="test")
        queue.delete(QUEUE_DISPATCH)
        assert svc.sweep()["woken"] == 0, "nothing is woken while paused"
    finally:
        queue.close()
        waker.close()
        app.close()


@pytest.mark.services
def test_the_process_waker_of_send_counts_the_wake_ups_waiting(
    pg_db: Database,
    simulator: GatewaySimulator,
    tmp_path: Path,
    broker_url: str,
) -> None:
    """``dispatcher.send()`` wakes through runtime's lazy waker: it must ask what
    waits as the Celery waker does, or every job sends its own message."""
    settings = make_settings(pg_db, simulator, tmp_path, broker_url=broker_url)
    runtime.use(settings)
    svc = Dispatcher(settings, database=pg_db, waker=runtime._LazyCeleryWaker())
    queue = redis.Redis.from_url(broker_url)
    try:
        for i in range(1, 6):
            svc.enqueue(number(i), f"one of five, {i}")
        assert queue.llen(QUEUE_DISPATCH) == 1, "one wake-up waits for all five"
    finally:
        queue.close()
        runtime.reset()


def test_the_file_broker_counts_waiting_wake_ups_for_producers(
    simulator: GatewaySimulator, tmp_path: Path
) -> None:
    """The embedded default broker (files) coalesces wake-ups as Redis does."""
    sqlite = Database(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    migrate.upgrade(sqlite)
    settings = make_settings(sqlite, simulator, tmp_path)
    assert settings.effective_broker_url.startswith("filesystem://")
    app = make_celery(settings)
    waker = CeleryWaker(app)
    svc = Dispatcher(settings, database=sqlite, waker=waker)
    try:
        assert waker.waiting() == 0
        for i in range(1, 4):
            svc.enqueue(number(i), f"one of three, {i}")
        assert waker.waiting() == 1, "the first job's wake-up waits for all three"
        svc.enqueue([number(100 + i) for i in range(250)], "three batches")
        assert waker.waiting() == 3
        assert waker.pending() == 3, "the sweeper counts them alike"
    finally:
        svc.close()
        waker.close()
        app.close()
        sqlite.dispose()


@pytest.mark.services
def test_a_run_cut_short_hands_the_work_still_due_to_fresh_wake_ups(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path, broker_url: str
) -> None:
    """Jobs that shared one wake-up depend on its task claiming them all; a task that
    stops early (time budget, batch limit, shutdown) wakes workers for the rest."""
    settings = make_settings(pg_db, simulator, tmp_path, broker_url=broker_url)
    app = make_celery(settings)
    waker = CeleryWaker(app)
    svc = Dispatcher(settings, database=pg_db, waker=waker)
    queue = redis.Redis.from_url(broker_url)
    try:
        for i in range(1, 4):
            svc.enqueue(number(i), f"one of three, {i}")
        assert queue.llen(QUEUE_DISPATCH) == 1
        queue.delete(QUEUE_DISPATCH)  # this task's own wake-up, taken off the queue

        assert svc.dispatch_due(worker="w", max_batches=1).batches == 1
        assert queue.llen(QUEUE_DISPATCH) == 2, "one for each job still due"

        queue.delete(QUEUE_DISPATCH)
        stop = threading.Event()
        stop.set()
        assert svc.dispatch_due(worker="w", stop=stop).batches == 0
        assert queue.llen(QUEUE_DISPATCH) == 2, "a shutting-down task hands them on too"

        queue.delete(QUEUE_DISPATCH)
        assert svc.dispatch_due(worker="w").batches == 2
        assert queue.llen(QUEUE_DISPATCH) == 0, "a run that emptied the lanes wakes nobody"
    finally:
        svc.close()
        queue.close()
        waker.close()
        app.close()


# --- call limits ---------------------------------------------------------------------


def test_the_limiter_caps_calls_in_flight() -> None:
    limiter = CallLimiter(max_in_flight=2)
    inside = 0
    most = 0
    lock = threading.Lock()
    release = threading.Event()

    def call() -> None:
        nonlocal inside, most
        with limiter.slot():
            with lock:
                inside += 1
                most = max(most, inside)
            release.wait(timeout=5)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    release.set()
    for t in threads:
        t.join(timeout=10)
    assert most == 2


def test_the_limiter_paces_calls_per_second_on_its_clock() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = CallLimiter(max_per_second=4, clock=lambda: now[0], sleep=sleep)
    for _ in range(12):
        with limiter.slot():
            pass
    # A burst of one second's worth, then one call every quarter second.
    assert now[0] == pytest.approx(2.0)
    assert all(s == pytest.approx(0.25) for s in slept)
