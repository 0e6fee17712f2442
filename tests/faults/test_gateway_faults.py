"""The gateway misbehaving (docs/design.md section 2): errors, broken replies, outages, a dead host.

- HTTP 503 means nothing was sent: retried with backoff until accepted.
- HTTP 500 with an HTML page, garbage bytes, a truncated body, a reply that
  never comes (past the read timeout), a connection reset after the request was
  read or dropped after it was accepted: the gateway may have sent it, so the
  recipients end ``unknown`` after exactly one HTTP call and are never resubmitted.
- A long outage (the gateway answering GATEWAY_ERROR, then refusing connections)
  opens the circuit breaker: nobody fails however long it lasts, and everything
  is sent once it ends.
- A primary host that refuses connections: the backup host takes the work, and
  the attempt rows say so.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from dispatcher.domain.statuses import AttemptOutcome, BatchStatus, RecipientStatus
from dispatcher.gateway.simulator import GatewaySimulator, SimulatorConfig
from dispatcher.persistence.models import Recipient
from faults.conftest import FaultPipeline
from ops.soak.services import closed_port
from support.numbers import number
from support.polling import wait_until
from support.reads import attempts_of, batches_of, recipients_of

pytestmark = pytest.mark.services

OUTAGE_S = float(os.environ.get("DISPATCHER_FAULTS_OUTAGE_S", "20"))
"""How long the outage lasts (DISPATCHER_FAULTS_OUTAGE_S): 20 s in CI, 120 by hand."""


def test_http_503_is_retried_until_the_gateway_accepts(faults: FaultPipeline) -> None:
    faults.sim.configure(http_error_rate=1.0, http_error_status=503)
    faults.start_workers(MAX_ATTEMPTS="10")

    result = faults.enqueue([number(1), number(2)], "Try again later")
    wait_until(
        lambda: len([a for a in attempts_of(faults.db) if a.finished_at]) >= 3,
        15,
        message="three refused attempts",
    )
    faults.sim.configure(http_error_rate=0.0)
    faults.wait_for(result.job_id, timeout_s=15)

    attempts = attempts_of(faults.db, result.job_id)
    *refused, accepted = attempts
    assert len(refused) >= 3
    for attempt in refused:
        assert (attempt.outcome, attempt.http_status) == (AttemptOutcome.TRANSIENT, 503)
        assert attempt.raw_reply == "Service Unavailable"
    assert accepted.outcome == AttemptOutcome.ACCEPTED
    rows = recipients_of(faults.db, result.job_id)
    assert [(r.status, r.error_code, r.attempts) for r in rows] == [
        ("sent", None, len(attempts))
    ] * 2
    assert faults.send_requests() == len(attempts)
    faults.check(allow_unknown=False)


# knobs, the error code the recipients end with, and whether the gateway took them
AMBIGUOUS: dict[str, tuple[dict[str, Any], str, bool]] = {
    "http_500_html": (
        {
            "http_error_rate": 1.0,
            "http_error_status": 500,
            "http_error_body": "<html><head><title>500 - Internal server error.</title></head>"
            "<body><h1>Server Error</h1></body></html>",
        },
        "HTTP_500",
        False,
    ),
    "garbage": ({"garbage_rate": 1.0}, "UNREADABLE_REPLY", True),
    "hang_past_read_timeout": ({"hang_rate": 1.0, "hang_s": 5.0}, "NO_REPLY", True),
    "reset_after_reading_request": ({"reset_before_accept_rate": 1.0}, "NO_REPLY", False),
    "dropped_after_accept": ({"drop_after_accept_rate": 1.0}, "NO_REPLY", True),
}


@pytest.mark.parametrize("fault", list(AMBIGUOUS))
def test_an_ambiguous_reply_ends_unknown_after_exactly_one_call(
    faults: FaultPipeline, fault: str
) -> None:
    knobs, code, taken = AMBIGUOUS[fault]
    faults.sim.configure(**knobs)
    faults.start_workers()

    # Two batches of a multi-recipient job, and a single-recipient job (the
    # single-line reply form): three HTTP calls.
    bulk = faults.enqueue([number(i) for i in range(150)], f"Ambiguous {fault}")
    single = faults.enqueue(number(900), f"Ambiguous single {fault}")
    faults.wait_for(bulk.job_id, single.job_id, timeout_s=20)
    time.sleep(1.5)  # several sweeps: nothing is resubmitted

    rows = recipients_of(faults.db, bulk.job_id) + recipients_of(faults.db, single.job_id)
    assert {(r.status, r.error_code, r.attempts) for r in rows} == {("unknown", code, 1)}
    attempts = attempts_of(faults.db)
    assert len(attempts) == 3
    assert {a.outcome for a in attempts} == {AttemptOutcome.AMBIGUOUS}
    assert {(b.status, b.attempts) for b in batches_of(faults.db)} == {(BatchStatus.DONE, 1)}
    assert faults.send_requests() == 3
    outcome = faults.check()
    assert outcome.by_status == {"unknown": 151}
    assert outcome.unknown_in_ledger == (151 if taken else 0)


def test_replies_cut_short_keep_the_ids_that_arrived_and_the_rest_stays_unknown(
    faults: FaultPipeline,
) -> None:
    # The gateway accepts everything, then each reply stops halfway: the recipients
    # whose lines arrived whole are sent with their IDs; the rest may have been sent
    # and stay unknown, never resubmitted. The single-line reply of a one-recipient
    # job is cut inside its only line, so that recipient is unknown.
    faults.sim.configure(truncate_rate=1.0)
    faults.start_workers()

    bulk = faults.enqueue([number(i) for i in range(150)], "Cut short")
    single = faults.enqueue(number(900), "Cut short single")
    faults.wait_for(bulk.job_id, single.job_id, timeout_s=20)
    time.sleep(1.5)  # several sweeps: nothing is resubmitted

    rows = recipients_of(faults.db, bulk.job_id) + recipients_of(faults.db, single.job_id)
    ids = {entry["number"]: entry["message_id"] for entry in faults.sim.ledger()}
    sent = [r for r in rows if r.status == "sent"]
    assert sent, "the whole lines of a cut reply must be recorded"
    assert all(r.gateway_message_id == ids[r.number] for r in sent)
    assert {(r.status, r.error_code, r.attempts) for r in rows if r not in sent} == {
        ("unknown", "UNREADABLE_REPLY", 1)
    }
    assert faults.send_requests() == 3
    outcome = faults.check()
    assert outcome.by_status == {"sent": len(sent), "unknown": 151 - len(sent)}
    assert outcome.unknown_in_ledger == 151 - len(sent)


def _failed(faults: FaultPipeline) -> int:
    with faults.db.transaction() as session:
        query = select(func.count()).where(Recipient.status == RecipientStatus.FAILED)
        return int(session.execute(query).scalar_one())


def test_a_long_gateway_outage_opens_the_breaker_fails_nobody_and_everything_is_sent_after(
    faults: FaultPipeline,
) -> None:
    """An outage of DISPATCHER_FAULTS_OUTAGE_S seconds (default 20; run it with 120
    for the issue's two minutes), far longer than DISPATCHER_MAX_ATTEMPTS=3
    backoffs: the first half the gateway answers GATEWAY_ERROR to everything, the
    second half it is gone (connection refused)."""
    faults.sim.configure(transient_error_rate=1.0)
    faults.start_workers(MAX_ATTEMPTS="3")
    started = time.monotonic()
    job_ids = [
        faults.enqueue([number(100 * j + i) for i in range(100)], f"Outage {j}").job_id
        for j in range(6)
    ]
    job_ids.append(faults.enqueue([number(5000), number(5001)], "Outage small").job_id)

    control = wait_until(
        lambda: (state := faults.state())["breaker_state"] == "open" and state,
        15,
        interval_s=0.2,
        message="the breaker to open",
    )
    assert control["paused"] is False
    assert control["breaker_opened_at"] is not None

    time.sleep(max(0.0, started + OUTAGE_S / 2 - time.monotonic()))
    # Five whole submissions failed in a row (plus calls already in flight), then one
    # probe at a time, at least a second apart.
    first_half = faults.send_requests()
    assert first_half <= 5 + 4 + OUTAGE_S / 2 + 1
    assert _failed(faults) == 0

    # The gateway goes away altogether.
    config, port = faults.sim.config(), faults.sim.port
    faults.sim.stop()
    requests_before = faults.send_requests()
    faults.extra_ledgers.append(faults.sim.ledger())
    assert faults.extra_ledgers == [[]]
    time.sleep(max(0.0, started + OUTAGE_S - time.monotonic()))
    assert faults.state()["breaker_state"] in ("open", "probing")
    assert _failed(faults) == 0
    refused = [a for a in attempts_of(faults.db) if a.http_status is None and a.finished_at]
    assert refused, "no attempt met the refused connection"
    assert {a.outcome for a in refused} == {AttemptOutcome.TRANSIENT}
    assert all(a.error and "cannot connect" in a.error for a in refused)

    # The gateway comes back on the same address, healthy.
    back = GatewaySimulator(
        SimulatorConfig(username=config.username, password=config.password), port=port
    )
    back.start_in_thread()
    try:
        faults.sim = back
        faults.wait_for(*job_ids, timeout_s=30)

        assert faults.state()["breaker_state"] == "closed"
        rows = [r for job_id in job_ids for r in recipients_of(faults.db, job_id)]
        assert {r.status for r in rows} == {"sent"}
        # Nobody spent more than the attempts before the breaker opened and the one
        # that succeeded, far from the three allowed.
        assert max(r.attempts for r in rows) <= 2
        assert faults.send_requests() == len(batches_of(faults.db))
        outcome = faults.check(
            allow_unknown=False, max_http_requests=requests_before + faults.send_requests()
        )
        assert outcome.by_status == {"sent": 602}
    finally:
        back.stop()


def test_the_backup_host_takes_the_work_when_the_primary_refuses_connections(
    faults: FaultPipeline,
) -> None:
    dead_port = closed_port()
    env = faults.env.with_vars(
        GATEWAY_URL=f"http://127.0.0.1:{dead_port}/smsgateway",
        GATEWAY_BACKUP_URL=faults.sim.base_url,
    )
    [worker] = faults.workers.start(1, env=env)

    jobs = [
        faults.enqueue([number(i) for i in range(120)], "Via the backup"),
        faults.enqueue(number(500), "Via the backup, alone"),
    ]
    faults.wait_for(*(j.job_id for j in jobs), timeout_s=30)

    attempts = attempts_of(faults.db)
    assert len(attempts) == 3
    assert {(a.outcome, a.host, a.http_status) for a in attempts} == {
        (AttemptOutcome.ACCEPTED, f"127.0.0.1:{faults.sim.port}", 200)
    }
    assert f"gateway 127.0.0.1:{dead_port} unreachable" in worker.log()
    assert faults.state()["breaker_state"] == "closed"
    assert faults.send_requests() == 3
    outcome = faults.check(allow_unknown=False)
    assert outcome.by_status == {"sent": 121}
