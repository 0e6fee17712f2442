"""Workers SIGKILLed mid-call (docs/design.md section 3, guarantee 2).

A worker killed while its HTTP call is in flight leaves the batch ``submitting``
with an in-flight attempt row. After ``DISPATCHER_SUBMITTING_TIMEOUT_S`` a
sweeper (in any other worker) marks it ``unknown`` (``WORKER_LOST``) and never
sends it again, whatever the gateway did with the call; everything else is sent
by the workers that remain or start later.
"""

from __future__ import annotations

import datetime as dt
import signal
import time

import pytest

from dispatcher.domain.statuses import AttemptOutcome, BatchStatus
from faults.conftest import SUBMITTING_TIMEOUT_S, FaultPipeline, kill
from support.numbers import number
from support.polling import wait_until
from support.reads import attempts_of, batches_of, recipients_of

pytestmark = pytest.mark.services


def test_a_worker_killed_mid_call_leaves_its_batch_unknown_and_the_rest_is_sent(
    faults: FaultPipeline,
) -> None:
    # Slow enough that the call is certainly in flight when the worker dies, and
    # below the 2 s read timeout so the gateway does take it.
    faults.sim.configure(latency_ms=1500)
    [worker] = faults.start_workers()

    doomed = faults.enqueue([number(i) for i in range(3)], "Killed mid-call")
    wait_until(lambda: faults.sim.stats()["in_flight"] == 1, 10, message="the call in flight")
    [attempt] = attempts_of(faults.db, doomed.job_id)
    assert faults.worker_of(attempt) is worker
    kill(worker)
    assert {r.status for r in recipients_of(faults.db, doomed.job_id)} == {"submitting"}

    # More work arrives while no worker runs; a new worker takes it.
    faults.sim.configure(latency_ms=0)
    rest = [
        faults.enqueue([number(1000 + 200 * j + i) for i in range(150)], f"After the kill {j}")
        for j in range(3)
    ]
    faults.start_workers()
    faults.wait_for(*(r.job_id for r in rest), timeout_s=30)
    for result in rest:
        assert {r.status for r in recipients_of(faults.db, result.job_id)} == {"sent"}
    # The killed batch is still held, not resent, until the submitting timeout.
    assert {r.status for r in recipients_of(faults.db, doomed.job_id)} == {"submitting"}

    faults.wait_for(doomed.job_id, timeout_s=SUBMITTING_TIMEOUT_S + 15)

    rows = recipients_of(faults.db, doomed.job_id)
    assert [(r.status, r.error_code, r.attempts) for r in rows] == [
        ("unknown", "WORKER_LOST", 1)
    ] * 3
    [abandoned] = attempts_of(faults.db, doomed.job_id)
    assert abandoned.id == attempt.id
    assert abandoned.outcome == AttemptOutcome.ABANDONED
    [batch] = batches_of(faults.db, doomed.job_id)
    assert (batch.status, batch.attempts) == (BatchStatus.DONE, 1)
    assert batch.claimed_at is not None
    assert abandoned.finished_at is not None
    assert abandoned.finished_at - batch.claimed_at >= dt.timedelta(seconds=SUBMITTING_TIMEOUT_S)

    # Several sweeps later: one call for the killed batch, two for each other job.
    time.sleep(1.5)
    assert faults.send_requests() == 1 + 2 * len(rest)
    outcome = faults.check()
    assert outcome.by_status == {"sent": 450, "unknown": 3}
    # The gateway took the killed worker's call (its reply had nowhere to go):
    # the ledger has those three once, and the database says unknown, not sent.
    assert outcome.unknown_in_ledger == 3


def test_a_warm_shutdown_finishes_the_call_in_flight_and_claims_nothing_more(
    faults: FaultPipeline,
) -> None:
    faults.sim.configure(latency_ms=1500)
    [worker] = faults.workers.start(1, concurrency=1)

    result = faults.enqueue([number(i) for i in range(300)], "Warm shutdown")
    wait_until(lambda: faults.sim.stats()["in_flight"] == 1, 10, message="the call in flight")
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=15) == 0

    # The call in flight was finished and recorded; nothing more was claimed.
    counts: dict[str, int] = {}
    for r in recipients_of(faults.db, result.job_id):
        counts[r.status] = counts.get(r.status, 0) + 1
    assert counts == {"sent": 100, "queued": 200}
    [attempt] = attempts_of(faults.db, result.job_id)
    assert attempt.outcome == AttemptOutcome.ACCEPTED
    assert faults.send_requests() == 1

    faults.sim.configure(latency_ms=0)
    faults.start_workers()
    faults.wait_for(result.job_id, timeout_s=30)
    assert faults.send_requests() == 3
    outcome = faults.check(allow_unknown=False)
    assert outcome.by_status == {"sent": 300}
