"""Completion webhooks, in-process on SQLite and PostgreSQL, received by a real local server."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from dispatcher.domain.statuses import DeliveryStatus
from dispatcher.errors import InvalidOptionError
from dispatcher.gateway.client import GatewayClient
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import WebhookDelivery
from dispatcher.service.dispatcher import Dispatcher
from dispatcher.service.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from support.numbers import number
from support.pipeline import Pipeline
from support.polling import wait_until
from support.settings import make_settings
from support.webhooks import LOOPBACK, SECRET, Receiver, deliveries, tries
from support.webhooks import receiver as receiver  # the fixture

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture
def hooked(database: Database, simulator: GatewaySimulator, tmp_path: Path) -> Iterator[Dispatcher]:
    settings = make_settings(
        database,
        simulator,
        tmp_path,
        webhook_secret=SECRET,
        webhook_backoff_s=30,
        webhook_max_attempts=3,
        # The receivers listen on 127.0.0.1, which callbacks may not reach unless allowed.
        webhook_allowed_cidrs=LOOPBACK,
    )
    svc = Dispatcher(
        settings, database=database, client_factory=lambda: GatewayClient(settings.gateway_config())
    )
    try:
        yield svc
    finally:
        svc.close()


def test_a_finished_job_is_posted_once_signed(
    hooked: Dispatcher, receiver: Receiver, simulator: GatewaySimulator
) -> None:
    simulator.configure(number_rules={number(2): "INVALID_NUMBER"})
    job = hooked.enqueue([number(1), number(2)], "hooked", callback_url=receiver.url).job_id

    hooked.sweep()
    assert deliveries(hooked.db) == [], "nothing is posted while recipients are pending"
    hooked.dispatch_due(worker="w")
    assert hooked.sweep()["webhooks_queued"] == 1
    assert hooked.sweep()["webhooks_queued"] == 0, "one delivery per job"
    assert hooked.webhooks.deliver_due() == 1

    [(headers, body)] = receiver.received
    expected = hmac.new(
        SECRET.encode(), headers[TIMESTAMP_HEADER].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert headers[SIGNATURE_HEADER] == "sha256=" + expected
    payload = json.loads(body)
    assert payload["id"] == job
    assert payload["status"] == "completed"
    assert {r["number"]: r["status"] for r in payload["recipients"]} == {
        number(1): "sent",
        number(2): "failed",
    }
    [delivery] = deliveries(hooked.db)
    assert headers[DELIVERY_HEADER] == str(delivery.id)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.DELIVERED, 1)
    assert [t.http_status for t in tries(hooked.db)] == [204]
    assert hooked.webhooks.deliver_due() == 0


def test_a_failing_receiver_is_retried_then_given_up_each_try_recorded(
    hooked: Dispatcher, receiver: Receiver
) -> None:
    receiver.statuses = [500, 503, 502]
    hooked.enqueue(number(1), "hooked", callback_url=receiver.url)
    hooked.dispatch_due(worker="w")
    hooked.sweep()

    for _ in range(3):
        hooked.webhooks.deliver_due()
        with hooked.db.transaction() as session:
            session.execute(update(WebhookDelivery).values(due_at=WebhookDelivery.created_at))

    assert [(t.http_status, t.error) for t in tries(hooked.db)] == [
        (500, "HTTP 500"),
        (503, "HTTP 503"),
        (502, "HTTP 502"),
    ]
    [delivery] = deliveries(hooked.db)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 3)
    assert len(receiver.received) == 3


def test_a_recovering_receiver_gets_it_on_a_later_try(
    hooked: Dispatcher, receiver: Receiver
) -> None:
    receiver.statuses = [500]
    hooked.enqueue(number(1), "hooked", callback_url=receiver.url)
    hooked.dispatch_due(worker="w")
    hooked.sweep()
    hooked.webhooks.deliver_due()
    [delivery] = deliveries(hooked.db)
    assert delivery.status == DeliveryStatus.QUEUED
    with hooked.db.transaction() as session:
        session.execute(update(WebhookDelivery).values(due_at=delivery.created_at))
    hooked.webhooks.deliver_due()
    [delivery] = deliveries(hooked.db)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.DELIVERED, 2)


def test_a_failed_try_waits_as_a_recipients_retry_does(
    hooked: Dispatcher, receiver: Receiver
) -> None:
    """The retry policy of recipients (``domain.backoff.RetryPolicy``) spaces the tries:
    after try n, between half and all of 30 s x 2^(n-1), the half drawn at random, so
    deliveries that failed together (a receiver's outage) come back apart."""
    receiver.statuses = [500, 500, 500, 500]
    for i in (1, 2):
        hooked.enqueue(number(i), "hooked", callback_url=receiver.url)
    hooked.dispatch_due(worker="w")
    hooked.sweep()
    waits: list[list[float]] = []
    for _ in range(2):
        hooked.webhooks.deliver_due()
        last_try = {t.delivery_id: t.at for t in tries(hooked.db)}
        waits.append([(d.due_at - last_try[d.id]).total_seconds() for d in deliveries(hooked.db)])
        with hooked.db.transaction() as session:
            session.execute(update(WebhookDelivery).values(due_at=WebhookDelivery.created_at))
    assert all(15 <= w <= 30 for w in waits[0]), waits
    assert all(30 <= w <= 60 for w in waits[1]), waits
    assert len(set(waits[0])) == len(set(waits[1])) == 2, "the same outage, different waits"


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/x", "https://user:pw@example.com/x", "not a url", "https://"],
)
def test_bad_callback_urls_are_refused_before_anything_is_written(
    hooked: Dispatcher, url: str
) -> None:
    with pytest.raises(InvalidOptionError, match="callback_url"):
        hooked.enqueue(number(1), "x", callback_url=url)


def test_callbacks_need_a_signing_secret(service: Dispatcher) -> None:
    with pytest.raises(InvalidOptionError, match="DISPATCHER_WEBHOOK_SECRET"):
        service.enqueue(number(1), "x", callback_url="https://example.com/hook")


@pytest.mark.services
def test_a_real_worker_delivers_the_webhook(pipeline: Pipeline, receiver: Receiver) -> None:
    # The whole path: enqueue, a worker sends, its sweeper queues the delivery and
    # wakes the webhook queue, whose task POSTs it.
    pipeline.env = pipeline.env.with_vars(webhook_secret=SECRET, webhook_allowed_cidrs=LOOPBACK)
    pipeline.start_workers(1)
    job = pipeline.enqueue([number(1), number(2)], "e2e", callback_url=receiver.url).job_id

    wait_until(lambda: len(receiver.received) == 1, timeout_s=60)

    [(headers, body)] = receiver.received
    assert json.loads(body)["id"] == job
    assert headers[SIGNATURE_HEADER].startswith("sha256=")
    wait_until(
        lambda: [d.status for d in deliveries(pipeline.db)] == [DeliveryStatus.DELIVERED],
        timeout_s=10,
    )
