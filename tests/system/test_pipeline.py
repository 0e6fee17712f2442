"""The whole pipeline on the real services: producer, Redis, real workers, PostgreSQL, HTTP.

Each test enqueues through a Dispatcher in this process whose waker sends real
Celery messages; worker processes (``dispatcher worker``) claim, call the gateway
simulator over HTTP and record. The database and the simulator's ledger are then
checked against each other (docs/design.md sections 2, 3 and 5).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import time
from typing import Any

import pytest
import redis
from sqlalchemy import select

from dispatcher.celery_app import CeleryWaker, make_celery
from dispatcher.domain.lanes import QUEUE_DISPATCH
from dispatcher.domain.statuses import AttemptOutcome, BatchStatus
from dispatcher.errors import NoRecipientsError
from dispatcher.gateway.simulator import FIRST_MESSAGE_ID
from dispatcher.persistence.models import Attempt, Batch, Recipient
from dispatcher.service.audit import export_csv
from dispatcher.service.dispatcher import Dispatcher
from support.numbers import number
from support.pipeline import Pipeline
from support.polling import wait_until
from support.reads import (
    attempts_of,
    batches_of,
    claims_of,
    events_of,
    recipients_of,
    row_counts,
    send_requests,
)
from support.services import REDIS_HOST, REDIS_PORT

pytestmark = pytest.mark.services

INT64_MAX = 2**63 - 1


def test_multi_recipient_job_is_sent_and_shown_by_status_json(pipeline: Pipeline) -> None:
    pipeline.start_workers()
    numbers = [number(1), number(2), number(3)]

    result = pipeline.enqueue(["+44 7700 900001", "07700 900002", "00447700900003"], "Hello")
    pipeline.wait_for(result.job_id)

    rows = recipients_of(pipeline.db, result.job_id)
    assert [r.number for r in rows] == numbers
    assert {r.status for r in rows} == {"sent"}
    assert {r.attempts for r in rows} == {1}
    [message_id] = {r.gateway_message_id for r in rows}
    assert isinstance(message_id, str)
    assert message_id == str(FIRST_MESSAGE_ID)
    assert int(message_id) > INT64_MAX  # kept as a string, exactly as the gateway sent it
    pipeline.check_invariants()

    done = pipeline.cli("status", result.job_id, "--json")
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert view["id"] == result.job_id
    assert view["status"] == "completed"
    assert [
        (r["number"], r["status"], r["gateway_message_id"], r["error_code"], r["attempts"])
        for r in view["recipients"]
    ] == [(n, "sent", message_id, None, 1) for n in numbers]


def test_mixed_reply_retries_only_the_transient_recipient(pipeline: Pipeline) -> None:
    pipeline.sim.configure(number_rules={number(3): "INVALID_NUMBER", number(4): "GATEWAY_ERROR*1"})
    pipeline.start_workers()

    result = pipeline.enqueue([number(1), number(3), number(4)], "Mixed")
    pipeline.wait_for(result.job_id)

    by_number = {r.number: r for r in recipients_of(pipeline.db, result.job_id)}
    ok, invalid, transient = by_number[number(1)], by_number[number(3)], by_number[number(4)]
    assert (ok.status, ok.attempts, ok.error_code) == ("sent", 1, None)
    assert (invalid.status, invalid.attempts, invalid.error_code) == ("failed", 1, "INVALID_NUMBER")
    assert invalid.gateway_message_id is None
    assert (transient.status, transient.attempts) == ("sent", 2)
    assert transient.gateway_message_id != ok.gateway_message_id  # a second submission

    first, second = attempts_of(pipeline.db, result.job_id)
    assert first.numbers == f"{number(1)},{number(3)},{number(4)}"
    assert first.outcome == AttemptOutcome.PARTIAL
    assert second.numbers == number(4)  # only the transient recipient is retried
    assert second.outcome == AttemptOutcome.ACCEPTED
    assert send_requests(pipeline.sim) == 2
    assert sorted(e["number"] for e in pipeline.sim.ledger()) == [number(1), number(4)]
    pipeline.check_invariants()


def test_internal_error_exhausts_the_attempts_then_fails(pipeline: Pipeline) -> None:
    pipeline.sim.configure(number_rules={number(7): "INTERNAL_ERROR"})
    pipeline.start_workers(MAX_ATTEMPTS="3")

    result = pipeline.enqueue([number(6), number(7)], "Keeps failing")
    pipeline.wait_for(result.job_id)

    by_number = {r.number: r for r in recipients_of(pipeline.db, result.job_id)}
    failing = by_number[number(7)]
    assert (failing.status, failing.attempts, failing.error_code) == ("failed", 3, "INTERNAL_ERROR")
    assert failing.next_attempt_at is None
    assert by_number[number(6)].status == "sent"
    attempts = attempts_of(pipeline.db, result.job_id)
    assert [a.numbers.split(",").count(number(7)) for a in attempts] == [1, 1, 1]
    assert [a.outcome for a in attempts] == ["partial", "transient", "transient"]
    assert send_requests(pipeline.sim) == 3
    assert pipeline.sim.stats()["recipient_errors"] == {"INTERNAL_ERROR": 3}
    pipeline.check_invariants()


def test_login_invalid_fails_after_exactly_one_call(pipeline: Pipeline) -> None:
    pipeline.sim.configure(password="not-the-dispatchers-password")
    pipeline.start_workers()

    result = pipeline.enqueue([number(1), number(2)], "Wrong password")
    pipeline.wait_for(result.job_id)

    rows = recipients_of(pipeline.db, result.job_id)
    assert [(r.status, r.error_code, r.attempts) for r in rows] == [
        ("failed", "LOGIN_INVALID", 1),
        ("failed", "LOGIN_INVALID", 1),
    ]
    [attempt] = attempts_of(pipeline.db, result.job_id)
    assert attempt.outcome == AttemptOutcome.REJECTED
    assert attempt.raw_reply == "ERR:LOGIN_INVALID"
    # A couple of sweeps later, still one call: a permanent failure is never retried.
    time.sleep(1.5)
    assert send_requests(pipeline.sim) == 1
    assert pipeline.sim.stats()["requests_total"] == 1
    assert len(attempts_of(pipeline.db, result.job_id)) == 1
    pipeline.check_invariants()


def test_login_invalid_pauses_dispatch_until_an_operator_resumes(pipeline: Pipeline) -> None:
    password = pipeline.sim.config().password
    pipeline.sim.configure(password="not-the-dispatchers-password")
    pipeline.start_workers()
    first = pipeline.enqueue(number(1), "Wrong password")
    pipeline.wait_for(first.job_id)

    state = pipeline.cli("state", "--json")
    assert state.returncode == 0, state.stderr
    control = json.loads(state.stdout)
    assert (control["paused"], control["pause_reason"]) == (True, "login_invalid")

    # Paused: new work waits, visibly queued, and the gateway is not called.
    pipeline.sim.configure(password=password)
    waiting = pipeline.enqueue(number(2), "After the fix")
    time.sleep(1.5)
    assert [r.status for r in recipients_of(pipeline.db, waiting.job_id)] == ["queued"]
    assert send_requests(pipeline.sim) == 1

    resumed = pipeline.cli("resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["paused"] is False
    pipeline.wait_for(waiting.job_id, timeout_s=30)
    assert [r.status for r in recipients_of(pipeline.db, waiting.job_id)] == ["sent"]
    assert [r.status for r in recipients_of(pipeline.db, first.job_id)] == ["failed"]
    assert send_requests(pipeline.sim) == 2
    pipeline.check_invariants()


def test_250_recipients_go_in_three_submissions(pipeline: Pipeline) -> None:
    pipeline.start_workers()
    numbers = [number(i) for i in range(250)]

    result = pipeline.enqueue(numbers, "Bulk")
    assert result.batches == 3
    pipeline.wait_for(result.job_id)

    attempts = attempts_of(pipeline.db, result.job_id)
    assert sorted(len(a.numbers.split(",")) for a in attempts) == [50, 100, 100]
    assert send_requests(pipeline.sim) == 3
    rows = recipients_of(pipeline.db, result.job_id)
    assert len(rows) == 250
    assert {r.status for r in rows} == {"sent"}
    assert len({r.gateway_message_id for r in rows}) == 3  # one ID per submission
    pipeline.check_invariants()


def test_duplicate_wakeups_and_racing_workers_make_one_call_per_batch(
    pipeline: Pipeline,
) -> None:
    pipeline.sim.configure(latency_ms=100)
    pipeline.start_workers(2)
    waker = pipeline.producer.waker

    job_ids = []
    for index in range(8):
        result = pipeline.enqueue([number(10 * index), number(10 * index + 1)], f"Race {index}")
        job_ids.append(result.job_id)
        # The producer's own wake-up, then one message delivered twice more.
        task_id = f"duplicate-{index}-{result.job_id}"
        waker.send(task_id)
        waker.send(task_id)
    assert waker.sent == 8 * 3
    pipeline.wait_for(*job_ids)

    batches = batches_of(pipeline.db)
    assert len(batches) == 8
    assert {(b.status, b.attempts) for b in batches} == {(BatchStatus.DONE, 1)}
    attempts = attempts_of(pipeline.db)
    assert len(attempts) == 8
    assert sorted(a.batch_id for a in attempts) == sorted(b.id for b in batches)
    assert send_requests(pipeline.sim) == 8
    pipeline.check_invariants()


def test_the_attempt_row_is_committed_before_the_call(pipeline: Pipeline) -> None:
    pipeline.sim.configure(latency_ms=3000)
    pipeline.start_workers()
    numbers = [number(1), number(2)]

    result = pipeline.enqueue(numbers, "Slow gateway")

    def snapshot() -> tuple[Attempt, Any] | None:
        with pipeline.db.transaction() as session:
            attempt = session.scalars(
                select(Attempt).where(Attempt.job_id == result.job_id)
            ).one_or_none()
            if attempt is None:
                return None
            batch = session.get(Batch, attempt.batch_id)
            statuses = session.scalars(
                select(Recipient.status).where(Recipient.job_id == result.job_id)
            ).all()
            return attempt, (batch.status if batch else None, sorted(statuses))

    # While the simulator holds the request (before it has processed it), the
    # database already shows the claim and the attempt.
    wait_until(lambda: pipeline.sim.stats()["in_flight"] == 1, 10, message="the call")
    state = snapshot()
    assert pipeline.sim.stats()["in_flight"] == 1
    assert pipeline.sim.ledger() == []
    assert state is not None, "no attempt row while the call is in flight"
    attempt, (batch_status, statuses) = state
    assert attempt.outcome == AttemptOutcome.IN_FLIGHT
    assert attempt.finished_at is None
    assert attempt.numbers == ",".join(numbers)
    assert attempt.worker
    assert batch_status == BatchStatus.SUBMITTING
    assert statuses == ["submitting", "submitting"]

    pipeline.wait_for(result.job_id)
    [done] = attempts_of(pipeline.db, result.job_id)
    assert done.id == attempt.id
    assert done.outcome == AttemptOutcome.ACCEPTED
    assert done.latency_ms is not None
    assert done.latency_ms >= 3000
    assert {r.status for r in recipients_of(pipeline.db, result.job_id)} == {"sent"}
    pipeline.check_invariants()


def test_refused_numbers_are_recorded_failed_beside_accepted_ones(pipeline: Pipeline) -> None:
    pipeline.start_workers()

    result = pipeline.enqueue([number(1), "12345", "not a number", "07700 900002"], "Some bad")
    assert result.accepted == [number(1), number(2)]
    assert [raw for raw, _ in result.refused] == ["12345", "not a number"]
    pipeline.wait_for(result.job_id)

    by_number = {r.number: r for r in recipients_of(pipeline.db, result.job_id)}
    assert by_number[number(1)].status == by_number[number(2)].status == "sent"
    for raw, reason in result.refused:
        refused = by_number[raw]
        assert refused.status == "failed"
        assert refused.error_code == "INVALID_NUMBER"
        assert refused.error_detail == f"refused at enqueue: {reason}"
        assert refused.batch_id is None
        assert refused.attempts == 0
    assert [a.numbers for a in attempts_of(pipeline.db, result.job_id)] == [
        f"{number(1)},{number(2)}"
    ]
    pipeline.check_invariants()


def test_a_job_with_no_valid_number_writes_nothing(pipeline: Pipeline) -> None:
    before = row_counts(pipeline.db)
    waker = pipeline.producer.waker

    with pytest.raises(NoRecipientsError, match="no valid recipient"):
        pipeline.enqueue(["12345", "not a number"], "Nobody")

    assert row_counts(pipeline.db) == before
    assert waker.sent == 0


def test_every_sent_recipient_has_its_status_history(pipeline: Pipeline) -> None:
    pipeline.start_workers()
    numbers = [number(1), number(2), number(3)]

    result = pipeline.enqueue(numbers, "History")
    pipeline.wait_for(result.job_id)

    [attempt] = attempts_of(pipeline.db, result.job_id)
    recipients = recipients_of(pipeline.db, result.job_id)
    # Written: one status event per recipient, its outcome; its creation is its row
    # and the claim is the attempt's row (docs/design.md section 3).
    assert len(events_of(pipeline.db, result.job_id)) == len(recipients)
    assert claims_of(pipeline.db, result.job_id) == [
        (attempt.id, r.id, "queued") for r in recipients
    ]
    # Shown: the whole story, the claim included, as the audit export tells it.
    story = list(
        csv.DictReader(
            io.StringIO(
                "".join(export_csv(pipeline.db, since=None, until=None, job_id=result.job_id))
            )
        )
    )
    assert len(story) == 3 * len(recipients)
    for recipient in recipients:
        mine = [e for e in story if e["recipient_id"] == str(recipient.id)]
        assert [(e["from_status"], e["to_status"]) for e in mine] == [
            ("", "queued"),
            ("queued", "submitting"),
            ("submitting", "sent"),
        ]
        queued, submitting, sent = mine
        assert (queued["cause"], queued["actor"], queued["attempt_id"]) == (
            "enqueued",
            "python",
            "",
        )
        assert submitting["cause"] == "attempt 1 claimed"
        assert sent["cause"] == f"accepted as {recipient.gateway_message_id}"
        for event in (submitting, sent):
            assert event["actor"] == attempt.worker
            assert event["attempt_id"] == str(attempt.id)
        assert submitting["at"] == attempt.started_at.isoformat()
        assert queued["at"] <= submitting["at"] <= sent["at"]
    assert {r.status for r in recipients} == {"sent"}
    pipeline.check_invariants()


def test_lost_wakeups_are_repaired_by_the_sweeper(pipeline: Pipeline, redis_index: int) -> None:
    result = pipeline.enqueue([number(1), number(2)], "Nobody woke me")
    broker = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=redis_index)
    try:
        # The broker loses the wake-up (a Redis restart or flush would).
        assert broker.llen(QUEUE_DISPATCH) == 1
        broker.delete(QUEUE_DISPATCH)
    finally:
        broker.close()
    pipeline.start_workers()

    pipeline.wait_for(result.job_id, timeout_s=30)

    assert {r.status for r in recipients_of(pipeline.db, result.job_id)} == {"sent"}
    assert send_requests(pipeline.sim) == 1
    pipeline.check_invariants()


def test_a_worker_killed_mid_call_leaves_unknown_never_a_resend(pipeline: Pipeline) -> None:
    pipeline.sim.configure(latency_ms=1500)
    # Short gateway timeouts so the sweeper may call the batch abandoned after 17 s.
    workers = pipeline.start_workers(
        2, GATEWAY_CONNECT_TIMEOUT_S="1", GATEWAY_READ_TIMEOUT_S="2", SUBMITTING_TIMEOUT_S="17"
    )

    result = pipeline.enqueue([number(1), number(2)], "Killed mid-call")
    wait_until(lambda: pipeline.sim.stats()["in_flight"] == 1, 10, message="the call")
    [attempt] = attempts_of(pipeline.db, result.job_id)
    assert attempt.worker
    pid = int(attempt.worker.split(":")[1])
    [victim] = [w for w in workers if w.process.pid == pid]
    victim.process.kill()
    victim.process.wait(timeout=10)
    assert [r.status for r in recipients_of(pipeline.db, result.job_id)] == ["submitting"] * 2

    pipeline.wait_for(result.job_id, timeout_s=45)

    rows = recipients_of(pipeline.db, result.job_id)
    assert [(r.status, r.error_code, r.attempts) for r in rows] == [
        ("unknown", "WORKER_LOST", 1)
    ] * 2
    [abandoned] = attempts_of(pipeline.db, result.job_id)
    assert abandoned.outcome == AttemptOutcome.ABANDONED
    [batch] = batches_of(pipeline.db, result.job_id)
    assert batch.status == BatchStatus.DONE
    assert batch.claimed_at is not None
    assert abandoned.finished_at is not None
    assert abandoned.finished_at - batch.claimed_at >= dt.timedelta(seconds=17)
    # Several sweeps later: never re-submitted, whatever the gateway did with the call.
    time.sleep(1.5)
    assert send_requests(pipeline.sim) == 1
    ledger = pipeline.sim.ledger()
    assert len(ledger) in (0, 2)
    assert len({e["number"] for e in ledger}) == len(ledger)
    assert all(w.process.poll() is None for w in workers if w is not victim)


def test_wake_ups_already_waiting_serve_the_jobs_enqueued_after_them(
    pipeline: Pipeline, redis_index: int
) -> None:
    """A producer counts the wake-ups waiting in its lane's queue: a task started
    after a job's commit claims that job's batches too, so while one waits a
    one-batch job sends none, and a larger job only what it lacks up to the fan-out.
    Every job still goes out once, when a worker runs."""
    settings = pipeline.env.settings()
    app = make_celery(settings)
    waker = CeleryWaker(app)
    producer = Dispatcher(settings, database=pipeline.db, waker=waker)
    broker = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=redis_index)
    try:
        singles = [producer.enqueue(number(i), f"one of many, {i}").job_id for i in range(1, 21)]
        assert broker.llen(QUEUE_DISPATCH) == 1, "the first job's wake-up serves the other 19"
        three = producer.enqueue([number(100 + i) for i in range(250)], "three batches").job_id
        assert broker.llen(QUEUE_DISPATCH) == 3, "a three-batch job adds the two it lacks"

        # No sweeps during the test: the waiting wake-ups alone must serve every job.
        pipeline.start_workers(DISPATCHER_SWEEP_INTERVAL_S="600")
        pipeline.wait_for(*singles, three, timeout_s=60)
    finally:
        broker.close()
        producer.close()
        waker.close()
        app.close()

    for job_id in singles:
        assert [r.status for r in recipients_of(pipeline.db, job_id)] == ["sent"]
    assert {r.status for r in recipients_of(pipeline.db, three)} == {"sent"}
    assert send_requests(pipeline.sim) == 20 + 3, "one call per batch, none twice"
    pipeline.check_invariants()
