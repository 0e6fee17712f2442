"""Races and paths the claim recorded per submission opened (4645bdc..32b67fc), found
by review and fixed; each test failed before its fix.

- PostgreSQL: a reply racing the sweeper's abandon of its batch must still replace
  the WORKER_LOST guess (the reply locks and rereads its recipients);
- PostgreSQL: the one-statement claim reads the batch's recipients from its statement
  snapshot without locking them, so a change committed between the statement's start
  and its lock on the batch (a partial cancel, an erasure) must make it claim again;
- two changes from a waiting status on one batch must queue up, not deadlock;
- the careful (salvage) path that leaves its batch ``submitting``: recipients whose
  outcome it did record must not be turned into ``unknown`` by the sweeper;
- the events export by number, cut by time, cuts each claim by its own time.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text, update
from sqlalchemy.engine import make_url

from dispatcher.domain.statuses import BatchStatus
from dispatcher.domain.times import utcnow
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence import store
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Batch
from dispatcher.persistence.store import claims as claims_module
from dispatcher.persistence.store import transitions as transitions_module
from dispatcher.service.audit import export_csv
from dispatcher.service.dispatcher import Dispatcher
from dispatcher.service.privacy import erase
from support.numbers import number
from support.polling import wait_until
from support.reads import attempts_of, batches_of, recipients_of
from support.reply_shapes import reply_submission
from support.services import pg_admin
from support.settings import SUBMITTING_TIMEOUT_S, make_service
from support.triggers import refusing

pytestmark = pytest.mark.usefixtures("clean_env")


def _backends(database: Database, condition: str) -> int:
    with pg_admin() as admin:
        row = admin.execute(
            f"SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND {condition}",  # noqa: S608
            (make_url(database.url).database,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _set_claimed_at(database: Database, batch_id: int, age_s: float) -> None:
    with database.transaction() as session:
        session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(claimed_at=utcnow() - dt.timedelta(seconds=age_s))
        )


# --- 1. a reply racing the sweeper's abandon --------------------------------------------


@pytest.mark.services
def test_a_reply_that_waited_for_the_sweepers_abandon_still_replaces_its_guess(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    svc = make_service(pg_db, simulator, tmp_path)
    try:
        svc.control()
        job = svc.enqueue([number(1), number(2)], "late reply, racing").job_id
        claim = svc.claim(worker="slow")
        assert claim is not None
        submission = svc.submit(claim)  # accepted: the gateway sent both
        # The worker's database was away past the submitting timeout (the record
        # retries for 300 s, the timeout is 120 s): the sweeper now closes the batch
        # just as the worker's record gets through.
        _set_claimed_at(pg_db, claim.batch_id, SUBMITTING_TIMEOUT_S + 5)
        abandoning, release = threading.Event(), threading.Event()

        def sweep_and_hold() -> int:
            with pg_db.transaction() as session:
                now = utcnow()
                older = now - dt.timedelta(seconds=SUBMITTING_TIMEOUT_S)
                moved = 0
                for batch_id in store.stale_submitting_batches(session, older_than=older):
                    moved += store.abandon_batch(
                        session, batch_id=batch_id, now=now, cause="worker lost (test)"
                    )
                abandoning.set()
                assert release.wait(30)
                return moved

        with ThreadPoolExecutor(2) as pool:
            try:
                sweeping = pool.submit(sweep_and_hold)
                assert abandoning.wait(10)
                recording = pool.submit(svc.record, claim, submission, worker="slow")
                wait_until(
                    lambda: _backends(pg_db, "wait_event_type = 'Lock'") > 0,
                    10,
                    message="the reply to wait for the sweeper",
                )
            finally:
                release.set()
            assert sweeping.result(timeout=10) == 2
            recording.result(timeout=30)

        rows = recipients_of(pg_db, job)
        # As when the reply comes after the sweeper committed (test_replies.py's
        # test_a_late_reply_replaces_the_sweepers_guess_without_counting_twice).
        assert [(r.status, r.attempts) for r in rows] == [("sent", 1)] * 2
        assert all(r.gateway_message_id for r in rows)
    finally:
        svc.close()


# --- 2. the one-statement claim and a change committed under its snapshot ----------------


@contextmanager
def _claim_statement_delayed(monkeypatch: pytest.MonkeyPatch, nap_s: float) -> Iterator[None]:
    """The claim statement, unchanged but for a pause after its snapshot is taken and
    before it locks a batch: what a busy server's scheduler, or a lane probe skipping
    many locked rows, does to it."""
    original = claims_module._claim_statement

    def delayed(lanes: tuple[int, ...]) -> Any:
        sql = original(lanes).text
        target = "SELECT paused, breaker_state FROM dispatch_control WHERE id = :control_id"
        assert target in sql
        return text(
            sql.replace(
                target,
                "SELECT paused, breaker_state FROM dispatch_control "  # noqa: S608
                f"CROSS JOIN pg_sleep({float(nap_s)}) WHERE id = :control_id",
            )
        )

    monkeypatch.setattr(claims_module, "_claim_statement", delayed)
    yield


@pytest.mark.services
def test_the_claim_never_carries_a_recipient_cancelled_before_it_took_the_batch(
    pg_db: Database,
    simulator: GatewaySimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    svc = make_service(pg_db, simulator, tmp_path)
    try:
        svc.control()  # the control row: the claim takes PostgreSQL's one statement
        job = svc.enqueue([number(1), number(2)], "cancel one of two").job_id
        cancelled, kept = (r.id for r in recipients_of(pg_db, job))
        done, release = threading.Event(), threading.Event()

        def cancel_and_hold() -> int:
            # OperatorActions.cancel_matching's store step (a cancel by number or by
            # filter, or an erasure of one number of a bulk job).
            with pg_db.transaction() as session:
                moved = store.cancel_waiting(
                    session, ids=[cancelled], at=utcnow(), cause="cancelled by op", actor="op"
                )
                done.set()
                assert release.wait(30)
                return moved

        with _claim_statement_delayed(monkeypatch, 1.0), ThreadPoolExecutor(2) as pool:
            try:
                cancelling = pool.submit(cancel_and_hold)
                assert done.wait(10)
                claiming = pool.submit(svc.claim, worker="racer")
                # The claim statement is running (snapshot taken), not yet at the batch.
                wait_until(
                    lambda: _backends(pg_db, "wait_event = 'PgSleep'") > 0,
                    10,
                    message="the claim statement to start",
                )
            finally:
                release.set()
            assert cancelling.result(timeout=10) == 1
            claim = claiming.result(timeout=30)

        assert claim is not None
        [batch] = batches_of(pg_db, job)
        assert batch.status == BatchStatus.SUBMITTING
        assert [r.id for r in claim.recipients] == [kept], "the cancelled one is not sent"
    finally:
        svc.close()


@pytest.mark.services
def test_the_claim_never_submits_a_number_erased_before_it_took_the_batch(
    pg_db: Database,
    simulator: GatewaySimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    svc = make_service(pg_db, simulator, tmp_path)
    try:
        svc.control()
        job = svc.enqueue([number(1), number(2)], "a bulk job, one number erased").job_id
        _erased, kept = (r.id for r in recipients_of(pg_db, job))
        done, release = threading.Event(), threading.Event()
        remove_job_texts = store.remove_job_texts

        def hold_then_remove(session: Any, **kwargs: Any) -> int:
            # The erasure's last step, inside its transaction: cancelled and scrubbed.
            done.set()
            assert release.wait(30)
            return remove_job_texts(session, **kwargs)

        monkeypatch.setattr(store, "remove_job_texts", hold_then_remove)
        with _claim_statement_delayed(monkeypatch, 1.0), ThreadPoolExecutor(2) as pool:
            try:
                erasing = pool.submit(erase, pg_db, "+" + number(1), actor="dpo")
                assert done.wait(10)
                claiming = pool.submit(svc.claim, worker="racer")
                wait_until(
                    lambda: _backends(pg_db, "wait_event = 'PgSleep'") > 0,
                    10,
                    message="the claim statement to start",
                )
            finally:
                release.set()
            assert erasing.result(timeout=10).cancelled == 1
            claim = claiming.result(timeout=30)

        assert claim is not None
        [attempt] = attempts_of(pg_db, job)
        assert number(1) not in attempt.numbers, "an erased number is never written again"
        assert [r.id for r in claim.recipients] == [kept], "nor sent"
    finally:
        svc.close()


# --- 3. the careful path leaving its batch submitting -----------------------------------


def test_a_recorded_retry_in_a_batch_left_submitting_is_not_called_unknown(
    service: Dispatcher, database: Database
) -> None:
    job = service.enqueue([number(1), number(2)], "half unwritable").job_id
    claim = service.claim(worker="w")
    assert claim is not None
    one, two = (r.number for r in claim.recipients)
    body = f"{one},ERR:GATEWAY_ERROR\r\n{two},ID:41\r\n".encode()

    with refusing(database, f"NEW.number = '{two}' AND NEW.status = 'sent'"):
        service.record(claim, reply_submission([one, two], body), worker="w")
        retried, stuck = recipients_of(service.db, job)
        assert stuck.status == "submitting", "left for the sweeper, as designed"
        assert retried.stored_status == "retry_wait"
        shown_before_sweep = retried.status

        _set_claimed_at(service.db, claim.batch_id, SUBMITTING_TIMEOUT_S + 5)
        abandoned = service.sweep()["abandoned_recipients"]

    retried, stuck = recipients_of(service.db, job)
    assert stuck.status == "unknown"
    # Observed before the fix: (2, "unknown", "WORKER_LOST", 2).
    assert (abandoned, retried.status, retried.error_code, retried.attempts) == (
        1,
        "retry_wait",
        "GATEWAY_ERROR",
        1,
    )
    # It waits to be sent again: its batch is queued, due at its retry time.
    [batch] = batches_of(service.db, job)
    assert batch.status == "queued"
    assert retried.next_attempt_at is not None
    assert batch.due_at == retried.next_attempt_at
    assert shown_before_sweep == "submitting", (
        "known and left (issue 15's note): while the batch is left submitting, a "
        "recipient already answered shows submitting until the sweeper closes it"
    )


# --- 4. the events export by number, cut by time -----------------------------------------


@pytest.mark.parametrize("cut", ["until", "since"])
def test_the_export_by_number_cut_by_time_shows_the_claims_in_that_time(
    service: Dispatcher, cut: str
) -> None:
    job = service.enqueue([number(1)], "cut in two").job_id
    claim = service.claim(worker="w")
    assert claim is not None
    time.sleep(0.05)
    between = utcnow()
    time.sleep(0.05)
    service.record(claim, service.submit(claim), worker="w")
    assert [r.status for r in recipients_of(service.db, job)] == ["sent"]

    rows = list(
        csv.DictReader(
            io.StringIO(
                "".join(
                    export_csv(
                        service.db,
                        number="+" + number(1),
                        since=between if cut == "since" else None,
                        until=between if cut == "until" else None,
                    )
                )
            )
        )
    )

    story = [(r["from_status"], r["to_status"]) for r in rows]
    want = {
        # Before: created, then claimed (the reply falls after `until`).
        "until": [("", "queued"), ("queued", "submitting")],
        # After: only the reply (the claim was before `since`).
        "since": [("submitting", "sent")],
    }
    assert story == want[cut]


# --- 5. two changes from a waiting status on one batch ------------------------------------


@pytest.mark.services
def test_two_cancels_on_one_batch_both_go_through(
    pg_db: Database,
    simulator: GatewaySimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    svc = make_service(pg_db, simulator, tmp_path)
    try:
        job = svc.enqueue([number(1), number(2), number(3)], "two cancels").job_id
        first, second, _kept = (r.id for r in recipients_of(pg_db, job))
        both_hold = threading.Barrier(2, timeout=3)
        idle_batches = transitions_module._idle_batches

        def idle_then_meet(session: Any, ids: Any, at: Any) -> Any:
            # Where both can lock the batch at once (a shared lock), both have before
            # either goes on; an exclusive lock makes the second wait for the first to
            # commit, so they never meet, and the first goes on once the wait times out.
            where = idle_batches(session, ids, at)
            with suppress(threading.BrokenBarrierError):
                both_hold.wait()
            return where

        monkeypatch.setattr(transitions_module, "_idle_batches", idle_then_meet)

        def cancel(rid: int) -> int:
            with pg_db.transaction() as session:
                return store.cancel_waiting(
                    session, ids=[rid], at=utcnow(), cause="cancelled by op", actor="op"
                )

        with ThreadPoolExecutor(2) as pool:
            results = [pool.submit(cancel, rid) for rid in (first, second)]
            outcomes: list[int | str] = []
            for result in results:
                try:
                    outcomes.append(result.result(timeout=30))
                except Exception as exc:
                    outcomes.append(type(getattr(exc, "orig", exc)).__name__)
        assert outcomes == [1, 1]
    finally:
        svc.close()
