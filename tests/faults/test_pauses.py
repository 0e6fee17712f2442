"""Dispatch pausing itself (docs/design.md section 2): LOGIN_INVALID and INSUFFICIENT_CREDIT.

Every further submission would fail the same way, so dispatch stops, in the
database, for every worker: no HTTP call is made and the work waits, visibly
``queued``. LOGIN_INVALID fails the batch that met it and waits for an operator's
``dispatcher resume``; INSUFFICIENT_CREDIT fails nothing and ends by itself when a
balance check finds credit above the threshold.
"""

from __future__ import annotations

import time

import pytest

from dispatcher.domain.statuses import AttemptOutcome
from dispatcher.gateway.protocol import BALANCE_PATH
from faults.conftest import FaultPipeline
from support.numbers import number
from support.reads import attempts_of, recipients_of

pytestmark = pytest.mark.services


def _statuses(faults: FaultPipeline, job_id: str) -> dict[tuple[str, str | None], int]:
    counts: dict[tuple[str, str | None], int] = {}
    for r in recipients_of(faults.db, job_id):
        counts[(r.status, r.error_code)] = counts.get((r.status, r.error_code), 0) + 1
    return counts


def test_login_invalid_fails_one_batch_pauses_the_rest_and_resume_sends_it(
    faults: FaultPipeline,
) -> None:
    password = faults.sim.config().password
    faults.sim.configure(password="rotated-behind-our-back")
    # One thread: exactly one batch meets the refusal before the pause is seen.
    faults.workers.start(1, concurrency=1)

    result = faults.enqueue([number(i) for i in range(500)], "Wrong password")
    time.sleep(2.0)  # the first batch fails at once; then several sweeps

    assert _statuses(faults, result.job_id) == {
        ("failed", "LOGIN_INVALID"): 100,
        ("queued", None): 400,
    }
    [attempt] = attempts_of(faults.db, result.job_id)
    assert (attempt.outcome, attempt.raw_reply) == (AttemptOutcome.REJECTED, "ERR:LOGIN_INVALID")
    assert faults.send_requests() == 1
    control = faults.state()
    assert (control["paused"], control["pause_reason"]) == (True, "login_invalid")
    assert "dispatcher resume" in control["pause_detail"]

    # The operator fixes the credentials and resumes.
    faults.sim.configure(password=password)
    resumed = faults.cli("resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    faults.wait_for(result.job_id, timeout_s=30)

    assert _statuses(faults, result.job_id) == {
        ("failed", "LOGIN_INVALID"): 100,
        ("sent", None): 400,
    }
    assert faults.send_requests() == 5
    assert faults.state()["paused"] is False
    outcome = faults.check(allow_unknown=False)
    assert outcome.by_status == {"sent": 400, "failed": 100}


def test_insufficient_credit_pauses_without_failing_and_a_balance_check_resumes(
    faults: FaultPipeline,
) -> None:
    # Credit for exactly one batch of 100 single-part messages.
    faults.sim.configure(credit=100)
    faults.workers.start(
        1,
        env=faults.env.with_vars(CREDIT_CHECK_INTERVAL_S="0.5", CREDIT_RESUME_THRESHOLD="10"),
        concurrency=1,
    )

    result = faults.enqueue([number(i) for i in range(400)], "Out of credit")
    time.sleep(2.5)  # the second batch meets the empty account; balance checks follow

    # The refused batch is back in the queue, its reason on its recipients.
    assert _statuses(faults, result.job_id) == {
        ("sent", None): 100,
        ("queued", "INSUFFICIENT_CREDIT"): 100,
        ("queued", None): 200,
    }
    attempts = attempts_of(faults.db, result.job_id)
    assert [(a.outcome, a.raw_reply) for a in attempts] == [
        (AttemptOutcome.ACCEPTED, attempts[0].raw_reply),
        (AttemptOutcome.TRANSIENT, "ERR:INSUFFICIENT_CREDIT"),
    ]
    control = faults.state()
    assert (control["paused"], control["pause_reason"]) == (True, "no_credit")
    assert control["last_balance"] == 0
    assert faults.send_requests() == 2
    balance_checks = faults.sim.stats()["requests_by_path"].get(BALANCE_PATH, 0)
    assert balance_checks >= 1

    # Credit is bought; the next balance check resumes dispatch by itself.
    faults.sim.configure(credit=1000)
    faults.wait_for(result.job_id, timeout_s=30)

    rows = recipients_of(faults.db, result.job_id)
    assert {(r.status, r.attempts) for r in rows} == {("sent", 1)}  # the refusal spent nothing
    assert faults.send_requests() == 5
    control = faults.state()
    assert control["paused"] is False
    assert control["last_balance"] == 1000
    assert faults.sim.stats()["credit"] == 1000 - 300
    outcome = faults.check(allow_unknown=False)
    assert outcome.by_status == {"sent": 400}
