"""Webhook delivery cannot hurt dispatch: one deadline per try, a few KiB read of any
reply, its own queue, and a bounded share of a worker's threads.

The receivers here are raw TCP servers that misbehave on purpose: one never answers,
one trickles a byte at a time, one answers with a body far larger than any reply.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import update

from dispatcher.celery_app import worker_queues
from dispatcher.config import load_settings
from dispatcher.domain.lanes import QUEUE_WEBHOOKS
from dispatcher.domain.statuses import DeliveryStatus, RecipientStatus
from dispatcher.domain.times import utcnow
from dispatcher.errors import ConfigurationError
from dispatcher.gateway.addresses import AddressPolicy
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.gateway.webhook_client import MAX_REPLY_BYTES, WebhookClient
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import WebhookAttempt, WebhookDelivery
from support.numbers import number
from support.pipeline import Pipeline
from support.polling import wait_until
from support.reads import recipients_of
from support.settings import make_service
from support.webhooks import LOOPBACK, SECRET, deliveries, tries

HUGE_BYTES = 64 * 1024 * 1024
CHUNK = b"x" * 65536
# Beyond the deadline, what a loaded machine may add before a cut try is recorded.
SLACK_S = 1.5


# --- receivers that misbehave --------------------------------------------------------


@dataclass
class RawReceiver:
    """A TCP server running ``behaviour`` on each connection, counting what happens."""

    behaviour: Callable[[socket.socket, RawReceiver], None]
    listener: socket.socket = field(default_factory=lambda: socket.create_server(("127.0.0.1", 0)))
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    open: int = 0
    peak: int = 0
    requests: int = 0
    ends: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"RawReceiver(open={self.open}, peak={self.peak}, ends={self.ends})"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"

    def start(self) -> RawReceiver:
        self._spawn(self._accept)
        return self

    def stop(self) -> None:
        self.release.set()
        # Closing alone does not wake a thread blocked in accept(); shutting down does.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=10)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        with self.lock:
            self.open += 1
            self.peak = max(self.peak, self.open)
        end = "answered"
        try:
            read_request(conn)
            with self.lock:
                self.requests += 1
            self.behaviour(conn, self)
        except OSError as exc:
            end = f"cut: {type(exc).__name__}"
        finally:
            conn.close()
            with self.lock:
                self.open -= 1
                self.ends.append(end)


def read_request(conn: socket.socket) -> bytes:
    """One HTTP request, headers and Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionResetError("closed before the request ended")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionResetError("closed before the body ended")
        body += chunk
    return body


def stall_until_released(conn: socket.socket, rx: RawReceiver) -> None:
    """Never answers until the test releases it; then 204."""
    rx.release.wait()
    conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")


def trickle(conn: socket.socket, rx: RawReceiver) -> None:
    """A status line, then a header one byte every tenth of a second, forever."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    while not rx.release.wait(0.1):
        conn.sendall(b"x")


def huge(conn: socket.socket, rx: RawReceiver) -> None:
    """200 and a 64 MiB body, as fast as it goes; ``whole`` if all of it was taken."""
    conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {HUGE_BYTES}\r\n\r\n".encode())
    for _ in range(HUGE_BYTES // len(CHUNK)):
        conn.sendall(CHUNK)
    with rx.lock:
        rx.ends.append("whole")
    rx.release.wait()


def endless_headers(conn: socket.socket, rx: RawReceiver) -> None:
    conn.sendall(b"HTTP/1.1 202 Accepted\r\n")
    while not rx.release.is_set():
        conn.sendall(b"X-More: " + b"y" * 1000 + b"\r\n")


@pytest.fixture
def receivers() -> Iterator[Callable[[Callable[[socket.socket, RawReceiver], None]], RawReceiver]]:
    started: list[RawReceiver] = []

    def start(behaviour: Callable[[socket.socket, RawReceiver], None]) -> RawReceiver:
        rx = RawReceiver(behaviour).start()
        started.append(rx)
        return rx

    try:
        yield start
    finally:
        for rx in started:
            rx.stop()


ReceiverFactory = Callable[[Callable[[socket.socket, RawReceiver], None]], RawReceiver]


def loopback_client(deadline_s: float) -> WebhookClient:
    return WebhookClient(
        deadline_s=deadline_s,
        policy=AddressPolicy(allowed=(ipaddress.ip_network(LOOPBACK),)),
    )


# --- one try: a deadline for the whole of it, a few KiB read ---------------------------


def test_a_trickling_receiver_is_cut_at_the_deadline(receivers: ReceiverFactory) -> None:
    rx = receivers(trickle)
    started = time.monotonic()
    reply = loopback_client(1.0).post(rx.url, b"{}", {})
    elapsed_s = time.monotonic() - started
    assert (reply.status, reply.error) == (None, "no complete reply within 1 s")
    assert 1.0 <= elapsed_s < 1.0 + SLACK_S
    wait_until(lambda: rx.ends, 5, message="the receiver to see the cut")
    assert rx.ends[0].startswith("cut"), "the connection was shut, not left trickling"


def test_a_receiver_that_never_reads_is_cut_while_we_send(receivers: ReceiverFactory) -> None:
    """The deadline covers sending: a body larger than the socket buffers blocks the
    send until the cut."""

    def never_read(conn: socket.socket, rx: RawReceiver) -> None:
        rx.release.wait()

    listener = socket.create_server(("127.0.0.1", 0))
    try:
        started = time.monotonic()
        reply = loopback_client(1.0).post(
            f"http://127.0.0.1:{listener.getsockname()[1]}/hook", b"x" * HUGE_BYTES, {}
        )
        elapsed_s = time.monotonic() - started
    finally:
        listener.close()
    assert (reply.status, reply.error) == (None, "no complete reply within 1 s")
    assert elapsed_s < 1.0 + SLACK_S


def test_a_huge_reply_is_not_read_whole(receivers: ReceiverFactory) -> None:
    rx = receivers(huge)
    reply = loopback_client(10.0).post(rx.url, b"{}", {})
    assert (reply.status, reply.error) == (200, None), "the status line is what counts"
    wait_until(lambda: rx.ends, 10, message="the receiver's send to end")
    assert rx.ends[0].startswith("cut"), "the client closed long before the body was sent whole"


def test_endless_headers_end_at_the_cap_not_the_deadline(receivers: ReceiverFactory) -> None:
    """At most ``MAX_REPLY_BYTES`` are read: headers cut short there still give the
    status, and the try ends when the reading stops, long before the deadline."""
    rx = receivers(endless_headers)
    started = time.monotonic()
    reply = loopback_client(10.0).post(rx.url, b"{}", {})
    assert time.monotonic() - started < 5.0
    assert (reply.status, reply.error) == (202, None)
    wait_until(lambda: rx.ends, 10, message="the receiver's send to end")
    assert rx.ends[0].startswith("cut")
    assert MAX_REPLY_BYTES == 4096


@pytest.mark.services
def test_a_real_worker_cuts_a_trickle_at_the_deadline_and_reads_little_of_a_huge_reply(
    pipeline: Pipeline, receivers: ReceiverFactory
) -> None:
    slow, big = receivers(trickle), receivers(huge)
    pipeline.env = pipeline.env.with_vars(
        webhook_secret=SECRET, webhook_allowed_cidrs=LOOPBACK, webhook_timeout_s="2"
    )
    pipeline.start_workers(1)
    slow_job = pipeline.enqueue(number(1), "slow", callback_url=slow.url).job_id
    big_job = pipeline.enqueue(number(2), "big", callback_url=big.url).job_id

    def first_tries() -> dict[str, WebhookAttempt] | None:
        first = {a.delivery_id: a for a in reversed(tries(pipeline.db))}
        by_job = {d.job_id: first[d.id] for d in deliveries(pipeline.db) if d.id in first}
        return by_job if {slow_job, big_job} <= set(by_job) else None

    attempts = wait_until(first_tries, 60, message="a recorded try of each delivery")
    cut, read = attempts[slow_job], attempts[big_job]
    by_job = {d.job_id: d for d in deliveries(pipeline.db)}
    assert (cut.http_status, cut.error) == (None, "no complete reply within 2 s")
    assert cut.latency_ms is not None
    assert cut.latency_ms < (2 + SLACK_S) * 1000
    assert by_job[slow_job].status == DeliveryStatus.QUEUED, "a failed try, retried later"

    assert (read.http_status, read.error) == (200, None)
    assert by_job[big_job].status == DeliveryStatus.DELIVERED
    wait_until(lambda: big.ends, 30, message="the huge reply's sender to stop")
    assert big.ends[0].startswith("cut"), "the worker closed before the body was sent whole"


# --- apart from dispatch: own queue, a bounded share of threads ---------------------


def test_a_process_delivers_on_at_most_its_webhook_threads(
    database: Database, simulator: GatewaySimulator, tmp_path: Path, receivers: ReceiverFactory
) -> None:
    rx = receivers(stall_until_released)
    svc = make_service(
        database,
        simulator,
        tmp_path,
        webhook_secret=SECRET,
        webhook_allowed_cidrs=LOOPBACK,
        webhook_timeout_s=20,
        webhook_concurrency=1,
        worker_concurrency=4,
    )
    try:
        for i in range(2):
            svc.enqueue(number(i), "x", callback_url=rx.url)
        svc.dispatch_due(worker="w")
        svc.sweep()
        first = threading.Thread(target=svc.webhooks.deliver_due)
        first.start()
        wait_until(lambda: rx.open == 1, 10, message="one delivery to stall")
        started = time.monotonic()
        assert svc.webhooks.deliver_due() == 0, "the only webhook thread is busy"
        assert time.monotonic() - started < 1.0, "and it did not wait for it"
        rx.release.set()
        first.join(timeout=30)
        assert [d.status for d in deliveries(svc.db)] == [DeliveryStatus.DELIVERED] * 2
        assert rx.peak == 1
    finally:
        rx.release.set()
        svc.close()


def test_a_delivery_whose_worker_died_is_retried_soon_after_its_deadline(
    database: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    """At least once: a delivery left ``sending`` is queued again once its try's
    deadline and a margin have passed, and not before."""
    svc = make_service(database, simulator, tmp_path, webhook_secret=SECRET, webhook_timeout_s=10)
    try:
        svc.enqueue(number(1), "x", callback_url="http://93.184.215.14/hook")
        svc.dispatch_due(worker="w")
        svc.sweep()
        with svc.db.transaction() as session:
            session.execute(
                update(WebhookDelivery).values(
                    status=DeliveryStatus.SENDING, claimed_at=utcnow() - dt.timedelta(seconds=35)
                )
            )
        assert svc.webhooks.release_stale() == 0, "35 s: the try may still be running"
        with svc.db.transaction() as session:
            session.execute(
                update(WebhookDelivery).values(claimed_at=utcnow() - dt.timedelta(seconds=45))
            )
        assert svc.webhooks.release_stale() == 1, "45 s: past 10 s and the 30 s margin"
        assert [d.status for d in deliveries(svc.db)] == [DeliveryStatus.QUEUED]
    finally:
        svc.close()


def test_webhook_threads_never_exceed_half_a_workers_threads() -> None:
    def threads(**values: object) -> int:
        return load_settings(settings_file="/dev/null", **values).webhook_threads

    assert threads() == 2
    assert threads(webhook_concurrency=8, worker_concurrency=4) == 2
    assert threads(worker_concurrency=1) == 1
    with pytest.raises(ConfigurationError, match="DISPATCHER_WEBHOOK_ALLOWED_CIDRS"):
        load_settings(webhook_allowed_cidrs="10.0.0.0/8,not-a-net")


def test_webhooks_have_their_own_queue_which_high_only_workers_leave() -> None:
    assert worker_queues(("high", "normal", "bulk"))[-1] == QUEUE_WEBHOOKS
    assert QUEUE_WEBHOOKS in worker_queues(("normal", "bulk"))
    assert QUEUE_WEBHOOKS not in worker_queues(("high",))


@pytest.mark.services
def test_stalled_receivers_never_delay_another_jobs_dispatch(
    pipeline: Pipeline, receivers: ReceiverFactory
) -> None:
    """Six finished jobs' receivers never answer, with a deadline of a minute. The
    worker runs 4 threads (``-c 4``, whatever DISPATCHER_WORKER_CONCURRENCY says);
    deliveries may take half of them, never more, though 3 are asked for; so a job
    enqueued meanwhile is sent while every delivery is still stalled."""
    rx = receivers(stall_until_released)
    pipeline.env = pipeline.env.with_vars(
        webhook_secret=SECRET,
        webhook_allowed_cidrs=LOOPBACK,
        webhook_timeout_s="60",
        webhook_concurrency="3",
        worker_concurrency="16",
    )
    pipeline.workers.start(1, env=pipeline.env, concurrency=4)
    for i in range(6):
        pipeline.enqueue(number(i), "hooked", callback_url=rx.url)
    wait_until(lambda: rx.open >= 2, 30, message="two deliveries to stall")
    # Several sweeps, each of which wakes the webhook queue again: more threads would
    # be taken now if deliveries were not bounded.
    time.sleep(3)
    assert rx.peak == 2, f"{rx.peak} deliveries at once on a 4-thread worker"

    other = pipeline.enqueue(number(99), "not hooked").job_id
    pipeline.wait_for(other, timeout_s=90)

    assert [r.status for r in recipients_of(pipeline.db, other)] == [RecipientStatus.SENT]
    assert tries(pipeline.db) == [], "it was sent while every delivery was still stalled"
    assert rx.open == 2
    rx.release.set()
    wait_until(
        lambda: [d.status for d in deliveries(pipeline.db)] == [DeliveryStatus.DELIVERED] * 6,
        60,
        message="every delivery once released",
    )
