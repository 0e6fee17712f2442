"""Expiry, voice, senders, reference as usercontext, parts and credits.

In-process on SQLite and PostgreSQL against the simulator over HTTP, and end to
end with a real worker where dispatch matters (expiry after an outage).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from dispatcher.config import load_settings
from dispatcher.domain.statuses import BatchStatus, RecipientStatus
from dispatcher.domain.times import utcnow
from dispatcher.errors import (
    ConfigurationError,
    ConflictError,
    InvalidOptionError,
    SenderNotAllowedError,
)
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.service.dispatcher import Dispatcher
from support.numbers import number
from support.pipeline import Pipeline
from support.polling import wait_until
from support.reads import batches_of, events_of, recipients_of
from support.settings import make_service

# --- expiry ------------------------------------------------------------------------


def test_a_batch_claimed_past_its_validity_is_expired_not_sent(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    result = service.enqueue([number(1), number(2)], "stale otp", valid_for_s=0.2)
    assert result.expires_at is not None
    view = service.job_view(result.job_id)
    assert view["expires_at"] == result.expires_at.isoformat()
    wait_until(lambda: utcnow() > result.expires_at, 5)  # type: ignore[operator]

    assert service.dispatch_due().batches == 0
    assert simulator.ledger() == []
    recipients = recipients_of(service.db, result.job_id)
    assert {r.status for r in recipients} == {"expired"}
    assert all(
        r.error_code == "EXPIRED" and "validity ended" in (r.error_detail or "") for r in recipients
    )
    expired_events = [e for e in events_of(service.db, result.job_id) if e.to_status == "expired"]
    assert len(expired_events) == 2
    assert all(e.from_status == "queued" and "validity ended" in e.cause for e in expired_events)
    assert [b.status for b in batches_of(service.db, result.job_id)] == [BatchStatus.DONE]


def test_the_sweeper_expires_recipients_waiting_to_retry(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    simulator.configure(number_rules={number(1): "GATEWAY_ERROR"})
    result = service.enqueue(number(1), "retrying", valid_for_s=1.0)
    service.dispatch_due()
    assert recipients_of(service.db, result.job_id)[0].status == RecipientStatus.RETRY_WAIT
    wait_until(lambda: utcnow() > result.expires_at, 5)  # type: ignore[operator]

    assert service.sweep()["expired_recipients"] == 1
    [recipient] = recipients_of(service.db, result.job_id)
    assert recipient.status == RecipientStatus.EXPIRED
    assert recipient.next_attempt_at is None
    assert events_of(service.db, result.job_id)[-1].actor == "sweeper"


def test_validity_counts_from_the_send_time_and_has_a_default(
    database: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    svc = make_service(database, simulator, tmp_path, default_validity_s=600)
    try:
        send_at = utcnow() + dt.timedelta(hours=1)
        scheduled = svc.enqueue(number(1), "later", send_at=send_at, valid_for_s=60)
        assert scheduled.expires_at == send_at + dt.timedelta(seconds=60)
        defaulted = svc.enqueue(number(2), "default")
        assert defaulted.expires_at is not None
        [batch] = batches_of(database, defaulted.job_id)
        assert batch.expires_at == defaulted.expires_at
        assert batch.expires_at - batch.due_at == dt.timedelta(seconds=600)
        for bad in (0, -5, float("nan"), "60", True):
            with pytest.raises(InvalidOptionError, match="valid_for_s"):
                svc.enqueue(number(3), "bad", valid_for_s=bad)  # type: ignore[arg-type]
    finally:
        svc.close()


def test_nothing_stale_is_sent_after_an_outage(pipeline: Pipeline) -> None:
    """Workers down while an OTP's validity passes: when a worker starts, the gateway
    receives nothing for it, and its recipients are expired with events."""
    result = pipeline.enqueue([number(1), number(2)], "too late", valid_for_s=1.0)
    fresh = pipeline.enqueue(number(3), "still fine", valid_for_s=600)
    wait_until(lambda: utcnow() > result.expires_at, 5)  # type: ignore[operator]
    pipeline.start_workers(1)

    pipeline.wait_for(result.job_id, fresh.job_id, timeout_s=30)
    assert [e["number"] for e in pipeline.sim.ledger()] == [number(3)]
    assert {r.status for r in recipients_of(pipeline.db, result.job_id)} == {"expired"}
    assert sum(e.to_status == "expired" for e in events_of(pipeline.db, result.job_id)) == 2
    pipeline.check_invariants()


# --- voice -------------------------------------------------------------------------


def test_voice_goes_to_the_gateway_as_type_6(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    voice = service.enqueue(number(1), "Your code is 1 2 3 4", kind="voice").job_id
    text = service.enqueue(number(2), "Your code is 1234").job_id
    service.dispatch_due()
    by_number = {e["number"]: e for e in simulator.ledger()}
    assert by_number[number(1)]["type"] == 6
    assert by_number[number(2)]["type"] == 1
    assert service.job_view(voice)["kind"] == "voice"
    assert service.job_view(text)["kind"] == "text"
    with pytest.raises(InvalidOptionError, match="kind"):
        service.enqueue(number(1), "x", kind="fax")


# --- senders -----------------------------------------------------------------------


def test_the_default_sender_is_used_when_none_is_given(
    database: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    svc = make_service(database, simulator, tmp_path, default_sender="Acme")
    try:
        svc.enqueue(number(1), "defaulted")
        svc.enqueue(number(2), "own", sender="Shop")
        svc.dispatch_due()
        senders = {e["number"]: e["sender"] for e in simulator.ledger()}
        assert senders == {number(1): "Acme", number(2): "Shop"}
    finally:
        svc.close()


def test_a_bad_default_sender_stops_the_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="DISPATCHER_DEFAULT_SENDER"):
        load_settings(data_dir=tmp_path, default_sender="Far Too Long Sender")


def test_allowed_senders_restrict_and_default(service: Dispatcher) -> None:
    allowed = ["Acme", "Shop"]
    with pytest.raises(SenderNotAllowedError, match="not granted"):
        service.enqueue(number(1), "x", sender="Other", allowed_senders=allowed)
    job = service.enqueue(number(1), "x", allowed_senders=allowed).job_id
    assert service.job_view(job)["sender"] == "Acme"
    job = service.enqueue(number(1), "y", sender="Shop", allowed_senders=allowed).job_id
    assert service.job_view(job)["sender"] == "Shop"


# --- reference, parts and credits ----------------------------------------------------


def test_the_reference_travels_as_usercontext_and_is_searchable(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    tagged = service.enqueue([number(1), number(2)], "tagged", reference="order-17").job_id
    service.enqueue(number(3), "untagged")
    service.dispatch_due()
    contexts = {e["number"]: e["usercontext"] for e in simulator.ledger()}
    assert contexts == {number(1): "order-17", number(2): "order-17", number(3): None}
    assert [j["id"] for j in service.list_jobs(reference="order-17")] == [tagged]
    assert service.list_jobs(reference="order-18") == []


def test_parts_and_estimated_credits(service: Dispatcher) -> None:
    text = "x" * 200  # two GSM-7 parts
    result = service.enqueue([number(1), number(2), number(3), "nope"], text, maxconcat=2)
    assert result.parts == 2
    assert result.credits == 6, "parts x recipients queued; the refused number costs nothing"
    view = service.job_view(result.job_id)
    assert (view["parts"], view["credits"]) == (2, 6)
    [row] = service.list_jobs(limit=1)
    assert (row["parts"], row["credits"]) == (2, 6)
    voice = service.enqueue(number(1), "short", kind="voice")
    assert voice.credits == 1


def test_scheduling_options_are_part_of_the_idempotent_request(service: Dispatcher) -> None:
    first = service.enqueue(number(1), "hi", priority="high", idempotency_key="k1")
    again = service.enqueue(number(1), "hi", priority="high", idempotency_key="k1")
    assert again.replayed
    assert again.job_id == first.job_id
    assert again.priority == "high"
    with pytest.raises(ConflictError, match="different request"):
        service.enqueue(number(1), "hi", priority="bulk", idempotency_key="k1")
