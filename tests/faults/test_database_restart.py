"""PostgreSQL restarted under running workers (docs/design.md section 3, guarantees 1 and 3).

Workers keep their HTTP calls going while the database is away; a reply that
cannot be written is retried (``Dispatcher.record``) and logged meanwhile, so
no accepted gateway ID is lost. Claims and sweeps fail until the database is
back, then carry on from what it holds: nothing is lost, nothing sent twice.
"""

from __future__ import annotations

import time

import pytest

from dispatcher.domain.statuses import AttemptOutcome, BatchStatus
from faults.conftest import SUBMITTING_TIMEOUT_S, FaultPipeline
from support.numbers import number
from support.polling import wait_until
from support.reads import attempts_of, batches_of, recipients_of

pytestmark = pytest.mark.services

JOBS = 120
PER_JOB = 25  # 3,000 recipients in 120 batches: enough calls to straddle the outage
DOWN_S = 3.0


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restarted_mid_run_loses_nothing_and_sends_nothing_twice(
    faults: FaultPipeline, mode: str
) -> None:
    """``mode`` is pg_ctl's stop mode: ``fast`` rolls sessions back and shuts down
    cleanly; ``immediate`` kills every server process at once, like a crash, and
    the restart recovers from the WAL."""
    total = JOBS * PER_JOB
    job_ids = [
        faults.enqueue(
            [number(PER_JOB * j + i) for i in range(PER_JOB)], f"Database restart {j}"
        ).job_id
        for j in range(JOBS)
    ]
    # Calls slow enough that some are in flight when the database goes, so their
    # replies must wait for it.
    faults.sim.configure(latency_ms=300, latency_jitter_ms=100)
    workers = faults.start_workers(2)

    wait_until(
        lambda: faults.sim.stats()["recipients_accepted"] >= total // 8,
        60,
        message="the run to be under way",
    )
    faults.pg.restart(mode, down_s=DOWN_S)
    accepted_at_restart = faults.sim.stats()["recipients_accepted"]
    assert accepted_at_restart < total, "the run ended before the database went away"

    faults.wait_for(*job_ids, timeout_s=90 + SUBMITTING_TIMEOUT_S)

    assert all(w.process.poll() is None for w in workers), "a worker died with the database"
    logs = "".join(w.log() for w in workers)
    # Replies arrived while the database was away, and were kept until it came back.
    assert "database unavailable recording attempt" in logs
    assert {b.status for b in batches_of(faults.db)} == {BatchStatus.DONE}
    outcome = faults.check()
    # A claim whose commit reached the disk just as the server died is not known to
    # its worker; the sweeper then calls that batch unknown (never resends it), so
    # `unknown` may appear, as WORKER_LOST only, and only for a batch or two.
    assert set(outcome.by_status) <= {"sent", "unknown"}, outcome.by_status
    assert outcome.by_status["sent"] + outcome.by_status["unknown"] == total
    if outcome.by_status["unknown"]:
        assert set(outcome.by_code) <= {None, "WORKER_LOST"}, outcome.by_code
        assert len(outcome.unknown_batches) <= 2 * 4
    assert faults.send_requests() == outcome.attempts - outcome.attempts_by_outcome["abandoned"]


def test_a_reply_held_through_an_outage_longer_than_the_submitting_timeout_is_recorded(
    faults: FaultPipeline,
) -> None:
    faults.sim.configure(latency_ms=1000)
    [worker] = faults.start_workers()
    result = faults.enqueue([number(1), number(2)], "Held through the outage")
    wait_until(lambda: faults.sim.stats()["in_flight"] == 1, 10, message="the call in flight")

    faults.pg.stop("fast")
    # The gateway accepts; the worker holds the reply and retries writing it.
    wait_until(lambda: len(faults.sim.ledger()) == 2, 10, message="the gateway to accept")
    time.sleep(SUBMITTING_TIMEOUT_S + 3)
    faults.pg.start()

    def recorded() -> bool:
        [attempt] = attempts_of(faults.db, result.job_id)
        return attempt.outcome == AttemptOutcome.ACCEPTED

    wait_until(recorded, 60, interval_s=0.5, message="the worker to record its reply")
    faults.wait_for(result.job_id, timeout_s=30)
    assert "database unavailable recording attempt" in worker.log()
    ids = {e["number"]: e["message_id"] for e in faults.sim.ledger()}
    rows = recipients_of(faults.db, result.job_id)
    assert [(r.status, r.gateway_message_id) for r in rows] == [
        ("sent", ids[number(1)]),
        ("sent", ids[number(2)]),
    ]
    faults.check(allow_unknown=False)
