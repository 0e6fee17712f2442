"""The completer: a process's replies written several per transaction, none lost.

On PostgreSQL and SQLite, with real claims and the simulator's real replies over
HTTP (``dispatcher.service.completer``): replies handed in together are written in
fewer transactions than replies; a flush the database refuses is written reply by
reply with the usual salvage; a dispatch run returns only once its replies are on
record; closing writes what waits, and a reply handed in after is written at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from dispatcher.domain.statuses import BatchStatus
from dispatcher.gateway.client import Submission
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.persistence.salvage import REPLY_NOT_RECORDED
from dispatcher.service.claim import Claim
from dispatcher.service.dispatcher import Dispatcher
from support.numbers import number
from support.pipeline import check_invariants
from support.reads import attempts_of, batches_of, recipients_of
from support.reply_shapes import reply_submission
from support.settings import make_service
from support.triggers import refusing

pytestmark = pytest.mark.usefixtures("clean_env")


def claimed_submissions(service: Dispatcher, jobs: int) -> list[tuple[Claim, Submission]]:
    """``jobs`` one-recipient jobs, each claimed and submitted to the simulator."""
    for i in range(1, jobs + 1):
        service.enqueue(number(i), f"completer {i}")
    done = []
    while (claim := service.claim(worker="w")) is not None:
        done.append((claim, service.submit(claim)))
    assert len(done) == jobs
    return done


@contextmanager
def counting_commits(database: Database) -> Iterator[list[int]]:
    """Count the transactions committed on ``database``'s pooled engine meanwhile."""
    count = [0]

    def commit(_: Any) -> None:
        count[0] += 1

    event.listen(database.engine, "commit", commit)
    try:
        yield count
    finally:
        event.remove(database.engine, "commit", commit)


def test_replies_handed_in_together_share_transactions(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    replies = claimed_submissions(service, 20)
    completer = service.completer
    assert completer is not None, "on by default"

    with counting_commits(service.db) as commits:
        handed = [completer.submit(c, s, worker="w", budget_s=5.0) for c, s in replies]
        assert all(recorded.wait(30.0) for recorded in handed)

    assert [r.error for r in handed] == [None] * 20
    # One reply per transaction would be 20; the writer takes all that wait.
    assert commits[0] <= 5, commits[0]
    for claim, submission in replies:
        [recipient] = recipients_of(service.db, claim.job_id)
        [outcome] = submission.outcomes
        assert recipient.status == "sent"
        assert recipient.gateway_message_id == outcome.gateway_message_id
        [attempt] = attempts_of(service.db, claim.job_id)
        assert attempt.finished_at is not None
    assert all(b.status == BatchStatus.DONE for b in batches_of(service.db))
    check_invariants(service.db, simulator)


def test_a_flush_the_database_refuses_is_written_reply_by_reply(
    service: Dispatcher, database: Database, simulator: GatewaySimulator
) -> None:
    replies = claimed_submissions(service, 3)
    # The middle reply carries an ID the database will not take.
    poisoned_claim, _ = replies[1]
    [recipient] = poisoned_claim.recipients
    replies[1] = (
        poisoned_claim,
        reply_submission([recipient.number], f"{recipient.number},ID:poison\r\n".encode()),
    )
    completer = service.completer
    assert completer is not None

    with refusing(database, "NEW.gateway_message_id = 'poison'"):
        handed = [completer.submit(c, s, worker="w", budget_s=5.0) for c, s in replies]
        assert all(recorded.wait(30.0) for recorded in handed)

    assert [r.error for r in handed] == [None] * 3
    first, poisoned, last = (recipients_of(service.db, c.job_id)[0] for c, _ in replies)
    assert (first.status, last.status) == ("sent", "sent")
    assert first.gateway_message_id == replies[0][1].outcomes[0].gateway_message_id
    assert last.gateway_message_id == replies[2][1].outcomes[0].gateway_message_id
    # Salvaged as a single write would be: sent, the refused ID kept in the log.
    assert (poisoned.status, poisoned.error_code) == ("sent", REPLY_NOT_RECORDED)
    assert all(b.status == BatchStatus.DONE for b in batches_of(service.db))


@pytest.mark.parametrize("batch_size", [1, 64])
def test_a_dispatch_run_returns_once_its_replies_are_on_record(
    database: Database, simulator: GatewaySimulator, tmp_path: Path, batch_size: int
) -> None:
    service = make_service(database, simulator, tmp_path, reply_batch_size=batch_size)
    try:
        assert (service.completer is None) == (batch_size == 1)
        job_ids = [service.enqueue(number(i), f"run {i}").job_id for i in range(1, 31)]

        report = service.dispatch_due(worker="w")

        assert report.batches == 30
        # Read at once: nothing of the run may still be on its way to the database.
        for job_id in job_ids:
            [recipient] = recipients_of(service.db, job_id)
            assert recipient.status == "sent"
            assert recipient.gateway_message_id
        assert all(a.finished_at is not None for a in attempts_of(service.db))
        assert all(b.status == BatchStatus.DONE for b in batches_of(service.db))
        check_invariants(service.db, simulator)
    finally:
        service.close()


def test_closing_writes_what_waits_and_a_later_reply_is_written_at_once(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    replies = claimed_submissions(service, 6)
    completer = service.completer
    assert completer is not None
    handed = [completer.submit(c, s, worker="w", budget_s=5.0) for c, s in replies[:5]]

    assert completer.close(timeout_s=30.0)

    assert all(recorded.done and recorded.error is None for recorded in handed)
    # After close (a worker shutting down) the caller's own thread writes it.
    claim, submission = replies[5]
    late = completer.submit(claim, submission, worker="w", budget_s=5.0)
    assert late.done
    for claim, _ in replies:
        [recipient] = recipients_of(service.db, claim.job_id)
        assert recipient.status == "sent"
    check_invariants(service.db, simulator)
