"""Operator actions and producer guarantees, in-process on SQLite and PostgreSQL:
retry, cancel, API keys, idempotent enqueue, references; every action audited."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import func, select

from dispatcher.domain.statuses import Scope
from dispatcher.errors import (
    AuthenticationError,
    ConfirmationRequiredError,
    ConflictError,
    InvalidOptionError,
    NotFoundError,
)
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import ApiKey, Job, OperatorAction
from dispatcher.service.dispatcher import Dispatcher
from dispatcher.service.keys import KeyStore, hash_token
from support.numbers import number
from support.reads import events_of, recipients_of, row_counts, send_requests

pytestmark = pytest.mark.usefixtures("clean_env")


def actions(db: Database) -> list[OperatorAction]:
    with db.transaction() as session:
        return list(session.execute(select(OperatorAction).order_by(OperatorAction.id)).scalars())


def statuses(db: Database, job_id: str) -> dict[str, str]:
    return {r.number: r.status for r in recipients_of(db, job_id)}


# --- retry ---------------------------------------------------------------------------


def test_retry_requeues_failed_recipients_and_they_are_sent(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    simulator.configure(number_rules={number(1): "INVALID_NUMBER*1"})
    job = service.enqueue([number(1), number(2), "12"], "again").job_id
    service.dispatch_due(worker="w")
    assert statuses(service.db, job) == {number(1): "failed", number(2): "sent", "12": "failed"}

    # INVALID_NUMBER failed for good: named, it goes (tests/service/test_retry_rules.py
    # has what happens unnamed).
    result = service.retry(actor="ops:bob", job_id=job, error_code="INVALID_NUMBER")

    # The number refused at enqueue is not a phone number: it is never retried.
    assert result.affected == 1
    assert statuses(service.db, job)[number(1)] == "queued"
    service.dispatch_due(worker="w")
    rows = {r.number: r for r in recipients_of(service.db, job)}
    assert rows[number(1)].status == "sent"
    assert rows[number(1)].gateway_message_id is not None
    assert rows["12"].status == "failed"
    history = [
        (e.from_status, e.to_status, e.actor)
        for e in events_of(service.db, job)
        if e.recipient_id == rows[number(1)].id
    ]
    assert ("failed", "queued", "ops:bob") in history
    [action] = [a for a in actions(service.db) if a.action == "retry"]
    assert (action.actor, action.target, action.affected) == ("ops:bob", job, 1)


def test_retrying_unknown_needs_confirmation(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    simulator.configure(drop_after_accept_rate=1.0)
    job = service.enqueue(number(1), "maybe sent").job_id
    service.dispatch_due(worker="w")
    assert statuses(service.db, job) == {number(1): "unknown"}
    simulator.configure(drop_after_accept_rate=0.0)

    with pytest.raises(ConfirmationRequiredError, match="1 recipients are `unknown`"):
        service.retry(actor="ops", job_id=job, statuses=["unknown"])
    assert statuses(service.db, job) == {number(1): "unknown"}
    assert [a for a in actions(service.db) if a.action == "retry"] == []

    service.retry(actor="ops", job_id=job, statuses=["unknown"], confirm_unknown=True)
    service.dispatch_due(worker="w")
    assert statuses(service.db, job) == {number(1): "sent"}
    [action] = [a for a in actions(service.db) if a.action == "retry"]
    assert json.loads(action.detail or "{}")["confirm_unknown"] is True


def test_retry_by_error_code_across_jobs(service: Dispatcher, simulator: GatewaySimulator) -> None:
    simulator.configure(number_rules={number(1): "INVALID_NUMBER", number(3): "NO_ROUTE_X"})
    jobs = [service.enqueue(number(i), f"job {i}").job_id for i in (1, 2, 3)]
    service.dispatch_due(worker="w")

    result = service.retry(actor="ops", error_code="INVALID_NUMBER")

    assert result.jobs == [jobs[0]]
    assert statuses(service.db, jobs[0]) == {number(1): "queued"}
    assert statuses(service.db, jobs[2]) == {number(3): "failed"}


def test_retry_refuses_other_statuses_and_unknown_jobs(service: Dispatcher) -> None:
    with pytest.raises(InvalidOptionError):
        service.retry(actor="ops", statuses=["sent"])
    with pytest.raises(NotFoundError):
        service.retry(actor="ops", job_id="NOPE")


# --- cancel --------------------------------------------------------------------------


def test_cancel_stops_what_no_worker_claimed(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    numbers = [f"+4477009{i:05d}" for i in range(150)]  # two batches
    job = service.enqueue(numbers, "cancel me").job_id
    claim = service.claim(worker="w")  # the first batch is in flight
    assert claim is not None

    result = service.cancel(job, actor="ops:carol")

    assert result.affected == 50
    service.record(claim, service.submit(claim), worker="w")
    counts: dict[str, int] = {}
    for status in statuses(service.db, job).values():
        counts[status] = counts.get(status, 0) + 1
    assert counts == {"sent": 100, "cancelled": 50}
    assert service.dispatch_one(worker="w") is None
    assert send_requests(simulator) == 1
    [action] = [a for a in actions(service.db) if a.action == "cancel"]
    assert (action.actor, action.affected) == ("ops:carol", 50)


def test_cancel_of_an_unknown_job_is_not_found(service: Dispatcher) -> None:
    with pytest.raises(NotFoundError):
        service.cancel("NOPE", actor="ops")


# --- idempotency and references ------------------------------------------------------


def test_the_same_idempotency_key_and_request_return_the_same_job(service: Dispatcher) -> None:
    first = service.enqueue(number(1), "once", idempotency_key="order-7", actor="api:shop")
    before = row_counts(service.db)

    again = service.enqueue(number(1), "once", idempotency_key="order-7", actor="api:shop")

    assert again.job_id == first.job_id
    assert again.replayed is True
    assert row_counts(service.db) == before, "a replay writes nothing"


def test_the_same_key_for_a_different_request_conflicts(service: Dispatcher) -> None:
    service.enqueue(number(1), "once", idempotency_key="order-7", actor="api:shop")
    before = row_counts(service.db)
    with pytest.raises(ConflictError, match="order-7"):
        service.enqueue(number(1), "twice", idempotency_key="order-7", actor="api:shop")
    assert row_counts(service.db) == before


def test_idempotency_keys_are_per_key_holder(service: Dispatcher) -> None:
    a = service.enqueue(number(1), "hi", idempotency_key="k", actor="api:a").job_id
    b = service.enqueue(number(1), "hi", idempotency_key="k", actor="api:b").job_id
    assert a != b


def test_concurrent_duplicates_make_one_job(service: Dispatcher) -> None:
    barrier = threading.Barrier(4)
    ids: list[str] = []

    def producer() -> None:
        barrier.wait(timeout=10)
        ids.append(service.enqueue(number(1), "race", idempotency_key="dup", actor="x").job_id)

    threads = [threading.Thread(target=producer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(ids) == 4
    assert len(set(ids)) == 1
    with service.db.transaction() as session:
        assert session.execute(select(func.count()).select_from(Job)).scalar_one() == 1


def test_reference_and_creator_are_recorded(service: Dispatcher) -> None:
    job = service.enqueue(number(1), "hi", reference="invoice-42", actor="api:shop").job_id
    with service.db.transaction() as session:
        row = session.get(Job, job)
        assert row is not None
        assert (row.reference, row.created_by) == ("invoice-42", "api:shop")
    with pytest.raises(InvalidOptionError):
        service.enqueue(number(1), "hi", reference="x" * 201)


# --- API keys ------------------------------------------------------------------------


def test_keys_store_only_a_hash_and_check_scopes(database: Database) -> None:
    keys = KeyStore(database)
    token, info = keys.create("shop", "send,read", actor="cli:root")

    assert info.scopes == {Scope.SEND, Scope.READ}
    with database.transaction() as session:
        row = session.execute(select(ApiKey)).scalar_one()
        assert row.token_hash == hash_token(token)
        assert token not in (row.token_hash, row.name, row.scopes)
    assert keys.authenticate(token, scope=Scope.SEND).name == "shop"
    with pytest.raises(AuthenticationError, match="operate"):
        keys.authenticate(token, scope=Scope.OPERATE)
    with pytest.raises(AuthenticationError) as wrong:
        keys.authenticate(token + "x")
    assert token not in str(wrong.value)

    keys.revoke("shop", actor="cli:root")
    with pytest.raises(AuthenticationError):
        keys.authenticate(token, scope=Scope.SEND)
    assert [a.action for a in actions(database)] == ["keys.create", "keys.revoke"]


def test_key_names_and_scopes_are_checked(database: Database) -> None:
    keys = KeyStore(database)
    keys.create("shop", "send", actor="t")
    with pytest.raises(InvalidOptionError, match="exists"):
        keys.create("shop", "send", actor="t")
    with pytest.raises(InvalidOptionError, match="scope"):
        keys.create("other", "send,fly", actor="t")
    with pytest.raises(InvalidOptionError):
        keys.create("has space", "send", actor="t")
    with pytest.raises(NotFoundError):
        keys.revoke("nobody", actor="t")
