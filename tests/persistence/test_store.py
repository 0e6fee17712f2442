"""The service's database steps, on PostgreSQL and on SQLite: claim, record, sweep.

No worker process here: the test drives ``Dispatcher.claim``, ``submit``, ``record``
and ``sweep`` itself, with a real gateway client talking to the simulator over HTTP,
and reads the results from a second connection.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text, update
from sqlalchemy.engine import make_url

from dispatcher.domain.statuses import AttemptOutcome, BatchStatus, RecipientStatus
from dispatcher.domain.times import utcnow
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Batch
from dispatcher.persistence.store import enqueue as store_enqueue
from dispatcher.service import dispatcher as service_module
from dispatcher.service.dispatcher import Claim, Dispatcher
from support.numbers import number
from support.pipeline import check_invariants
from support.polling import wait_until
from support.reads import (
    attempts_of,
    batches_of,
    events_of,
    recipients_of,
    send_requests,
    statements_starting,
)
from support.services import pg_admin
from support.settings import BACKOFF_S, SUBMITTING_TIMEOUT_S, make_service

pytestmark = pytest.mark.usefixtures("clean_env")


def set_batch(database: Database, batch_id: int, **values: Any) -> None:
    with database.transaction() as session:
        session.execute(update(Batch).where(Batch.id == batch_id).values(**values))


def test_claim_is_compare_and_set(service: Dispatcher, simulator: GatewaySimulator) -> None:
    for round_no in range(6):
        result = service.enqueue(number(round_no), f"race {round_no}")
        barrier = threading.Barrier(2)

        def contender(name: str, barrier: threading.Barrier = barrier) -> Claim | None:
            barrier.wait(timeout=10)
            return service.claim(worker=name)

        with ThreadPoolExecutor(2) as pool:
            claims = list(pool.map(contender, ["left", "right"]))
        winners = [c for c in claims if c is not None]
        assert len(winners) == 1, f"round {round_no}: {claims}"
        [attempt] = attempts_of(service.db, result.job_id)
        assert attempt.id == winners[0].attempt_id
        [batch] = batches_of(service.db, result.job_id)
        assert (batch.status, batch.attempts) == (BatchStatus.SUBMITTING, 1)

        service.record(winners[0], service.submit(winners[0]))
    assert send_requests(simulator) == 6
    check_invariants(service.db, simulator)


def test_a_batch_not_yet_due_is_not_claimed(service: Dispatcher) -> None:
    result = service.enqueue(number(1), "later")
    [batch] = batches_of(service.db, result.job_id)

    set_batch(service.db, batch.id, due_at=utcnow() + dt.timedelta(seconds=60))
    assert service.claim(worker="early") is None
    assert [r.status for r in recipients_of(service.db, result.job_id)] == ["queued"]
    assert attempts_of(service.db, result.job_id) == []

    set_batch(service.db, batch.id, due_at=utcnow() - dt.timedelta(seconds=1))
    claim = service.claim(worker="on-time")
    assert claim is not None
    assert claim.batch_id == batch.id


def test_claim_commits_attempt_and_recipients_together(
    service: Dispatcher, observer: Database
) -> None:
    result = service.enqueue([number(1), number(2)], "one commit")
    before = {r.id: (r.stored_status, r.updated_at) for r in recipients_of(observer, result.job_id)}
    events_before = len(events_of(observer, result.job_id))
    commits: list[int] = []

    def on_commit(_connection: Any) -> None:
        commits.append(1)

    event.listen(service.db.engine, "commit", on_commit)
    try:
        claim = service.claim(worker="claimer")
    finally:
        event.remove(service.db.engine, "commit", on_commit)

    assert claim is not None
    assert len(commits) == 1  # the batch, its recipients and the attempt row, at once
    # Seen from another connection, right after claim() returned:
    [batch] = batches_of(observer, result.job_id)
    assert batch.status == BatchStatus.SUBMITTING
    assert batch.claimed_by == "claimer"
    assert batch.claimed_at is not None
    [attempt] = attempts_of(observer, result.job_id)
    assert attempt.id == claim.attempt_id
    assert attempt.outcome == AttemptOutcome.IN_FLIGHT
    assert attempt.numbers == f"{number(1)},{number(2)}"
    assert attempt.worker == "claimer"
    assert attempt.finished_at is None
    assert attempt.request is not None
    assert service.settings.gateway_password is not None
    assert service.settings.gateway_password.get_secret_value() not in attempt.request
    rows = recipients_of(observer, result.job_id)
    # Recorded per submission (docs/design.md section 3): the recipients read as
    # submitting through their batch, the attempt row lists them with the status
    # each had, and no recipient row or status event was written for the claim.
    assert [r.status for r in rows] == ["submitting", "submitting"]
    assert {r.id: (r.stored_status, r.updated_at) for r in rows} == before
    assert len(events_of(observer, result.job_id)) == events_before
    assert json.loads(attempt.claimed or "") == [[r.id, "queued"] for r in rows]


def test_sweep_marks_a_stale_batch_unknown_and_never_requeues_it(
    service: Dispatcher, simulator: GatewaySimulator, observer: Database
) -> None:
    stale_job = service.enqueue([number(1), number(2)], "worker died")
    live_job = service.enqueue(number(3), "worker alive")
    stale = service.claim(worker="dead-worker")
    live = service.claim(worker="live-worker")
    assert stale is not None
    assert live is not None
    assert stale.job_id == stale_job.job_id
    old = utcnow() - dt.timedelta(seconds=SUBMITTING_TIMEOUT_S + 5)
    set_batch(service.db, stale.batch_id, claimed_at=old)

    swept = service.sweep()

    assert swept["abandoned_recipients"] == 2
    rows = recipients_of(observer, stale_job.job_id)
    # The call the worker died in counts: it may have reached the gateway.
    assert [(r.status, r.error_code, r.attempts) for r in rows] == [
        ("unknown", "WORKER_LOST", 1),
        ("unknown", "WORKER_LOST", 1),
    ]
    assert all(r.error_detail and "may have sent it" in r.error_detail for r in rows)
    [attempt] = attempts_of(observer, stale_job.job_id)
    assert attempt.outcome == AttemptOutcome.ABANDONED
    assert attempt.finished_at is not None
    [batch] = batches_of(observer, stale_job.job_id)
    assert batch.status == BatchStatus.DONE
    last = [e for e in events_of(observer, stale_job.job_id) if e.to_status == "unknown"]
    assert [(e.from_status, e.actor, e.attempt_id) for e in last] == [
        ("submitting", "sweeper", attempt.id)
    ] * 2

    # The batch still within its timeout is left alone.
    [live_batch] = batches_of(observer, live_job.job_id)
    assert live_batch.status == BatchStatus.SUBMITTING
    [live_attempt] = attempts_of(observer, live_job.job_id)
    assert live_attempt.outcome == AttemptOutcome.IN_FLIGHT

    # Never re-queued: another sweep and a dispatch find nothing, and nothing is sent.
    assert service.sweep()["abandoned_recipients"] == 0
    assert service.claim(worker="another") is None
    assert send_requests(simulator) == 0

    service.record(live, service.submit(live))
    assert [r.status for r in recipients_of(observer, live_job.job_id)] == ["sent"]
    assert [r.status for r in recipients_of(observer, stale_job.job_id)] == ["unknown"] * 2
    check_invariants(service.db, simulator)


def test_a_reply_recorded_after_the_sweep_replaces_its_worker_lost_guess(
    service: Dispatcher, simulator: GatewaySimulator, observer: Database
) -> None:
    # The database was away past the submitting timeout: the sweeper guessed
    # `unknown`, then the reply could be written after all.
    result = service.enqueue([number(1), number(2)], "late reply")
    claim = service.claim(worker="slow-writer")
    assert claim is not None
    submission = service.submit(claim)
    old = utcnow() - dt.timedelta(seconds=SUBMITTING_TIMEOUT_S + 5)
    set_batch(service.db, claim.batch_id, claimed_at=old)
    assert service.sweep()["abandoned_recipients"] == 2

    service.record(claim, submission, worker="slow-writer")

    rows = recipients_of(observer, result.job_id)
    assert [(r.status, r.attempts) for r in rows] == [("sent", 1), ("sent", 1)]
    assert all(r.gateway_message_id for r in rows)
    history = [(e.from_status, e.to_status) for e in events_of(observer, result.job_id)]
    assert history.count((RecipientStatus.UNKNOWN, RecipientStatus.SENT)) == 2
    assert ("submitting", "sent") not in history
    [batch] = batches_of(observer, result.job_id)
    assert batch.status == BatchStatus.DONE
    assert send_requests(simulator) == 1


@pytest.mark.services
def test_a_batch_costs_two_statements_and_two_commits_on_postgresql(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    # Structure, not speed: the claim (control row, batch, job, recipients, the
    # in-flight attempt row) and the reply are one statement each. Replies written
    # one per transaction here; tests/service/test_completer.py shares them.
    service = make_service(pg_db, simulator, tmp_path, reply_batch_size=1)
    try:
        service.enqueue([number(i) for i in range(150)], "counted")
        service.control()  # the control row, which emptying the tables removed
        statements: list[str] = []
        commits: list[object] = []
        event.listen(
            pg_db.engine,
            "before_cursor_execute",
            lambda _c, _cur, statement, *_: statements.append(statement),
        )
        event.listen(pg_db.engine, "commit", commits.append)

        report = service.dispatch_due(worker="counted")

        assert report.batches == 2
        # Two batches of two; the second claim said nothing else was due, so no
        # empty claim ends the run.
        assert len(statements) == 2 * 2
        assert len(commits) == 2 * 2
        check_invariants(service.db, simulator)
    finally:
        service.close()


def test_record_of_a_transient_outcome_schedules_the_retry(
    service: Dispatcher, simulator: GatewaySimulator, observer: Database
) -> None:
    simulator.configure(transient_error_rate=1.0, transient_code="GATEWAY_ERROR")
    result = service.enqueue([number(1), number(2)], "try again")
    claim = service.claim(worker="w")
    assert claim is not None
    submission = service.submit(claim)
    before = utcnow()

    service.record(claim, submission, worker="w")

    after = utcnow()
    rows = recipients_of(observer, result.job_id)
    assert [(r.status, r.error_code, r.attempts) for r in rows] == [
        ("retry_wait", "GATEWAY_ERROR", 1),
        ("retry_wait", "GATEWAY_ERROR", 1),
    ]
    retry_at = {r.next_attempt_at for r in rows}
    assert len(retry_at) == 1
    [next_at] = retry_at
    assert next_at is not None
    # Attempt 1 of 3: backoff in [base/2, base].
    assert before + dt.timedelta(seconds=BACKOFF_S / 2) <= next_at
    assert next_at <= after + dt.timedelta(seconds=BACKOFF_S)
    [batch] = batches_of(observer, result.job_id)
    assert (batch.status, batch.due_at, batch.claimed_at) == (BatchStatus.QUEUED, next_at, None)
    [attempt] = attempts_of(observer, result.job_id)
    assert attempt.outcome == AttemptOutcome.TRANSIENT
    assert attempt.raw_reply == "ERR:GATEWAY_ERROR"
    assert attempt.http_status == 200
    assert attempt.finished_at is not None

    # The database is the schedule: not claimable until due_at.
    assert service.claim(worker="w") is None
    simulator.configure(transient_error_rate=0.0)
    set_batch(service.db, batch.id, due_at=utcnow())
    retry = service.claim(worker="w")
    assert retry is not None
    assert retry.attempt_no == 2
    service.record(retry, service.submit(retry), worker="w")
    assert [(r.status, r.attempts) for r in recipients_of(observer, result.job_id)] == [
        ("sent", 2),
        ("sent", 2),
    ]
    check_invariants(service.db, simulator)


@pytest.mark.parametrize(
    ("knobs", "code"),
    [
        ({"hang_rate": 1.0, "hang_s": 3.0}, "NO_REPLY"),
        ({"drop_after_accept_rate": 1.0}, "NO_REPLY"),
        ({"garbage_rate": 1.0}, "UNREADABLE_REPLY"),
        ({"http_error_rate": 1.0, "http_error_status": 500}, "HTTP_500"),
    ],
    ids=["read-timeout", "dropped", "garbage", "http-500"],
)
def test_an_ambiguous_reply_is_unknown_and_never_resubmitted(
    service: Dispatcher,
    simulator: GatewaySimulator,
    observer: Database,
    knobs: dict[str, Any],
    code: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A write that keeps failing gives up within seconds here, not after 5 minutes.
    monkeypatch.setattr(service_module, "RECORD_RETRY_BUDGET_S", 3.0)
    simulator.configure(**knobs)
    result = service.enqueue([number(1), number(2)], "maybe sent")
    claim = service.claim(worker="w")
    assert claim is not None

    service.record(claim, service.submit(claim), worker="w")

    rows = recipients_of(observer, result.job_id)
    assert [(r.status, r.error_code, r.attempts) for r in rows] == [("unknown", code, 1)] * 2
    assert all(r.next_attempt_at is None for r in rows)
    [attempt] = attempts_of(observer, result.job_id)
    assert attempt.outcome == AttemptOutcome.AMBIGUOUS
    [batch] = batches_of(observer, result.job_id)
    assert batch.status == BatchStatus.DONE
    simulator.configure(**{k: 0.0 for k in knobs if k.endswith("_rate")})
    assert service.claim(worker="w") is None
    assert service.sweep()["abandoned_recipients"] == 0
    assert service.claim(worker="w") is None
    assert send_requests(simulator) == 1


def test_a_reply_cut_short_records_the_ids_that_arrived_and_never_resubmits(
    service: Dispatcher,
    simulator: GatewaySimulator,
    observer: Database,
) -> None:
    # Half the reply arrives (its first line whole), then the connection closes.
    simulator.configure(truncate_rate=1.0)
    result = service.enqueue([number(1), number(2)], "half a reply")
    claim = service.claim(worker="w")
    assert claim is not None

    service.record(claim, service.submit(claim), worker="w")

    [first, _second] = simulator.ledger()
    rows = recipients_of(observer, result.job_id)
    assert [(r.status, r.gateway_message_id, r.error_code, r.attempts) for r in rows] == [
        ("sent", first["message_id"], None, 1),
        ("unknown", None, "UNREADABLE_REPLY", 1),
    ]
    [attempt] = attempts_of(observer, result.job_id)
    assert attempt.outcome == AttemptOutcome.PARTIAL
    assert attempt.error is not None
    assert "incomplete reply" in attempt.error
    simulator.configure(truncate_rate=0.0)
    assert service.claim(worker="w") is None
    assert service.sweep()["abandoned_recipients"] == 0
    assert send_requests(simulator) == 1


def test_no_credit_pauses_fails_nobody_and_resumes_on_credit(
    service: Dispatcher, simulator: GatewaySimulator, observer: Database
) -> None:
    simulator.configure(credit=0)
    result = service.enqueue([number(1), number(2)], "no credit")
    claim = service.claim(worker="w")
    assert claim is not None

    service.record(claim, service.submit(claim), worker="w")

    rows = recipients_of(observer, result.job_id)
    assert [(r.status, r.error_code, r.attempts) for r in rows] == [
        ("queued", "INSUFFICIENT_CREDIT", 0)
    ] * 2
    [batch] = batches_of(observer, result.job_id)
    assert batch.status == BatchStatus.QUEUED
    control = service.control()
    assert (control["paused"], control["pause_reason"]) == (True, "no_credit")
    # Due, but dispatch is paused: the work waits, visibly.
    assert batch.due_at <= utcnow()
    assert service.claim(worker="w") is None

    # A balance check above the threshold (by the sweeper) resumes dispatch.
    simulator.configure(credit=10_000)
    service.sweep()
    assert service.control()["paused"] is False
    retry = service.claim(worker="w")
    assert retry is not None
    service.record(retry, service.submit(retry), worker="w")
    assert [(r.status, r.attempts) for r in recipients_of(observer, result.job_id)] == [
        ("sent", 1),
        ("sent", 1),
    ]
    check_invariants(service.db, simulator)


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_record_retries_until_the_database_is_back(
    service: Dispatcher,
    simulator: GatewaySimulator,
    database: Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real outage: the database refuses connections while the reply is recorded.

    SQLite has no honest equivalent (a locked file waits out its busy timeout), so
    this runs on PostgreSQL only.
    """
    caplog.set_level("WARNING", logger="dispatcher.service")
    result = service.enqueue(number(1), "outage")
    claim = service.claim(worker="w")
    assert claim is not None
    submission = service.submit(claim)
    [entry] = simulator.ledger()
    name = make_url(database.url).database
    assert name

    with pg_admin() as admin:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            with ThreadPoolExecutor(1) as pool:
                recording = pool.submit(service.record, claim, submission, worker="w")
                wait_until(
                    lambda: any(
                        "database unavailable recording attempt" in r.getMessage()
                        for r in caplog.records
                    ),
                    20,
                    message="record() to meet the outage",
                )
                assert not recording.done()
                admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
                recording.result(timeout=30)
        finally:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')

    [recipient] = recipients_of(service.db, result.job_id)
    assert (recipient.status, recipient.gateway_message_id) == ("sent", entry["message_id"])
    [attempt] = attempts_of(service.db, result.job_id)
    assert attempt.outcome == AttemptOutcome.ACCEPTED
    # Meanwhile the reply was logged, so the gateway ID could not be lost, and no secret.
    warning = next(
        r.getMessage() for r in caplog.records if "database unavailable" in r.getMessage()
    )
    assert entry["message_id"] in warning
    assert simulator.config().password not in caplog.text
    check_invariants(service.db, simulator)


@pytest.mark.services
def test_a_small_job_in_one_statement_writes_what_the_separate_inserts_write(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a job of one batch and few numbers goes in by one statement
    (``store.insert_small_job``); its rows must be the general path's, field for field."""
    # No DNS in tests: the callback's host is not looked up when private ones are allowed.
    svc = make_service(
        pg_db,
        simulator,
        tmp_path,
        default_sender="Shop",
        webhook_secret="s" * 32,
        webhook_allow_private=True,
    )
    numbers = [number(1), "not a number", number(2), number(1), "12", number(3)]
    options: dict[str, Any] = {
        "priority": "high",
        "valid_for_s": 600,
        "reference": "order-77",
        "maxconcat": 2,
        "send_at": utcnow() + dt.timedelta(hours=2),
        "callback_url": "https://example.com/hook",
    }
    try:
        with statements_starting(pg_db, "WITH job AS") as one_statement:
            small = svc.enqueue(numbers, "Ünïcode text", idempotency_key="k1", **options)
            assert len(one_statement) == 1, "the small job went in by one statement"
            monkeypatch.setattr(store_enqueue, "SMALL_JOB_MAX_ROWS", 0)
            general = svc.enqueue(numbers, "Ünïcode text", idempotency_key="k2", **options)
            assert len(one_statement) == 1, "and the other by the separate inserts"
    finally:
        svc.close()
    assert small.accepted == general.accepted
    assert small.refused == general.refused
    assert len(small.refused) == 2

    def rows(job_id: str) -> dict[str, list[dict[str, Any]]]:
        # Everything but the keys and clocks, which differ between two jobs.
        # Times are compared as offsets: stamps from the job's creation, the
        # schedule (due, expiry) from the send time both jobs were given.
        varying = {"id", "job_id", "batch_id", "recipient_id", "idempotency_key"}
        varying |= {"request_hash", "created_at"}
        found: dict[str, list[dict[str, Any]]] = {}
        with pg_db.transaction() as session:
            created = session.execute(
                text("SELECT created_at FROM jobs WHERE id = :job"), {"job": job_id}
            ).scalar_one()
            base = {"updated_at": created, "at": created, "due_at": options["send_at"]}
            base |= {"expires_at": options["send_at"], "send_at": options["send_at"]}
            for table in ("jobs", "batches", "recipients", "status_events"):
                key = "id" if table == "jobs" else "job_id"
                result = session.execute(
                    text(f"SELECT * FROM {table} WHERE {key} = :job ORDER BY id"),  # noqa: S608
                    {"job": job_id},
                )
                found[table] = [
                    {
                        k: (v - base[k] if k in base and v is not None else v)
                        for k, v in row._mapping.items()
                        if k not in varying
                    }
                    for row in result
                ]
        return found

    mine, theirs = rows(small.job_id), rows(general.job_id)
    assert mine == theirs
    assert mine["jobs"][0]["callback_state"] == "waiting"
    assert mine["batches"][0]["due_at"] == dt.timedelta(0), "due at the send time"
    assert mine["jobs"][0]["expires_at"] == dt.timedelta(seconds=600)
    assert [r["status"] for r in mine["recipients"]] == ["queued"] * 3 + ["failed"] * 2
    # Only the refused have a first event written; the accepted ones' is their row.
    assert [e["to_status"] for e in mine["status_events"]] == ["failed"] * 2
    assert len(mine["batches"]) == 1


@pytest.mark.services
def test_a_task_that_claims_the_last_due_batch_stops_without_an_empty_claim(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    """The claim says whether anything else was due; a dispatch run ends after the
    last due batch instead of claiming once more to find nothing."""
    svc = make_service(pg_db, simulator, tmp_path)
    try:
        with statements_starting(pg_db, "WITH ctl AS") as claims:
            jobs = [svc.enqueue(number(i), f"code {i}").job_id for i in range(1, 3)]
            jobs.append(svc.enqueue(number(3), "urgent", priority="high").job_id)
            report = svc.dispatch_due(worker="w")
            assert report.batches == 3
            assert len(claims) == 3, "three batches in two lanes, three claims, no empty fourth"

            claims.clear()
            assert svc.dispatch_due(worker="w").batches == 0
            assert len(claims) == 1, "with nothing due, one claim finds that out"
    finally:
        svc.close()
    for job_id in jobs:
        assert [r.status for r in recipients_of(pg_db, job_id)] == ["sent"]
    assert send_requests(simulator) == 3
