"""The dispatch loop: jobs claimed without a wake-up each, none left behind.

The loop runs in the test process against the real database and the simulator over
HTTP (``dispatcher.service.loop``); on PostgreSQL its lanes' awake mark lives on the
real Redis broker (``CeleryWaker.mark_awake``), and producers read it as
``send()`` does. What is checked: a lingering loop takes jobs that sent no wake-up;
the mark is there only while a claim is coming, and gone before the loop sleeps; an
asleep loop waits for a wake-up; a stopped loop finishes and records its calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.celery_app import awake_key
from dispatcher.domain.lanes import QUEUE_DISPATCH, Priority
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.service.dispatcher import Dispatcher
from dispatcher.service.loop import DispatchLoop
from support.loops import redis_service, sent_within
from support.numbers import number
from support.pipeline import check_invariants
from support.polling import wait_until
from support.reads import attempts_of, recipients_of, wait_for_jobs
from support.settings import make_service

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture
def loop_service(
    database: Database, simulator: GatewaySimulator, tmp_path: Path
) -> Iterator[Dispatcher]:
    service = make_service(
        database, simulator, tmp_path, dispatch_linger_s=1.0, dispatch_poll_s=0.02
    )
    try:
        yield service
    finally:
        service.close()


def stopped(loop: DispatchLoop) -> None:
    loop.stop()
    assert loop.join(30.0)


def test_a_lingering_loop_takes_jobs_that_sent_no_wake_up(
    loop_service: Dispatcher, simulator: GatewaySimulator
) -> None:
    # The in-process service wakes nobody: only the loop's own polling finds them.
    loop = loop_service.start_loop()
    try:
        job_ids = [loop_service.enqueue(number(i), f"linger {i}").job_id for i in range(1, 11)]
        wait_for_jobs(loop_service.db, job_ids, timeout_s=30.0)
    finally:
        stopped(loop)
    for job_id in job_ids:
        [recipient] = recipients_of(loop_service.db, job_id)
        assert recipient.status == "sent"
        [attempt] = attempts_of(loop_service.db, job_id)
        assert (attempt.worker or "").endswith(":dispatch-loop")
    check_invariants(loop_service.db, simulator)


def test_an_asleep_loop_waits_for_a_wake_up(
    database: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    service = make_service(database, simulator, tmp_path, dispatch_linger_s=0.0)
    loop = service.start_loop()
    try:
        # Linger 0: after its first empty look the loop sleeps until nudged.
        wait_until(loop.asleep.is_set, timeout_s=5.0)
        job_id = service.enqueue(number(1), "asleep").job_id
        # Nothing claims it without a wake-up (the sweeper's or a producer's) ...
        assert not sent_within(service.db, job_id, 0.5)
        loop.nudge()
        wait_for_jobs(service.db, [job_id], timeout_s=30.0)
    finally:
        stopped(loop)
        service.close()
    [recipient] = recipients_of(service.db, job_id)
    assert recipient.status == "sent"


def test_stopping_finishes_and_records_the_calls_in_flight(
    loop_service: Dispatcher, simulator: GatewaySimulator
) -> None:
    simulator.configure(latency_ms=500)
    loop = loop_service.start_loop()
    job_ids = [loop_service.enqueue(number(i), f"in flight {i}").job_id for i in range(1, 4)]
    wait_until(lambda: len(attempts_of(loop_service.db)) == 3, timeout_s=30.0)

    stopped(loop)

    # Every call that was claimed went out and its reply is on record.
    for job_id in job_ids:
        [recipient] = recipients_of(loop_service.db, job_id)
        assert recipient.status == "sent"
        assert recipient.gateway_message_id
    assert all(a.finished_at is not None for a in attempts_of(loop_service.db))
    check_invariants(loop_service.db, simulator)


@pytest.mark.services
def test_the_awake_mark_spares_wake_ups_and_is_gone_before_the_loop_sleeps(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path, broker_url: str
) -> None:
    with redis_service(
        pg_db, simulator, tmp_path, broker_url, dispatch_linger_s=1.5, dispatch_poll_s=0.02
    ) as stack:
        service, queue = stack.service, stack.queue
        key = awake_key(Priority.NORMAL)
        loop = service.start_loop()
        try:
            wait_until(lambda: queue.exists(key) == 1, timeout_s=5.0)
            assert stack.waker.awake(Priority.NORMAL) is True
            assert queue.exists(awake_key(Priority.HIGH)) == 1, "every lane the loop serves"

            job_ids = [service.enqueue(number(i), f"awake {i}").job_id for i in range(1, 6)]
            wait_for_jobs(pg_db, job_ids, timeout_s=30.0)
            assert queue.llen(QUEUE_DISPATCH) == 0, "no wake-up sent while the loop lingered"

            # Linger over: the mark goes before the loop sleeps, and producers wake again.
            wait_until(loop.asleep.is_set, timeout_s=10.0)
            assert queue.exists(key) == 0
            asleep = service.enqueue(number(9), "after the linger").job_id
            assert queue.llen(QUEUE_DISPATCH) == 1, "the job sends its wake-up"
            assert not sent_within(pg_db, asleep, 0.5)
            loop.nudge()  # what the dispatch task does with that wake-up
            wait_for_jobs(pg_db, [asleep], timeout_s=30.0)
        finally:
            stopped(loop)
    check_invariants(pg_db, simulator)


@pytest.mark.services
def test_a_job_of_several_batches_wakes_workers_even_while_a_loop_lingers(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path, broker_url: str
) -> None:
    with redis_service(pg_db, simulator, tmp_path, broker_url, wake_fanout=4) as stack:
        stack.waker.mark_awake((Priority.NORMAL,), 5.0)
        stack.service.enqueue(number(1), "one batch")
        assert stack.queue.llen(QUEUE_DISPATCH) == 0
        stack.service.enqueue([number(100 + i) for i in range(250)], "three batches")
        assert stack.queue.llen(QUEUE_DISPATCH) == 3, "other workers share a bulk job"
        stack.waker.clear_awake((Priority.NORMAL,))
        assert stack.waker.awake(Priority.NORMAL) is False


@pytest.mark.services
def test_the_loop_claims_a_batch_for_every_free_sender_at_once(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    service = make_service(pg_db, simulator, tmp_path, worker_concurrency=8)
    try:
        service.control()  # the control row: claims take PostgreSQL's one statement
        job_ids = [service.enqueue(number(i), f"burst {i}").job_id for i in range(1, 21)]
        loop = service.start_loop()
        try:
            wait_for_jobs(pg_db, job_ids, timeout_s=30.0)
        finally:
            stopped(loop)
        # One statement stamps all it claims with one time: 20 batches for 8 senders
        # take a few claims, not 20.
        starts = {a.started_at for a in attempts_of(pg_db)}
    finally:
        service.close()
    assert len(starts) < 20 // 2, len(starts)
    check_invariants(pg_db, simulator)


def test_the_loop_keeps_to_the_calls_in_flight_limit(
    database: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    service = make_service(
        database, simulator, tmp_path, gateway_max_in_flight=2, worker_concurrency=8
    )
    simulator.configure(latency_ms=100)
    try:
        job_ids = [service.enqueue(number(i), f"limited {i}").job_id for i in range(1, 9)]
        loop = service.start_loop()
        try:
            wait_for_jobs(service.db, job_ids, timeout_s=30.0)
        finally:
            stopped(loop)
    finally:
        service.close()
    # Eight senders, but never more than two calls at once, all eight sent.
    assert simulator.stats()["max_in_flight"] == 2
    check_invariants(database, simulator)
