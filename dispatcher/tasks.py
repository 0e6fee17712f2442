"""Celery tasks: thin wrappers that call the service. Names are stable on the wire.

They are shared tasks: each Celery app that includes this module (the one the
composition root builds, ``dispatcher.runtime.celery``) gets them, so no app is built
at import.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from celery import shared_task
from celery.signals import (
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from dispatcher import runtime
from dispatcher.celery_app import (
    TASK_DISPATCH,
    TASK_HEARTBEAT,
    TASK_SWEEP,
    TASK_WEBHOOKS,
    ignore_answered_warnings,
    send_heartbeat,
)
from dispatcher.domain.workers import STALE_AFTER_BEATS
from dispatcher.service.heartbeat import Heartbeats
from dispatcher.service.loop import DispatchLoop

log = logging.getLogger(__name__)

# A task hands its thread back after this long, so a long backlog is shared with
# whatever else is queued instead of pinning threads indefinitely.
DISPATCH_BUDGET_S = 30.0


_shutting_down = threading.Event()


@shared_task(name=TASK_DISPATCH, ignore_result=True)
def dispatch() -> dict[str, Any]:
    """Wake this worker's dispatch loop; without one, claim and send due batches until
    none is due or the time budget is spent."""
    loop = _loop
    if loop is not None and loop.running:
        loop.nudge()
        return {"nudged": True}
    service = runtime.service()
    report = service.dispatch_due(budget_s=DISPATCH_BUDGET_S, stop=_shutting_down)
    _beat.add_batches(report.batches)
    return {"batches": report.batches, "outcomes": dict(report.outcomes)}


@shared_task(name=TASK_WEBHOOKS, ignore_result=True)
def deliver_webhooks() -> int:
    """Deliver due completion webhooks on at most ``webhook_threads`` of this worker's
    threads; returns the tries made (0 at once when those threads are all busy)."""
    if _shutting_down.is_set():
        return 0
    return runtime.service().webhooks.deliver_due(budget_s=DISPATCH_BUDGET_S, stop=_shutting_down)


@shared_task(name=TASK_SWEEP, ignore_result=True)
def sweep() -> dict[str, int]:
    """Run one sweep: abandoned batches to unknown, wake-ups for due work."""
    return runtime.service().sweep()


@shared_task(name=TASK_HEARTBEAT, ignore_result=True)
def heartbeat(node: str) -> None:
    """Record that worker ``node`` consumed from the broker (sent to its own queue)."""
    Heartbeats(runtime.service().db, node).consumed()


class _WorkerBeat:
    """This worker's heartbeat, driven by the sweeper thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches = 0
        self.heartbeats: Heartbeats | None = None
        self.node = ""
        self.next_at = 0.0

    def add_batches(self, count: int) -> None:
        with self.lock:
            self.batches += count

    def start(self, node: str, queues: list[str]) -> None:
        self.node = node
        self.heartbeats = Heartbeats(runtime.service().db, node)
        self.heartbeats.started(
            hostname=socket.gethostname(), pid=os.getpid(), queues=",".join(sorted(queues))
        )
        # The first heartbeat task now, not an interval later: until one is consumed
        # the worker reads as not consuming (send() warns, the health check fails).
        self.tick()

    def tick(self) -> None:
        """Every heartbeat interval: write ``seen_at`` and send the heartbeat task."""
        if self.heartbeats is None or time.monotonic() < self.next_at:
            return
        interval_s = runtime.settings().heartbeat_interval_s
        self.next_at = time.monotonic() + interval_s
        with self.lock:
            batches = self.batches
        self.heartbeats.beat(batches=batches)
        send_heartbeat(runtime.celery(), self.node, expires_s=STALE_AFTER_BEATS * interval_s)

    def stop(self) -> None:
        if self.heartbeats is not None:
            with self.lock:
                batches = self.batches
            self.heartbeats.stopped(batches=batches)


_beat = _WorkerBeat()


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # Connections inherited across fork() are shared sockets; never reuse them.
    runtime.after_fork()


_sweeper_stop = threading.Event()
_loop: DispatchLoop | None = None


@worker_ready.connect
def _quiet_answered_warnings(**_: Any) -> None:
    ignore_answered_warnings()


@worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    # Each worker sweeps for itself: every step is a compare-and-set, so several
    # sweepers are safe, and the sweep keeps running when the broker has lost
    # every message (the case it exists for).
    node = getattr(sender, "hostname", None) or f"celery@{socket.gethostname()}"
    try:
        _beat.start(node, list(runtime.celery().amqp.queues.consume_from or {}))
    except Exception:
        log.exception("could not record this worker's heartbeat; carrying on without it")
    global _loop
    if runtime.settings().dispatch_loop:
        try:
            _loop = runtime.service().start_loop(on_batch=lambda: _beat.add_batches(1))
        except Exception:
            log.exception("could not start the dispatch loop; wake-ups run dispatch tasks")
    interval_s = runtime.settings().sweep_interval_s
    thread = threading.Thread(
        target=runtime.sweep_forever,
        args=(interval_s, _sweeper_stop),
        kwargs={"tick": _beat.tick},
        name="sweeper",
        daemon=True,
    )
    thread.start()


@worker_shutting_down.connect
def _stop_claiming(**_: Any) -> None:
    # Warm shutdown: calls in flight finish and are recorded; nothing new is claimed.
    _shutting_down.set()
    if _loop is not None:
        _loop.stop()


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    _sweeper_stop.set()
    if _loop is not None:
        _loop.stop()
        # A warm shutdown waits for the calls in flight and their replies as long as
        # the sweeper would before calling them lost: longer than a call can take
        # (DISPATCHER_SUBMITTING_TIMEOUT_S is checked against both hosts' timeouts).
        if not _loop.join(runtime.settings().submitting_timeout_s):
            log.error("calls still in flight at shutdown; the sweeper will mark them unknown")
    # Each dispatch task waits for its own replies before it returns; this is for
    # any left by a task the pool stopped early (docs/design.md, guarantee 3).
    try:
        completer = runtime.service().completer
        if completer is not None and not completer.close(timeout_s=60.0):
            log.error("replies still unwritten at shutdown; the sweeper will mark them unknown")
    except Exception:
        log.exception("could not write the replies left at shutdown")
    try:
        _beat.stop()
    except Exception:
        log.warning("could not record this worker's clean shutdown", exc_info=True)
