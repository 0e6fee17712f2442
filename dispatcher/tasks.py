"""Celery tasks: thin wrappers that call the service. Names are stable on the wire."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import (
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from dispatcher import runtime
from dispatcher.celery_app import TASK_DISPATCH, TASK_SWEEP, app

log = logging.getLogger(__name__)

# A task hands its thread back after this long, so a long backlog is shared with
# whatever else is queued instead of pinning threads indefinitely.
DISPATCH_BUDGET_S = 30.0


_shutting_down = threading.Event()


@app.task(name=TASK_DISPATCH, ignore_result=True)
def dispatch() -> dict[str, Any]:
    """Claim and send due batches until none is due or the time budget is spent."""
    service = runtime.service()
    report = service.dispatch_due(budget_s=DISPATCH_BUDGET_S, stop=_shutting_down)
    webhooks = 0 if _shutting_down.is_set() else service.webhooks.deliver_due(budget_s=10.0)
    return {"batches": report.batches, "outcomes": dict(report.outcomes), "webhooks": webhooks}


@app.task(name=TASK_SWEEP, ignore_result=True)
def sweep() -> dict[str, int]:
    """Run one sweep: abandoned batches to unknown, wake-ups for due work."""
    return runtime.service().sweep()


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # Connections inherited across fork() are shared sockets; never reuse them.
    runtime.after_fork()


_sweeper_stop = threading.Event()


@worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    # Each worker sweeps for itself: every step is a compare-and-set, so several
    # sweepers are safe, and the sweep keeps running when the broker has lost
    # every message (the case it exists for).
    interval_s = runtime.settings().sweep_interval_s
    thread = threading.Thread(
        target=runtime.sweep_forever, args=(interval_s, _sweeper_stop), name="sweeper", daemon=True
    )
    thread.start()


@worker_shutting_down.connect
def _stop_claiming(**_: Any) -> None:
    # Warm shutdown: calls in flight finish and are recorded; nothing new is claimed.
    _shutting_down.set()


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    _sweeper_stop.set()
