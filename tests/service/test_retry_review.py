"""Review of the operator-retry commit (issue 16, item 1): defects found, as failing
tests. On SQLite and PostgreSQL unless a test says otherwise."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Batch, Recipient
from dispatcher.service import retry as retry_service
from dispatcher.service.dispatcher import Dispatcher
from support.numbers import number
from support.reads import attempts_of, batches_of, recipients_of
from support.settings import make_service

from .test_retry_rules import one_try as one_try  # the fixture

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture
def svc(database: Database, simulator: GatewaySimulator, tmp_path: Path) -> Iterator[Dispatcher]:
    service = make_service(database, simulator, tmp_path, max_attempts=3, max_retry_age_s=1.0)
    try:
        yield service
    finally:
        service.close()


def _attempt_numbers_of(db: Database, job_id: str) -> list[int]:
    """The attempt numbers of a one-recipient job (every attempt carried it), in order."""
    return [a.attempt_no for a in attempts_of(db, job_id)]


def test_attempt_numbers_repeat_after_a_retry_when_an_attempt_was_not_spent(
    one_try: Dispatcher, simulator: GatewaySimulator
) -> None:
    """carry_out numbers the new batch after max(recipient.attempts), but a batch's
    attempts also count submissions that spent nothing (INSUFFICIENT_CREDIT, an outage):
    the retried recipient's history then shows the same attempt number twice."""
    simulator.configure(credit=0)
    job = one_try.enqueue(number(1), "no credit, then a bad number").job_id
    one_try.dispatch_due(worker="w")  # attempt 1: INSUFFICIENT_CREDIT, nothing spent
    simulator.configure(credit=None, number_rules={number(1): "INVALID_NUMBER"})
    one_try.resume(actor="ops")
    one_try.dispatch_due(worker="w")  # attempt 2: INVALID_NUMBER
    [failed] = recipients_of(one_try.db, job)
    assert (str(failed.status), failed.attempts) == ("failed", 1)
    assert _attempt_numbers_of(one_try.db, job) == [1, 2]

    simulator.configure(number_rules={})
    assert one_try.retry(actor="ops", job_id=job, error_code="INVALID_NUMBER").affected == 1
    one_try.dispatch_due(worker="w")
    [sent] = recipients_of(one_try.db, job)
    assert str(sent.status) == "sent"
    numbers = _attempt_numbers_of(one_try.db, job)
    assert numbers == sorted(set(numbers)), f"attempt numbers repeat: {numbers}"


def test_a_retried_retry_age_exceeded_recipient_gets_no_fresh_allowance(
    svc: Dispatcher, simulator: GatewaySimulator
) -> None:
    """RETRY_AGE_EXCEEDED is treated as transient and goes by default, and
    docs/operating.md promises that "a transient failure after a retry backs off and
    retries as the first time did". But the age limit still counts from the job's
    creation, so the first transient error after the retry fails it at the next sweep."""
    simulator.configure(number_rules={number(1): "GATEWAY_ERROR*5"})
    job = svc.enqueue(number(1), "slow outage").job_id
    svc.dispatch_due(worker="w")
    assert [str(r.status) for r in recipients_of(svc.db, job)] == ["retry_wait"]
    time.sleep(1.2)
    svc.sweep()
    [aged] = recipients_of(svc.db, job)
    assert (str(aged.status), aged.error_code) == ("failed", "RETRY_AGE_EXCEEDED")

    assert svc.retry(actor="ops", job_id=job).affected == 1
    svc.dispatch_due(worker="w")  # GATEWAY_ERROR again: attempt 1 of 3 since the retry
    assert [str(r.status) for r in recipients_of(svc.db, job)] == ["retry_wait"]
    svc.sweep()
    [after] = recipients_of(svc.db, job)
    assert str(after.status) == "retry_wait", (
        f"failed at once by the sweeper ({after.error_code}) after 1 of 3 attempts since the retry"
    )


def test_a_validity_that_ended_is_ignored_for_a_batch_without_expiry(
    one_try: Dispatcher, simulator: GatewaySimulator
) -> None:
    """The rule reads only the batch's expires_at. A recipient retried by the release
    before this one sits in a batch without expiry (the old retry dropped it, and
    migration 0012 backfills nothing), so its job's ended validity is never checked: a
    one-time password past its validity is sent again by default."""
    simulator.configure(number_rules={number(1): "GATEWAY_ERROR"})
    job = one_try.enqueue(number(1), "Your code is 123456", valid_for_s=1.0).job_id
    one_try.dispatch_due(worker="w")
    # What the previous release's retry left: the recipient in a batch with no expiry.
    with one_try.db.transaction() as session:
        session.execute(update(Batch).where(Batch.job_id == job).values(expires_at=None))
    time.sleep(1.2)

    dry = one_try.retry(actor="ops", job_id=job, dry_run=True)
    assert dry.plan is not None
    assert dry.affected == 0, "the job's validity ended: it must not go without a new one"
    assert dry.plan["held_back"]["validity_ended"]["count"] == 1


@pytest.mark.services
def test_a_retry_that_loses_the_race_makes_no_empty_batch(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two retries of the same selection at once (a double click, two operators): the
    first holds the recipients it planned until it commits; the second waits for them,
    rereads them moved, and makes no batch, wakes nobody and names no job. PostgreSQL
    only: SQLite runs one writer at a time, so the two cannot overlap there."""
    service = make_service(pg_db, simulator, tmp_path, max_attempts=1)
    try:
        simulator.configure(number_rules={number(1): "GATEWAY_ERROR*1"})
        job = service.enqueue(number(1), "double click").job_id
        service.dispatch_due(worker="w")
        real = retry_service.carry_out
        other: dict[str, Any] = {}

        def racing(*args: Any, **kwargs: Any) -> Any:
            if "thread" not in other:
                # The other retry starts while this one holds its plan: it must wait.
                def run() -> None:
                    other["result"] = service.retry(actor="other-operator", job_id=job)

                other["thread"] = threading.Thread(target=run)
                other["thread"].start()
                time.sleep(0.5)
                assert "result" not in other, "the other retry did not wait for the first"
            return real(*args, **kwargs)

        monkeypatch.setattr(retry_service, "carry_out", racing)
        first = service.retry(actor="ops", job_id=job)
        other["thread"].join(timeout=30)
        late = other["result"]
        assert (first.affected, late.affected) == (1, 0)
        assert late.jobs == [], "it queued nothing in any job"
        with service.db.transaction() as session:
            used = set(session.scalars(select(Recipient.batch_id).where(Recipient.job_id == job)))
        empty = [b.id for b in batches_of(service.db, job) if b.id not in used]
        # The first batch (the job's own) is legitimately empty now; any other is not.
        assert len(empty) <= 1, f"batches made with no recipient moved into them: {empty}"
    finally:
        service.close()
