"""The Celery application: broker, queues, reliability settings.

``make_celery`` builds an app from a settings object; the composition root
(``dispatcher.runtime``) calls it once per process, so importing this module reads
no environment and builds nothing.

Wake-ups travel on one queue per priority lane (``LANE_QUEUES``: high, normal,
bulk), so a worker started with ``--lanes high`` hears only the high lane's.
Webhook deliveries have a queue of their own (``QUEUE_WEBHOOKS``), consumed by
every worker but those dedicated to the high lane.

Tasks only wake workers; the database holds the schedule. So the settings here
favour "never lose a wake-up silently" over throughput of messages:
``task_acks_late`` with ``task_reject_on_worker_lost`` so a killed worker's
message is redelivered, prefetch 1 so one busy thread does not hoard messages,
and a thread pool because a worker spends its time waiting on HTTP and the
database, not on the CPU.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from pathlib import Path
from typing import Any, cast

import redis
from celery import Celery
from celery.exceptions import CPendingDeprecationWarning
from kombu import Connection
from kombu.connection import ConnectionPool
from kombu.transport.redis import PRIORITY_STEPS
from kombu.transport.redis import Channel as RedisChannel
from kombu.transport.virtual import Transport as VirtualTransport

from dispatcher.config import Settings
from dispatcher.domain.lanes import LANE_QUEUES, QUEUE_DISPATCH, QUEUE_WEBHOOKS, Priority

log = logging.getLogger(__name__)

TASK_DISPATCH = "dispatcher.dispatch"
TASK_SWEEP = "dispatcher.sweep"
TASK_HEARTBEAT = "dispatcher.heartbeat"
TASK_WEBHOOKS = "dispatcher.webhooks"

# Producers count waiting wake-ups on the send() path: briefly, and after a failure
# not again for a while (they wake as if none waited meanwhile).
COUNT_TIMEOUT_S = 0.5
COUNT_RETRY_AFTER_S = 10.0

# A wake-up is worth nothing after a while: the sweeper sends fresh ones for work
# still due, so stale messages left in a broker during an outage can be dropped.
WAKE_EXPIRES_S = 600


def broker_options(settings: Settings) -> dict[str, Any]:
    """Transport options for the configured broker."""
    url = settings.effective_broker_url
    if url.startswith("filesystem://"):
        folder = settings.broker_folder
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    if url.startswith(("redis://", "rediss://")):
        # Longer than any task runs (dispatch_due stops at its time budget), so a
        # slow task's message is not handed to a second worker while it runs.
        return {"visibility_timeout": 3600}
    return {}


_FOLDER_OPTIONS = ("data_folder_in", "data_folder_out", "processed_folder", "control_folder")


def ensure_broker_folders(celery: Celery) -> None:
    """Create the file broker's folders, if that is the broker; called before use, not
    at import, so importing this module writes nothing to the working directory."""
    options = celery.conf.broker_transport_options or {}
    for key in _FOLDER_OPTIONS:
        if key in options:
            Path(options[key]).mkdir(parents=True, exist_ok=True)


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from ``settings``."""
    app = Celery("dispatcher", broker=settings.effective_broker_url, include=["dispatcher.tasks"])
    app.conf.update(
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE_DISPATCH,
        task_routes={
            TASK_DISPATCH: {"queue": QUEUE_DISPATCH},
            TASK_SWEEP: {"queue": QUEUE_DISPATCH},
            TASK_WEBHOOKS: {"queue": QUEUE_WEBHOOKS},
        },
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Said, not left to Celery's default (which Celery 6 turns to True): a task
        # running when the broker goes away carries on; what it claimed and sent is
        # in the database, and its wake-up message is redelivered anyway. (True
        # would only try to cancel threads, which the thread pool cannot.)
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_pool="threads",
        worker_concurrency=settings.worker_concurrency,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        enable_utc=True,
        # Each worker also consumes its own queue, `<node name>.dq2`: the heartbeat
        # task sent there proves this very worker takes messages off the broker.
        worker_direct=True,
    )
    return app


def ignore_answered_warnings() -> None:
    """Stop Celery's warning, on every broker reconnect, that the default of
    ``worker_cancel_long_running_tasks_on_connection_loss`` will change: ``make_celery``
    sets it, so an operator's log after a broker restart (docs/soak.md) need not carry
    the same paragraph from every worker. Called once the worker's logging is set up,
    which puts Celery's own "always show" filter first."""
    warnings.filterwarnings(
        "ignore",
        message=r"\s*In Celery 5\.1 we introduced an optional breaking change",
        category=CPendingDeprecationWarning,
    )


def send_heartbeat(celery: Celery, node: str, *, expires_s: float) -> None:
    """Send the heartbeat task to worker ``node``'s own direct queue.

    No publish retries: a broker that is away shows as a stale ``consumed_at``, which
    is the signal, and the sweeper thread must not block on it.
    """
    from celery.utils.nodenames import worker_direct

    ensure_broker_folders(celery)
    celery.send_task(
        TASK_HEARTBEAT, args=[node], queue=worker_direct(node).name, expires=expires_s, retry=False
    )


def worker_queues(lanes: tuple[str, ...]) -> list[str]:
    """The queues a worker serving ``lanes`` consumes: their wake-up queues, high
    first, then the webhook queue, unless the worker serves the high lane alone (a
    dedicated OTP worker keeps every thread for OTPs)."""
    queues = [LANE_QUEUES[lane] for lane in lanes]
    if set(lanes) != {"high"}:
        queues.append(QUEUE_WEBHOOKS)
    return queues


def awake_key(lane: Priority) -> str:
    """The Redis key a dispatch loop sets while a claim in ``lane`` is coming."""
    return f"dispatcher.awake.{lane.queue}"


class CeleryWaker:
    """Wakes workers with messages on a lane's queue, and counts those waiting."""

    def __init__(self, celery: Celery) -> None:
        self.app = celery
        self._lock = threading.Lock()
        self._redis: redis.Redis | None = None
        self._count_again_at = 0.0

    def __call__(self, count: int, lane: Priority = Priority.NORMAL) -> None:
        ensure_broker_folders(self.app)
        for _ in range(count):
            self.app.send_task(TASK_DISPATCH, queue=lane.queue, expires=WAKE_EXPIRES_S)

    def webhooks(self) -> int:
        """Wake one worker to deliver due webhooks unless a wake-up already waits for
        them; returns how many were sent (0 or 1)."""
        if self._pending_in(QUEUE_WEBHOOKS):
            return 0
        ensure_broker_folders(self.app)
        self.app.send_task(TASK_WEBHOOKS, queue=QUEUE_WEBHOOKS, expires=WAKE_EXPIRES_S)
        return 1

    def pending(self, lane: Priority = Priority.NORMAL) -> int:
        """Messages waiting in a lane's queue: ``waiting`` where it can tell, else on a
        connection of its own (declared passively: never creates the queue)."""
        return self._pending_in(lane.queue)

    def _pending_in(self, queue: str) -> int:
        count = self._waiting_in(queue)
        if count is not None:
            return count
        with self.app.connection_for_read() as connection:
            return _waiting(connection, queue)

    def waiting(self, lane: Priority = Priority.NORMAL) -> int | None:
        """``pending`` made cheap enough for producers to ask before every wake-up.

        On Redis one round trip on a client kept for it (kombu's own count opens a
        client and a transaction each time, which cost more than the message it
        might spare); on the file broker kombu's count; on AMQP None, as a fresh
        connection per job would cost more than the message, and a pooled channel
        must not be risked (the broker closes a channel whose passive declare
        finds no queue).
        """
        return self._waiting_in(lane.queue)

    def awake(self, lane: Priority = Priority.NORMAL) -> bool | None:
        """Whether a worker's dispatch loop has marked ``lane`` awake: a claim follows
        any commit made now (``dispatcher.service.loop``). None where the broker is not
        Redis or cannot answer: then wake as ever."""
        url = self._redis_url()
        if url is None or time.monotonic() < self._count_again_at:
            return None
        try:
            return bool(self._redis_client(url).exists(awake_key(lane)))
        except redis.RedisError:
            log.debug("could not read the awake mark", exc_info=True)
            self._count_again_at = time.monotonic() + COUNT_RETRY_AFTER_S
            return None

    def mark_awake(self, lanes: tuple[Priority, ...], ttl_s: float) -> None:
        """Mark ``lanes`` awake for ``ttl_s`` (a dispatch loop lingering with a free sender)."""
        url = self._redis_url()
        if url is None:
            return
        with self._redis_client(url).pipeline(transaction=False) as pipe:
            for lane in lanes:
                pipe.set(awake_key(lane), b"1", px=max(int(ttl_s * 1000), 1))
            pipe.execute()

    def clear_awake(self, lanes: tuple[Priority, ...]) -> None:
        """Take the mark off ``lanes``: producers send wake-ups again."""
        url = self._redis_url()
        if url is None:
            return
        self._redis_client(url).delete(*(awake_key(lane) for lane in lanes))

    def _redis_url(self) -> str | None:
        url = str(self.app.conf.broker_url or "")
        return url if url.startswith(("redis://", "rediss://")) else None

    def _waiting_in(self, queue: str) -> int | None:
        url = self._redis_url()
        if url is not None:
            if time.monotonic() < self._count_again_at:
                return None
            # kombu keeps a queue's messages in one list per priority step.
            keys = [queue] + [f"{queue}{RedisChannel.sep}{step}" for step in PRIORITY_STEPS if step]
            try:
                with self._redis_client(url).pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.llen(key)
                    return sum(int(n) for n in pipe.execute())
            except redis.RedisError:
                # Not counting only costs a message; a Redis in trouble must not
                # slow every send() by a timeout, so leave it alone for a while.
                log.debug("could not count waiting wake-ups", exc_info=True)
                self._count_again_at = time.monotonic() + COUNT_RETRY_AFTER_S
                return None
        ensure_broker_folders(self.app)
        # app.pool is a kombu ConnectionPool (typed as a producer pool by the stubs).
        pool = cast(ConnectionPool, self.app.pool)
        with pool.acquire(block=True) as connection:
            if not isinstance(connection.transport, VirtualTransport):
                return None
            # A virtual channel's own count: an empty queue is 0, not an exception.
            channel: Any = connection.default_channel
            return int(channel._size(queue))

    def _redis_client(self, url: str) -> redis.Redis:
        with self._lock:
            if self._redis is None:
                # The broker's own TLS options (a private CA, client certificates)
                # use redis-py's names, as kombu passes them on to it.
                tls = self.app.conf.broker_use_ssl
                options = dict(tls) if isinstance(tls, dict) and url.startswith("rediss") else {}
                self._redis = redis.Redis.from_url(
                    url,
                    socket_timeout=COUNT_TIMEOUT_S,
                    socket_connect_timeout=COUNT_TIMEOUT_S,
                    **options,
                )
            return self._redis

    def close(self) -> None:
        """Close the client ``waiting`` keeps (the app's connections are the app's)."""
        with self._lock:
            if self._redis is not None:
                self._redis.close()
                self._redis = None


def _waiting(connection: Connection, queue: str) -> int:
    # queue_declare is on every kombu channel, but typed only on AMQP's.
    channel: Any = connection.default_channel
    try:
        declared = channel.queue_declare(queue, passive=True)
    except Exception as exc:
        # A queue nobody has declared yet holds nothing. py-amqp gives the code as
        # 404, kombu's virtual channels as "404".
        if str(getattr(exc, "reply_code", "")) == "404":
            return 0
        raise
    return int(declared.message_count)
