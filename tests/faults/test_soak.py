"""A soak: many recipients, transient errors, workers SIGKILLed at random and restarted.

Sized by DISPATCHER_FAULTS_SOAK_RECIPIENTS (default 1,000 in CI; 5,000 by hand)
with DISPATCHER_FAULTS_SEED to replay a run. Whatever the kills hit, nobody is
accepted twice; ``unknown`` appears only for batches in flight at a kill (at most
one per worker thread per kill); every other recipient ends as its number
dictates: ``failed`` for the numbers the gateway refuses, ``sent`` for the rest.
"""

from __future__ import annotations

import os
import random

import pytest
from sqlalchemy import func, select

from dispatcher.persistence.models import Recipient
from faults.conftest import SUBMITTING_TIMEOUT_S, FaultPipeline, kill
from support.numbers import number
from support.polling import wait_until

pytestmark = pytest.mark.services

RECIPIENTS = int(os.environ.get("DISPATCHER_FAULTS_SOAK_RECIPIENTS", "1000"))
SEED = int(os.environ.get("DISPATCHER_FAULTS_SEED", str(random.randrange(2**32))))
PER_JOB = 10  # small batches: more calls in flight for the kills to land on
WORKERS = 2
CONCURRENCY = 4  # WorkerFactory's -c
KILLS = max(3, RECIPIENTS // 500)
REFUSED_EVERY = 37  # number(i) with i % 37 == 0 is INVALID_NUMBER at the gateway


def _final(faults: FaultPipeline) -> int:
    with faults.db.transaction() as session:
        query = select(func.count()).where(Recipient.status.in_(["sent", "failed", "unknown"]))
        return int(session.execute(query).scalar_one())


@pytest.mark.timeout(300 + RECIPIENTS // 10)
def test_soak_with_transient_errors_and_random_worker_kills(faults: FaultPipeline) -> None:
    rng = random.Random(SEED)
    print(f"soak: {RECIPIENTS} recipients, {KILLS} kills, DISPATCHER_FAULTS_SEED={SEED}")
    refused = {number(i) for i in range(0, RECIPIENTS, REFUSED_EVERY)}
    faults.sim.configure(
        transient_error_rate=0.1,
        latency_ms=300,
        latency_jitter_ms=200,
        number_rules=dict.fromkeys(refused, "INVALID_NUMBER"),
        seed=SEED,
    )
    # Ten percent of calls fail: more attempts than that makes likely, so a
    # recipient's fate is its number's, not the dice's.
    env = faults.env.with_vars(MAX_ATTEMPTS="20")
    faults.workers.start(WORKERS, env=env)
    job_ids = [
        faults.enqueue(
            [number(start + i) for i in range(min(PER_JOB, RECIPIENTS - start))], f"Soak {start}"
        ).job_id
        for start in range(0, RECIPIENTS, PER_JOB)
    ]

    kills = 0
    for k in range(KILLS):
        mark = RECIPIENTS * (k + 1) // (KILLS + 1)
        wait_until(lambda m=mark: _final(faults) >= m, 120, message=f"{mark} recipients final")  # type: ignore[misc]
        victim = rng.choice(faults.live_workers())
        kill(victim)
        kills += 1
        faults.workers.start(1, env=env)

    faults.wait_for(*job_ids, timeout_s=SUBMITTING_TIMEOUT_S + 60 + RECIPIENTS / 50)

    outcome = faults.check()
    print(f"soak outcome: {dict(outcome.by_status)}, {dict(outcome.attempts_by_outcome)}")
    assert len(outcome.unknown_batches) <= kills * CONCURRENCY, outcome.unknown_batches
    with faults.db.transaction() as session:
        rows = [
            (r.number, r.status, r.error_code)
            for r in session.execute(
                select(Recipient.number, Recipient.status, Recipient.error_code)
            )
        ]
    assert len(rows) == RECIPIENTS
    wrong = [
        (num, status, code)
        for num, status, code in rows
        if status != "unknown"
        and (status, code) != (("failed", "INVALID_NUMBER") if num in refused else ("sent", None))
    ]
    assert not wrong, f"recipients not ending as their number dictates: {wrong[:20]}"
    assert {code for _, status, code in rows if status == "unknown"} <= {"WORKER_LOST"}
    assert outcome.attempts_by_outcome["abandoned"] == len(outcome.unknown_batches)
