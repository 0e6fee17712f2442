"""Completion webhooks: when every recipient of a job is final, POST the job to its URL.

A job with a ``callback_url`` waits (``callback_state = 'waiting'``); the sweeper
finds the finished ones, queues one delivery each and wakes the webhook queue;
the webhook task delivers due ones, retrying with backoff, recording every try.
Delivery is at least once: a worker that dies after the POST and before recording
it will POST again, so receivers should deduplicate on ``X-Dispatcher-Delivery``.

Receivers cannot hurt dispatch: the URL must reach a public address, checked at
enqueue and at each try on the address connected to; a try has one deadline and
reads a few KiB of the reply (``gateway.webhook_client``); and deliveries run on
their own queue, at most ``Settings.webhook_threads`` threads of a worker at once.

Each POST carries the job's JSON (the shape of ``GET /v1/jobs/{id}``) and
``X-Dispatcher-Signature: sha256=<hex>``, the HMAC-SHA256 under
``DISPATCHER_WEBHOOK_SECRET`` of ``<X-Dispatcher-Timestamp>.<body>``; a receiver
recomputes it and rejects stale timestamps to stop replays.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import threading
import time
from urllib.parse import urlsplit

from dispatcher.config import Settings
from dispatcher.domain import redaction
from dispatcher.domain.backoff import RetryPolicy
from dispatcher.domain.statuses import DeliveryStatus
from dispatcher.domain.times import utcnow
from dispatcher.errors import InvalidOptionError
from dispatcher.gateway.addresses import AddressPolicy, Resolver, system_resolver
from dispatcher.gateway.webhook_client import WebhookClient
from dispatcher.persistence import store
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import WebhookDelivery
from dispatcher.persistence.store import webhooks as rows
from dispatcher.service.views import job_to_dict

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 2000
SIGNATURE_HEADER = "X-Dispatcher-Signature"
TIMESTAMP_HEADER = "X-Dispatcher-Timestamp"
DELIVERY_HEADER = "X-Dispatcher-Delivery"
EVENT_HEADER = "X-Dispatcher-Event"
USER_AGENT = "sms-dispatcher-webhook"
# A delivery still `sending` this long past its try's deadline lost its worker.
STALE_MARGIN_S = 30.0


def check_callback_url(url: object, settings: Settings) -> str | None:
    """The callback URL if acceptable, None if absent, else InvalidOptionError."""
    if url is None or url == "":
        return None
    if not isinstance(url, str):
        raise InvalidOptionError(f"callback_url must be a string, not {type(url).__name__}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is part of the check
    except ValueError:
        raise InvalidOptionError("callback_url is not a well-formed URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidOptionError("callback_url must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise InvalidOptionError("callback_url must not carry credentials; requests are signed")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidOptionError(f"callback_url is longer than {MAX_URL_LENGTH} characters")
    if settings.webhook_secret is None:
        raise InvalidOptionError(
            "callbacks are signed: set DISPATCHER_WEBHOOK_SECRET to accept callback_url"
        )
    return url


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value for a body sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class Webhooks:
    """Queues and delivers completion webhooks; owns its transactions."""

    def __init__(
        self, settings: Settings, database: Database, *, resolver: Resolver = system_resolver
    ) -> None:
        self.settings = settings
        self.db = database
        policy = AddressPolicy(
            allow_all=settings.webhook_allow_private, allowed=settings.webhook_allowed_cidrs
        )
        self.client = WebhookClient(
            deadline_s=settings.webhook_timeout_s, policy=policy, resolver=resolver
        )
        self._threads = threading.BoundedSemaphore(settings.webhook_threads)
        # The same backoff as a recipient's retries (docs/design.md section 2):
        # exponential, capped at an hour, half of it random so that deliveries that
        # failed together (a receiver's outage) do not all come back in one second.
        self.backoff = RetryPolicy(
            max_attempts=settings.webhook_max_attempts,
            backoff_s=settings.webhook_backoff_s,
            backoff_max_s=3600.0,
        )
        if settings.webhook_secret is not None:
            redaction.register_secret(settings.webhook_secret.get_secret_value())

    def close(self) -> None:
        """Nothing to release: each try opens and closes its own connection."""

    def check_url(self, url: object) -> str | None:
        """``check_callback_url``, then the address: the host must be, or resolve only
        to, public addresses (or allowed networks). Raises UnsafeCallbackError."""
        checked = check_callback_url(url, self.settings)
        if checked is not None:
            self.client.check(checked)
        return checked

    def queue_finished(self, *, limit: int = 200) -> int:
        """Queue a delivery for each waiting job whose recipients are all final."""
        now = utcnow()
        with self.db.transaction() as session:
            finished = rows.finished_waiting_jobs(session, limit=limit)
            return sum(
                rows.queue_delivery(session, job_id=job_id, url=url, now=now)
                for job_id, url in finished
            )

    def count_due(self) -> int:
        """Deliveries due now."""
        with self.db.transaction() as session:
            return rows.count_due(session, now=utcnow(), cap=1000)

    def release_stale(self) -> int:
        """Deliveries whose worker died mid-POST go back to the queue (at least once)."""
        cutoff = utcnow() - dt.timedelta(seconds=self.settings.webhook_timeout_s + STALE_MARGIN_S)
        with self.db.transaction() as session:
            return rows.release_stale(session, claimed_before=cutoff, now=utcnow())

    def _claim(self) -> WebhookDelivery | None:
        with self.db.transaction() as session:
            return store.claim_oldest_due(
                session,
                WebhookDelivery,
                now=utcnow(),
                queued=DeliveryStatus.QUEUED,
                claimed=DeliveryStatus.SENDING,
            )

    def deliver_due(self, *, budget_s: float = 30.0, stop: threading.Event | None = None) -> int:
        """Deliver due webhooks until none is due, the budget is spent or ``stop`` is set;
        returns tries. Returns 0 at once when ``webhook_threads`` threads of this process
        are delivering already: they take this call's work too."""
        if self.settings.webhook_secret is None:
            # Without the secret no callback can be asked for (check_callback_url),
            # nor signed: skip the claim's transaction.
            return 0
        # Not blocking: a thread waiting here would be a thread taken from dispatch.
        if not self._threads.acquire(blocking=False):
            return 0
        try:
            deadline = time.monotonic() + budget_s
            tries = 0
            while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
                delivery = self._claim()
                if delivery is None:
                    break
                with self.db.transaction() as session:
                    job = store.get_job(session, job_id=delivery.job_id)
                    assert job is not None
                    recipients = store.job_recipients(session, job_id=job.id)
                    body = json.dumps(job_to_dict(job, recipients)).encode()
                self._try(delivery, body)
                tries += 1
            return tries
        finally:
            self._threads.release()

    def _try(self, delivery: WebhookDelivery, body: bytes) -> None:
        assert self.settings.webhook_secret is not None
        timestamp = str(int(time.time()))
        headers = {
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            EVENT_HEADER: "job.completed",
            DELIVERY_HEADER: str(delivery.id),
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(
                self.settings.webhook_secret.get_secret_value(), timestamp, body
            ),
        }
        started = time.perf_counter()
        reply = self.client.post(delivery.url, body, headers)
        latency_ms = (time.perf_counter() - started) * 1000
        status = reply.status
        error = None if reply.error is None else redaction.redact(reply.error)
        now = utcnow()
        if error is None:
            values: dict[str, object] = {"status": DeliveryStatus.DELIVERED}
        elif delivery.attempts >= self.settings.webhook_max_attempts:
            values = {"status": DeliveryStatus.FAILED}
            log.warning(
                "webhook for job %s failed after %d tries: %s",
                delivery.job_id,
                delivery.attempts,
                error,
            )
        else:
            wait_s = self.backoff.delay_s(delivery.attempts)
            values = {"status": DeliveryStatus.QUEUED, "due_at": now + dt.timedelta(seconds=wait_s)}
        with self.db.transaction() as session:
            rows.record_try(
                session,
                delivery_id=delivery.id,
                at=now,
                http_status=status,
                error=error,
                latency_ms=latency_ms,
                changes=values,
            )
