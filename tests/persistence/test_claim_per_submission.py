"""The claim recorded per submission (docs/design.md section 3), on SQLite and PostgreSQL.

A claim writes its batch (``queued`` to ``submitting``) and one attempt row listing
the recipients it carries with the status each had (``Attempt.claimed``); no
recipient row is written. So these are checked here, around a batch in flight:

- a change from a waiting status (cancel, the retry-age limit) takes the batch's
  side: it leaves the recipients of a batch in flight alone and never settles that
  batch, even when it read them before the claim (``transitions.BatchSide``);
- a reply moves only the recipients its own attempt still holds (``record_guard``,
  and ``_RECORD_REPLY``'s ``held`` on PostgreSQL);
- the history readers (the audit export, the dashboard's job page) show each claim
  from its attempt's row, where the status event used to be;
- on PostgreSQL, a claim and a cancel racing on one batch serialise on its row.

No worker process: the tests drive ``Dispatcher.claim``, ``submit`` and ``record``
themselves, as ``test_store.py`` does, and read the results from a second connection.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.engine import make_url

from dispatcher.domain.statuses import (
    WAITING_STATUSES,
    AttemptOutcome,
    BatchStatus,
    RecipientStatus,
)
from dispatcher.domain.times import utcnow
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence import store
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Batch, Recipient
from dispatcher.persistence.reads.dashboard import job_page
from dispatcher.service.audit import export_csv
from dispatcher.service.dispatcher import Claim, Dispatcher
from support.numbers import number
from support.pipeline import check_invariants
from support.polling import wait_until
from support.reads import attempts_of, batches_of, claims_of, events_of, recipients_of
from support.services import pg_admin
from support.settings import make_service

pytestmark = pytest.mark.usefixtures("clean_env")

Pairs = list[tuple[str, str]]

SENT_AT_ONCE: Pairs = [("", "queued"), ("queued", "submitting"), ("submitting", "sent")]
"""A recipient's whole story, its claim shown from the attempt's row."""


def set_batch(database: Database, batch_id: int, **values: Any) -> None:
    with database.transaction() as session:
        session.execute(update(Batch).where(Batch.id == batch_id).values(**values))


def batch_state(database: Database, batch_id: int) -> tuple[Any, ...]:
    """Everything a settle or a claim writes on a batch."""
    [batch] = [b for b in batches_of(database) if b.id == batch_id]
    return (
        batch.status,
        batch.attempts,
        batch.claimed_at,
        batch.claimed_by,
        batch.due_at,
        batch.updated_at,
    )


def shown_and_stored(database: Database, job_id: str) -> list[tuple[str, str]]:
    """(shown status, stored status) of a job's recipients, in insertion order."""
    return [(r.status, r.stored_status) for r in recipients_of(database, job_id)]


def event_ids(database: Database, *job_ids: str) -> list[int]:
    return sorted(e.id for job_id in job_ids for e in events_of(database, job_id))


def claim_one(service: Dispatcher, worker: str) -> Claim:
    claim = service.claim(worker=worker)
    assert claim is not None, "a batch was due"
    return claim


def exported(database: Database, **selection: Any) -> list[dict[str, str]]:
    """The audit export's event rows (``export_csv``) as dicts."""
    selection.setdefault("since", None)
    selection.setdefault("until", None)
    return list(csv.DictReader(io.StringIO("".join(export_csv(database, **selection)))))


def story(rows: list[dict[str, str]], recipient_id: int) -> Pairs:
    """One recipient's (from, to) statuses among export rows, in the rows' order."""
    return [
        (r["from_status"], r["to_status"]) for r in rows if r["recipient_id"] == str(recipient_id)
    ]


def claim_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The export rows that stand for a claim: read from an attempt, no event id."""
    return [r for r in rows if r["to_status"] == "submitting" and not r["event_id"]]


# --- cancel ---------------------------------------------------------------------------


def test_cancel_leaves_a_batch_in_flight_alone_and_its_reply_sends_them(
    service: Dispatcher, simulator: GatewaySimulator, observer: Database
) -> None:
    # 101 numbers, two batches: one claimed, one still waiting.
    job = service.enqueue([number(i) for i in range(1, 102)], "cancel mid-flight").job_id
    claim = claim_one(service, "w")
    flying = {r.id for r in claim.recipients}
    assert len(flying) == 100
    [idle_batch] = [b.id for b in batches_of(observer, job) if b.id != claim.batch_id]
    held = batch_state(observer, claim.batch_id)
    events_before = event_ids(observer, job)

    result = service.cancel(job, actor="op")

    # Only the recipient no worker holds is cancelled; its batch, emptied, is done.
    assert result.affected == 1
    rows = {r.id: r for r in recipients_of(observer, job)}
    assert {(rows[rid].status, rows[rid].stored_status) for rid in flying} == {
        ("submitting", "queued")
    }
    [idle] = [r for rid, r in rows.items() if rid not in flying]
    assert (idle.status, idle.batch_id) == ("cancelled", idle_batch)
    assert batch_state(observer, claim.batch_id) == held
    assert [b.status for b in batches_of(observer, job) if b.id == idle_batch] == ["done"]
    new = [e for e in events_of(observer, job) if e.id not in events_before]
    assert [(e.recipient_id, e.from_status, e.to_status) for e in new] == [
        (idle.id, "queued", "cancelled")
    ]

    service.record(claim, service.submit(claim), worker="w")

    rows = {r.id: r for r in recipients_of(observer, job)}
    assert {rows[rid].status for rid in flying} == {"sent"}
    assert all(rows[rid].gateway_message_id for rid in flying)
    assert rows[idle.id].status == "cancelled"
    check_invariants(service.db, simulator)


def test_a_cancel_that_read_its_recipients_before_the_claim_cancels_none_in_flight(
    service: Dispatcher,
    simulator: GatewaySimulator,
    observer: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The race, made deterministic: the cancel selected the recipients while they
    # were waiting, and the claim committed before the cancel changed them.
    job = service.enqueue([number(1), number(2)], "read too early").job_id
    with service.db.transaction() as session:
        read_early = store.select_recipients(
            session,
            selection=store.RecipientFilter(job_id=job, statuses=["queued", "retry_wait"]),
        )
    assert len(read_early) == 2
    claim = claim_one(service, "w")
    held = batch_state(observer, claim.batch_id)
    events_before = event_ids(observer, job)
    monkeypatch.setattr(store, "select_recipients", lambda _session, *, selection: read_early)

    assert service.cancel(job, actor="op").affected == 0

    assert shown_and_stored(observer, job) == [("submitting", "queued")] * 2
    assert batch_state(observer, claim.batch_id) == held
    assert event_ids(observer, job) == events_before

    service.record(claim, service.submit(claim), worker="w")

    assert [r.status for r in recipients_of(observer, job)] == ["sent", "sent"]
    check_invariants(service.db, simulator)


# --- the retry-age limit ----------------------------------------------------------------


def _old_retry_due(service: Dispatcher, simulator: GatewaySimulator) -> tuple[str, int]:
    """A job whose first number waits to retry, past DISPATCHER_MAX_RETRY_AGE_S, in a
    batch due now (the second number was sent); returns (job id, its recipient id)."""
    simulator.configure(number_rules={number(1): "GATEWAY_ERROR"})
    job = service.enqueue([number(1), number(2)], "an old retry").job_id
    first = claim_one(service, "w")
    service.record(first, service.submit(first), worker="w")
    simulator.configure(number_rules={})
    waiting, sent = recipients_of(service.db, job)
    assert (waiting.status, sent.status) == ("retry_wait", "sent")
    long_ago = utcnow() - dt.timedelta(seconds=3 * service.settings.max_retry_age_s)
    with service.db.transaction() as session:
        session.execute(
            update(Recipient).where(Recipient.job_id == job).values(created_at=long_ago)
        )
    set_batch(service.db, first.batch_id, due_at=utcnow())
    return job, waiting.id


def _overdue_now(service: Dispatcher) -> list[int]:
    cutoff = utcnow() - dt.timedelta(seconds=service.settings.max_retry_age_s)
    with service.db.transaction() as session:
        return store.overdue_retries(session, created_before=cutoff)


def _retry_in_flight(
    service: Dispatcher,
    simulator: GatewaySimulator,
    observer: Database,
    job: str,
    waiting: int,
    claim: Claim,
) -> None:
    """Sweep while ``claim`` carries ``waiting``, then record its reply."""
    assert [(r.id, r.status) for r in claim.recipients] == [(waiting, "retry_wait")]
    held = batch_state(observer, claim.batch_id)
    events_before = event_ids(observer, job)

    assert service.sweep()["overdue_failed"] == 0

    [recipient, _sent] = recipients_of(observer, job)
    assert (recipient.status, recipient.stored_status, recipient.error_code) == (
        "submitting",
        "retry_wait",
        "GATEWAY_ERROR",
    )
    # The batch keeps its claim: still submitting, claimed_at and all as the claim wrote.
    assert batch_state(observer, claim.batch_id) == held
    assert event_ids(observer, job) == events_before

    service.record(claim, service.submit(claim), worker="w")

    [recipient, _sent] = recipients_of(observer, job)
    assert (recipient.status, recipient.attempts) == ("sent", 2)
    check_invariants(service.db, simulator)


def test_the_retry_age_sweep_leaves_a_retry_in_flight_and_its_batch_alone(
    service: Dispatcher, simulator: GatewaySimulator, observer: Database
) -> None:
    job, waiting = _old_retry_due(service, simulator)
    claim = claim_one(service, "w2")
    _retry_in_flight(service, simulator, observer, job, waiting, claim)


def test_a_retry_age_sweep_that_read_its_recipients_before_the_claim_fails_none_in_flight(
    service: Dispatcher,
    simulator: GatewaySimulator,
    observer: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The sweep found the recipient overdue while it waited; the claim committed
    # before the sweep changed it.
    job, waiting = _old_retry_due(service, simulator)
    read_early = _overdue_now(service)
    assert read_early == [waiting]
    claim = claim_one(service, "w2")
    monkeypatch.setattr(store, "overdue_retries", lambda _session, **_options: read_early)
    _retry_in_flight(service, simulator, observer, job, waiting, claim)


# --- the reply's guard --------------------------------------------------------------------


@pytest.mark.parametrize(
    "taken",
    [{"attempts": 2}, {"status": BatchStatus.QUEUED, "claimed_at": None}],
    ids=["claimed-by-another-attempt", "requeued"],
)
def test_a_reply_for_a_batch_its_attempt_no_longer_holds_moves_no_recipient(
    service: Dispatcher, observer: Database, taken: dict[str, Any]
) -> None:
    job = service.enqueue([number(1), number(2)], "a stale reply").job_id
    claim = claim_one(service, "w")
    submission = service.submit(claim)
    set_batch(service.db, claim.batch_id, **taken)
    events_before = event_ids(observer, job)

    service.record(claim, submission, worker="w")

    rows = recipients_of(observer, job)
    assert [(r.stored_status, r.gateway_message_id, r.attempts, r.error_code) for r in rows] == [
        ("queued", None, 0, None)
    ] * 2
    assert event_ids(observer, job) == events_before
    # The reply stays on its attempt's row.
    [attempt] = attempts_of(observer, job)
    assert attempt.outcome == AttemptOutcome.ACCEPTED


def test_a_stale_reply_leaves_the_batch_another_attempt_holds_in_flight(
    service: Dispatcher, simulator: GatewaySimulator, observer: Database
) -> None:
    """A record retried after a commit that went through unacknowledged writes its
    reply again; by then the batch may be retrying under the next attempt. Left
    requeued, that batch is claimed a third time while attempt 2's call is out, and
    attempt 2's accepted reply is refused: the numbers are sent twice."""
    simulator.configure(transient_error_rate=1.0, transient_code="GATEWAY_ERROR")
    job = service.enqueue([number(1), number(2)], "recorded twice").job_id
    first = claim_one(service, "w1")
    first_reply = service.submit(first)
    service.record(first, first_reply, worker="w1")
    simulator.configure(transient_error_rate=0.0)
    set_batch(service.db, first.batch_id, due_at=utcnow())
    second = claim_one(service, "w2")
    assert second.attempt_no == 2
    held = batch_state(observer, second.batch_id)
    events_before = event_ids(observer, job)

    # Attempt 1's reply written again, as a record retried after a lost commit does.
    service.record(first, first_reply, worker="w1")

    assert event_ids(observer, job) == events_before, "no recipient moved"
    assert shown_and_stored(observer, job) == [("submitting", "retry_wait")] * 2
    assert batch_state(observer, second.batch_id) == held

    service.record(second, service.submit(second), worker="w2")

    assert [r.status for r in recipients_of(observer, job)] == ["sent", "sent"]
    check_invariants(service.db, simulator)


# --- the audit export ------------------------------------------------------------------


def test_the_export_by_number_shows_the_claim_in_flight_then_before_the_reply(
    service: Dispatcher, observer: Database
) -> None:
    job = service.enqueue([number(1), number(2)], "audited").job_id
    claim = claim_one(service, "auditing-worker")
    [attempt] = attempts_of(observer, job)
    [mine, _other] = recipients_of(observer, job)

    rows = exported(service.db, number="+" + number(1))

    assert story(rows, mine.id) == [("", "queued"), ("queued", "submitting")]
    assert len(rows) == 2, "only that number's rows"
    claimed = rows[-1]
    assert claimed["cause"] == "attempt 1 claimed"
    assert claimed["actor"] == "auditing-worker"
    assert (claimed["attempt_id"], claimed["attempt_no"]) == (str(claim.attempt_id), "1")
    assert claimed["at"] == attempt.started_at.isoformat()
    assert (claimed["current_status"], claimed["event_id"]) == ("submitting", "")

    service.record(claim, service.submit(claim), worker="auditing-worker")

    rows = exported(service.db, number="+" + number(1))
    assert story(rows, mine.id) == SENT_AT_ONCE
    _queued, claimed, sent = rows
    assert claimed["at"] == attempt.started_at.isoformat()
    assert claimed["cause"] == "attempt 1 claimed"
    assert claimed["actor"] == sent["actor"] == "auditing-worker"
    assert claimed["attempt_id"] == sent["attempt_id"] == str(claim.attempt_id)
    assert claimed["event_id"] == ""
    assert sent["event_id"] != ""
    assert claimed["current_status"] == sent["current_status"] == "sent"


@pytest.fixture
def two_jobs(service: Dispatcher, simulator: GatewaySimulator) -> tuple[str, str]:
    """Job A: its first number retried once, then both sent (three claims in two
    attempts); job B: one number, claimed and still in flight."""
    simulator.configure(number_rules={number(1): "GATEWAY_ERROR"})
    retried = service.enqueue([number(1), number(2)], "retried once").job_id
    first = claim_one(service, "w1")
    service.record(first, service.submit(first), worker="w1")
    simulator.configure(number_rules={})
    set_batch(service.db, first.batch_id, due_at=utcnow())
    second = claim_one(service, "w2")
    service.record(second, service.submit(second), worker="w2")
    flying = service.enqueue(number(3), "in flight").job_id
    claim_one(service, "w3")
    return retried, flying


RETRIED: Pairs = [
    ("", "queued"),
    ("queued", "submitting"),
    ("submitting", "retry_wait"),
    ("retry_wait", "submitting"),
    ("submitting", "sent"),
]


def test_the_export_by_number_shows_each_claim_before_the_event_that_ended_it(
    service: Dispatcher, observer: Database, two_jobs: tuple[str, str]
) -> None:
    retried, _flying = two_jobs
    first, second = attempts_of(observer, retried)
    [mine, _other] = recipients_of(observer, retried)

    rows = exported(service.db, number="+" + number(1))

    assert story(rows, mine.id) == RETRIED
    assert len(rows) == len(RETRIED)
    claims = claim_rows(rows)
    assert [(r["attempt_id"], r["at"], r["actor"], r["cause"]) for r in claims] == [
        (str(first.id), first.started_at.isoformat(), "w1", "attempt 1 claimed"),
        (str(second.id), second.started_at.isoformat(), "w2", "attempt 2 claimed"),
    ]


@pytest.mark.parametrize("by", ["job", "range"])
def test_the_export_by_job_or_range_holds_each_claim_once_in_time_order(
    service: Dispatcher, observer: Database, two_jobs: tuple[str, str], by: str
) -> None:
    retried, flying = two_jobs
    jobs = [retried] if by == "job" else [retried, flying]
    selection: dict[str, Any] = (
        {"job_id": retried} if by == "job" else {"since": utcnow() - dt.timedelta(hours=1)}
    )

    rows = exported(service.db, **selection)

    stamps = [dt.datetime.fromisoformat(r["at"]) for r in rows]
    assert stamps == sorted(stamps)
    claims = [
        (int(r["attempt_id"]), int(r["recipient_id"]), r["from_status"]) for r in claim_rows(rows)
    ]
    expected = [claim for job in jobs for claim in claims_of(observer, job)]
    assert len(expected) == 3 + (by == "range")
    assert sorted(claims) == sorted(expected)
    assert sorted(int(r["event_id"]) for r in rows if r["event_id"]) == event_ids(observer, *jobs)
    [mine, other] = recipients_of(observer, retried)
    assert story(rows, mine.id) == RETRIED
    assert story(rows, other.id) == SENT_AT_ONCE
    if by == "range":
        [in_flight] = recipients_of(observer, flying)
        assert story(rows, in_flight.id) == [("", "queued"), ("queued", "submitting")]


# --- the dashboard's job page ------------------------------------------------------------


def history(database: Database, job_id: str) -> dict[int, Pairs]:
    page = job_page(database, job_id)
    assert page is not None
    return {
        d.recipient.id: [(str(e.from_status or ""), str(e.to_status)) for e in d.events]
        for d in page.recipients.items
    }


def test_the_job_page_shows_each_claim_in_flight_and_after_its_reply(
    service: Dispatcher, simulator: GatewaySimulator, observer: Database
) -> None:
    simulator.configure(number_rules={number(1): "GATEWAY_ERROR"})
    job = service.enqueue([number(1), number(2)], "on the dashboard").job_id
    first = claim_one(service, "w1")
    [first_attempt] = attempts_of(observer, job)
    mine, other = (r.id for r in recipients_of(observer, job))

    page = job_page(observer, job)
    assert page is not None
    assert [a.id for a in page.attempts] == [first.attempt_id]
    for detail in page.recipients.items:
        assert [(e.from_status, e.to_status) for e in detail.events] == [
            (None, "queued"),
            ("queued", "submitting"),
        ]
        claimed = detail.events[-1]
        assert (claimed.at, claimed.attempt_id, claimed.cause, claimed.actor) == (
            first_attempt.started_at,
            first.attempt_id,
            "attempt 1 claimed",
            "w1",
        )
        assert detail.attempt_ids == [first.attempt_id]

    service.record(first, service.submit(first), worker="w1")
    simulator.configure(number_rules={})
    set_batch(service.db, first.batch_id, due_at=utcnow())
    second = claim_one(service, "w2")

    page = job_page(observer, job)
    assert page is not None
    assert {a.id for a in page.attempts} == {first.attempt_id, second.attempt_id}
    assert history(observer, job) == {
        mine: RETRIED[:4],
        other: SENT_AT_ONCE,
    }
    [detail] = [d for d in page.recipients.items if d.recipient.id == mine]
    assert detail.recipient.status == "submitting"
    assert detail.attempt_ids == [first.attempt_id, second.attempt_id]
    assert detail.events[-1].attempt_id == second.attempt_id

    service.record(second, service.submit(second), worker="w2")

    assert history(observer, job) == {
        mine: RETRIED,
        other: SENT_AT_ONCE,
    }
    page = job_page(observer, job)
    assert page is not None
    [detail] = [d for d in page.recipients.items if d.recipient.id == mine]
    second_attempt = attempts_of(observer, job)[1]
    claims = [e for e in detail.events if e.to_status == "submitting"]
    assert [(e.attempt_id, e.at, e.from_status) for e in claims] == [
        (first.attempt_id, first_attempt.started_at, "queued"),
        (second.attempt_id, second_attempt.started_at, "retry_wait"),
    ]
    check_invariants(service.db, simulator)


# --- PostgreSQL: a claim and a change from a waiting status, racing ---------------------


def _lock_waits(database: Database) -> int:
    """Backends of ``database`` waiting for a lock now."""
    with pg_admin() as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
            (make_url(database.url).database,),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.services
def test_a_cancel_waits_for_a_claim_in_progress_and_then_moves_nothing(
    pg_db: Database,
    simulator: GatewaySimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    svc = make_service(pg_db, simulator, tmp_path)
    try:
        svc.control()  # the control row: the claim takes PostgreSQL's one statement
        job = svc.enqueue([number(1), number(2)], "claimed meanwhile").job_id
        claimed, release = threading.Event(), threading.Event()
        claim_if_open = store.claim_if_open

        def claim_and_hold(*args: Any, **kwargs: Any) -> Any:
            # Inside the claim's transaction: the batch is claimed with its attempt
            # row (one statement), not committed.
            batch = claim_if_open(*args, **kwargs)
            claimed.set()
            assert release.wait(30)
            return batch

        monkeypatch.setattr(store, "claim_if_open", claim_and_hold)
        with ThreadPoolExecutor(2) as pool:
            try:
                claiming = pool.submit(svc.claim, worker="claimer")
                assert claimed.wait(10)
                cancelling = pool.submit(svc.cancel, job, actor="op")
                wait_until(lambda: _lock_waits(pg_db) > 0, 10, message="the cancel to wait")
                assert not cancelling.done()
            finally:
                release.set()
            claim = claiming.result(timeout=10)
            assert cancelling.result(timeout=10).affected == 0
        assert claim is not None

        assert shown_and_stored(pg_db, job) == [("submitting", "queued")] * 2
        [batch] = batches_of(pg_db, job)
        assert (batch.status, batch.attempts, batch.claimed_by) == ("submitting", 1, "claimer")
        assert batch.claimed_at is not None
        # Nothing written for the recipients: no cancel, and neither their creation
        # nor the claim is a status event (docs/design.md section 3).
        assert events_of(pg_db, job) == []

        svc.record(claim, svc.submit(claim), worker="claimer")
        assert [r.status for r in recipients_of(pg_db, job)] == ["sent", "sent"]
        check_invariants(pg_db, simulator)
    finally:
        svc.close()


@pytest.mark.services
def test_a_claim_skips_a_batch_a_cancel_holds_and_later_takes_what_it_left(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    svc = make_service(pg_db, simulator, tmp_path)
    try:
        svc.control()
        job = svc.enqueue([number(1), number(2)], "half cancelled").job_id
        cancelled, kept = (r.id for r in recipients_of(pg_db, job))
        locked, release = threading.Event(), threading.Event()

        def cancel_and_hold() -> int:
            # The step of a cancel that takes the batch's side (BatchSide "idle"):
            # the idle batch share-locked until this transaction ends.
            with pg_db.transaction() as session:
                moved = store.transition(
                    session,
                    ids=[cancelled],
                    from_statuses=WAITING_STATUSES,
                    to_status=RecipientStatus.CANCELLED,
                    at=utcnow(),
                    cause="cancelled by op",
                    actor="op",
                    values={"next_attempt_at": None},
                )
                locked.set()
                assert release.wait(30)
                return moved

        with ThreadPoolExecutor(2) as pool:
            try:
                cancelling = pool.submit(cancel_and_hold)
                assert locked.wait(10)
                claiming = pool.submit(svc.claim, worker="racer")
                # Nothing to claim: the batch is skipped (SKIP LOCKED), not waited for.
                assert claiming.result(timeout=10) is None
                assert not cancelling.done()
                [batch] = batches_of(pg_db, job)
                assert (batch.status, batch.attempts) == ("queued", 0)
            finally:
                release.set()
            assert cancelling.result(timeout=10) == 1

        claim = svc.claim(worker="after")
        assert claim is not None
        assert [r.id for r in claim.recipients] == [kept]
        svc.record(claim, svc.submit(claim), worker="after")
        assert [r.status for r in recipients_of(pg_db, job)] == ["cancelled", "sent"]
        check_invariants(pg_db, simulator)
    finally:
        svc.close()
