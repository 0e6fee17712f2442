"""The broker loses or repeats wake-ups (docs/design.md section 3, guarantees 1 and 2).

The database is the schedule and Redis only wakes workers: when Redis forgets
every message (FLUSHALL, or a restart without persistence) the sweeper in each
worker finds the due batches in the database and wakes workers again; when a
message arrives twice, or several workers race for one batch, the claim's
compare-and-set lets exactly one of them make the HTTP call.
"""

from __future__ import annotations

import time

import pytest

from dispatcher.domain.lanes import QUEUE_DISPATCH
from dispatcher.domain.statuses import BatchStatus
from dispatcher.service.dispatcher import Dispatcher, no_wake
from faults.conftest import FaultPipeline
from support.numbers import number
from support.polling import wait_until
from support.reads import attempts_of, batches_of, recipients_of

pytestmark = pytest.mark.services


def _enqueue_three_jobs(faults: FaultPipeline) -> list[str]:
    """Three jobs, four batches, 203 recipients."""
    jobs = [
        faults.enqueue([number(i) for i in range(150)], "Lost wake-up 1"),
        faults.enqueue(number(500), "Lost wake-up 2"),
        faults.enqueue([number(600), number(601)], "Lost wake-up 3"),
    ]
    return [j.job_id for j in jobs]


def _queued_messages(faults: FaultPipeline) -> int:
    client = faults.redis.client()
    try:
        return int(client.llen(QUEUE_DISPATCH))
    finally:
        client.close()


@pytest.mark.parametrize("how", ["flushall", "restart"])
def test_wakeups_lost_while_no_worker_runs_are_recovered_by_the_sweeper(
    faults: FaultPipeline, how: str
) -> None:
    job_ids = _enqueue_three_jobs(faults)
    assert _queued_messages(faults) == 4

    if how == "flushall":
        faults.redis.flushall()
    else:
        faults.redis.restart(down_s=0.5)
    assert _queued_messages(faults) == 0

    faults.start_workers()
    faults.wait_for(*job_ids, timeout_s=30)

    for job_id in job_ids:
        assert {r.status for r in recipients_of(faults.db, job_id)} == {"sent"}
    assert {(b.status, b.attempts) for b in batches_of(faults.db)} == {(BatchStatus.DONE, 1)}
    assert faults.send_requests() == 4
    outcome = faults.check(allow_unknown=False)
    assert outcome.by_status == {"sent": 153}


def test_redis_restarted_and_flushed_under_paused_workers_then_resumed_without_a_wakeup(
    faults: FaultPipeline,
) -> None:
    workers = faults.start_workers(2)
    paused = faults.cli("pause", "--reason", "fault test", "--json")
    assert paused.returncode == 0, paused.stderr
    job_ids = _enqueue_three_jobs(faults)
    time.sleep(1.0)
    assert faults.send_requests() == 0

    # Redis dies under running workers, stays away a while, comes back empty and
    # is flushed once more for good measure after the workers reconnected.
    faults.redis.restart(down_s=2.0)
    for worker in workers:
        wait_until(
            lambda w=worker: w.log().count("Connected to redis") >= 2,  # type: ignore[misc]
            30,
            message=f"worker {worker.name} to reconnect",
        )
    faults.redis.flushall()
    for job_id in job_ids:
        assert {r.status for r in recipients_of(faults.db, job_id)} == {"queued"}

    # The operator's resume, whose own wake-up is lost: only the workers' sweepers
    # can start the work again.
    operator = Dispatcher(faults.env.settings(), waker=no_wake)
    try:
        assert operator.resume(actor="fault-test")["paused"] is False
    finally:
        operator.close()
    faults.wait_for(*job_ids, timeout_s=30)

    assert all(w.process.poll() is None for w in workers), "a worker died with the broker"
    # Reconnecting is routine, not an error or a warning an operator must read
    # (docs/soak.md): no gossip to restart, no deprecation to be told of each time.
    for worker in workers:
        assert " ERROR celery.bootsteps" not in worker.log(), worker.log_tail()
        assert "CPendingDeprecationWarning" not in worker.log(), worker.log_tail()
    assert {(b.status, b.attempts) for b in batches_of(faults.db)} == {(BatchStatus.DONE, 1)}
    assert faults.send_requests() == 4
    outcome = faults.check(allow_unknown=False)
    assert outcome.by_status == {"sent": 153}


def test_a_job_enqueued_while_redis_is_down_is_acknowledged_and_sent_when_it_returns(
    faults: FaultPipeline,
) -> None:
    # Workers whose dispatch loops sleep as soon as nothing is due: only a wake-up
    # (lost here with the broker) or the sweeper's, once it returns, starts the job.
    workers = faults.start_workers(DISPATCHER_DISPATCH_LINGER_S="0")
    faults.redis.kill()

    started = time.monotonic()
    result = faults.enqueue([number(1), number(2)], "Broker down")  # must not raise
    # The lost wake-up costs the producer a moment, not its job.
    assert time.monotonic() - started < 10
    # Acknowledged means written: queued, unless the loop's first looks, just
    # before it went to sleep, found it already.
    recipients = recipients_of(faults.db, result.job_id)
    assert len(recipients) == 2
    assert {r.status for r in recipients} <= {"queued", "submitting", "sent"}

    time.sleep(1.0)
    faults.redis.start()
    faults.wait_for(result.job_id, timeout_s=30)

    assert all(w.process.poll() is None for w in workers), "a worker died with the broker"
    assert faults.send_requests() == 1
    outcome = faults.check(allow_unknown=False)
    assert outcome.by_status == {"sent": 2}


def test_a_sweep_by_hand_recovers_wakeups_lost_in_a_flush(faults: FaultPipeline) -> None:
    job_ids = _enqueue_three_jobs(faults)
    faults.redis.flushall()

    swept = faults.cli("sweep")

    assert _queued_messages(faults) == 4  # the sweep did wake the work up...
    assert swept.returncode == 0, swept.stderr  # ...and the operator should be told so
    assert "Traceback" not in swept.stderr
    faults.start_workers()
    faults.wait_for(*job_ids, timeout_s=30)
    assert faults.send_requests() == 4
    faults.check(allow_unknown=False)


def test_a_broker_message_delivered_many_times_to_racing_workers_makes_one_call_per_batch(
    faults: FaultPipeline,
) -> None:
    # Slow calls keep batches in flight while the duplicates are consumed.
    faults.sim.configure(latency_ms=300)
    job_ids = [
        faults.enqueue([number(10 * j), number(10 * j + 1)], f"Duplicate {j}").job_id
        for j in range(12)
    ]
    client = faults.redis.client()
    try:
        messages = client.lrange(QUEUE_DISPATCH, 0, -1)
        assert len(messages) == 12
        # The same bytes three more times each: one message delivered four times,
        # as a broker redelivering an unacknowledged message would.
        for _ in range(3):
            client.rpush(QUEUE_DISPATCH, *messages)
        assert client.llen(QUEUE_DISPATCH) == 48
    finally:
        client.close()

    # Three workers of four threads start together and race for the 12 batches.
    faults.start_workers(3)
    faults.wait_for(*job_ids, timeout_s=30)

    batches = batches_of(faults.db)
    assert len(batches) == 12
    assert {(b.status, b.attempts) for b in batches} == {(BatchStatus.DONE, 1)}
    attempts = attempts_of(faults.db)
    assert sorted(a.batch_id for a in attempts) == sorted(b.id for b in batches)
    assert len({a.worker for a in attempts}) > 1, "nobody raced: one thread did it all"
    time.sleep(1.0)
    assert faults.send_requests() == 12
    outcome = faults.check(allow_unknown=False)
    assert outcome.by_status == {"sent": 24}
