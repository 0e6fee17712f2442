"""Priority lanes: ``high`` (one-time passwords) before ``normal`` before ``bulk``.

The claim takes due batches lane by lane, high first; wake-ups travel on a queue
per lane, so a worker serving only the high lane hears and claims nothing else.
The end-to-end tests compare acceptance times from the database and the
simulator's ledger, never wall-clock thresholds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher.domain.lanes import LANE_QUEUES, Priority
from dispatcher.domain.statuses import BatchStatus
from dispatcher.errors import InvalidOptionError
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Job
from dispatcher.service.dispatcher import Dispatcher
from support.numbers import number
from support.pipeline import Pipeline
from support.polling import wait_until
from support.reads import attempts_of, batches_of
from support.settings import make_service

BULK_RECIPIENTS = 10_000


def test_priorities_map_to_lanes_and_queues() -> None:
    assert [p.lane for p in (Priority.HIGH, Priority.NORMAL, Priority.BULK)] == [0, 1, 2]
    assert Priority.NORMAL.queue == "dispatcher.dispatch"
    assert len(set(LANE_QUEUES.values())) == 3
    assert Priority.of_lane(0) is Priority.HIGH


def test_due_work_is_claimed_high_lane_first(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    bulk = service.enqueue(number(1), "bulk", priority="bulk").job_id
    normal = service.enqueue(number(2), "normal").job_id
    high = service.enqueue(number(3), "otp", priority=" HIGH ").job_id
    assert [b.lane for j in (high, normal, bulk) for b in batches_of(service.db, j)] == [0, 1, 2]
    assert service.job_view(high)["priority"] == "high"

    assert service.dispatch_due().batches == 3
    claimed = [a.job_id for a in sorted(attempts_of(service.db), key=lambda a: a.id)]
    assert claimed == [high, normal, bulk]
    assert [e["text"] for e in simulator.ledger()] == ["otp", "normal", "bulk"]


def test_an_unknown_priority_is_refused(service: Dispatcher) -> None:
    with pytest.raises(InvalidOptionError, match="priority must be one of high, normal, bulk"):
        service.enqueue(number(1), "hi", priority="urgent")


def test_a_worker_claims_only_its_lanes(
    database: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    svc = make_service(database, simulator, tmp_path, worker_lanes="high")
    try:
        bulk = svc.enqueue(number(1), "bulk", priority="bulk").job_id
        high = svc.enqueue(number(2), "otp", priority="high").job_id
        assert svc.dispatch_due().batches == 1
        assert [b.status for b in batches_of(database, high)] == [BatchStatus.DONE]
        assert [b.status for b in batches_of(database, bulk)] == [BatchStatus.QUEUED]
    finally:
        svc.close()


# --- with real workers -------------------------------------------------------------


def _worker_pid(attempt_worker: str | None) -> int:
    assert attempt_worker is not None
    return int(attempt_worker.split(":")[1])


def test_an_otp_behind_ten_thousand_bulk_recipients_goes_first(pipeline: Pipeline) -> None:
    """Default workers (every lane): the OTP is claimed by the next free thread,
    ahead of every bulk batch still queued, whatever the kombu queue order."""
    pipeline.sim.configure(latency_ms=150)
    [worker] = pipeline.start_workers(1)
    bulk = pipeline.enqueue(
        [number(i) for i in range(BULK_RECIPIENTS)], "bulk campaign", priority="bulk"
    )
    assert len(bulk.accepted) == BULK_RECIPIENTS
    wait_until(lambda: len(pipeline.sim.ledger()) >= 1000, 60, message="the bulk job to start")

    otp = pipeline.enqueue(number(99_999), "Your code is 123456", priority="high")
    waiting = [b.id for b in batches_of(pipeline.db, bulk.job_id) if b.status == "queued"]
    assert len(waiting) >= 20, "the bulk job ran too fast to prove anything; raise the latency"

    pipeline.wait_for(otp.job_id, bulk.job_id, timeout_s=180)
    with pipeline.db.transaction() as session:
        job = session.get(Job, otp.job_id)
        assert job is not None
        otp_created = job.created_at
    [otp_attempt] = attempts_of(pipeline.db, otp.job_id)
    bulk_attempts = attempts_of(pipeline.db, bulk.job_id)
    # Between the OTP's commit and its claim, only threads already probing could take
    # a bulk batch: at most one per thread.
    overtaking = [a for a in bulk_attempts if otp_created < a.started_at < otp_attempt.started_at]
    assert len(overtaking) <= 4, [a.started_at for a in overtaking]
    claimed_later = [a for a in bulk_attempts if a.batch_id in set(waiting)]
    assert len(claimed_later) >= len(waiting)

    ledger = pipeline.sim.ledger()
    [otp_at] = [e["at"] for e in ledger if e["text"] == "Your code is 123456"]
    bulk_at = [e["at"] for e in ledger if e["text"] == "bulk campaign"]
    assert otp_at < max(bulk_at), "the OTP waited for the whole bulk job"
    accepted_after = sum(1 for at in bulk_at if at > otp_at)
    assert accepted_after >= (len(waiting) - 4) * 100, (accepted_after, len(waiting))
    assert _worker_pid(otp_attempt.worker) == worker.process.pid
    pipeline.check_invariants()


def test_a_dedicated_high_lane_worker_serves_only_otps(pipeline: Pipeline) -> None:
    """DISPATCHER_WORKER_LANES=high: the OTP worker hears only the high queue and
    claims only high batches, so a bulk campaign never occupies it."""
    pipeline.sim.configure(latency_ms=150)
    [general] = pipeline.workers.start(
        1, env=pipeline.env.with_vars(worker_lanes="normal,bulk"), concurrency=1
    )
    [otp_worker] = pipeline.workers.start(
        1, env=pipeline.env.with_vars(worker_lanes="high"), concurrency=1
    )
    bulk = pipeline.enqueue([number(i) for i in range(2000)], "bulk", priority="bulk")
    wait_until(lambda: len(pipeline.sim.ledger()) >= 300, 60, message="the bulk job to start")
    otps = [
        pipeline.enqueue(number(90_000 + i), f"code {i}", priority="high").job_id for i in range(3)
    ]
    pipeline.wait_for(*otps, bulk.job_id, timeout_s=120)

    def pids(job_ids: list[str]) -> set[int]:
        return {_worker_pid(a.worker) for j in job_ids for a in attempts_of(pipeline.db, j)}

    assert pids(otps) == {otp_worker.process.pid}
    assert pids([bulk.job_id]) == {general.process.pid}
    ledger = pipeline.sim.ledger()
    otp_at = [e["at"] for e in ledger if e["text"].startswith("code ")]
    bulk_at = [e["at"] for e in ledger if e["text"] == "bulk"]
    assert max(otp_at) < max(bulk_at)
    pipeline.check_invariants()


def test_worker_lanes_are_validated(pipeline: Pipeline) -> None:
    done = pipeline.cli("worker", "--lanes", "urgent")
    assert done.returncode == 2, done.stderr
    assert "DISPATCHER_WORKER_LANES" in done.stderr
    assert "Traceback" not in done.stderr
