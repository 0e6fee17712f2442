"""The composition root: settings -> database, gateway client, Celery app and services.

One per process, built on first use from the process's settings (the environment's,
or a Settings object handed to ``use``), for the tasks, the CLI, the HTTP entry
points and ``send()``. Nothing else reads the environment or builds these parts
(docs/design.md section 6).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from celery import Celery

from dispatcher.celery_app import CeleryWaker, make_celery
from dispatcher.config import Settings, get_settings, load_settings
from dispatcher.domain import redaction
from dispatcher.domain.lanes import Priority
from dispatcher.domain.throttle import Every
from dispatcher.service.dispatcher import Dispatcher, Waker

log = logging.getLogger(__name__)

_lock = threading.RLock()
_service: Dispatcher | None = None
_override: Settings | None = None
_celery: Celery | None = None
_waker: CeleryWaker | None = None
_schema_ready = False


def settings() -> Settings:
    """The process's settings (the environment's, unless ``configure`` changed some)."""
    return _override or get_settings()


def configure(**overrides: object) -> Settings:
    """Change some settings for this process (command-line options that win over the
    environment, such as ``dispatcher worker --lanes``), validated like the rest."""
    return use(load_settings(**overrides))


def use(current: Settings) -> Settings:
    """Make ``current`` this process's settings: the parts built so far are closed and
    built again from it on first use (the demo hands its own settings this way)."""
    global _override
    with _lock:
        reset()
        _override = current
    return current


def celery() -> Celery:
    """The process's Celery app, built from the settings on first use."""
    global _celery
    with _lock:
        if _celery is None:
            _celery = make_celery(settings())
        return _celery


def _celery_waker() -> CeleryWaker:
    global _waker
    with _lock:
        if _waker is None:
            _waker = CeleryWaker(celery())
        return _waker


class _LazyCeleryWaker:
    """The Celery waker, built on first use: a process that only reads never builds
    a Celery app nor opens a broker connection."""

    def __call__(self, count: int, lane: Priority = Priority.NORMAL) -> None:
        _celery_waker()(count, lane)

    def pending(self, lane: Priority = Priority.NORMAL) -> int:
        return _celery_waker().pending(lane)

    def waiting(self, lane: Priority = Priority.NORMAL) -> int | None:
        return _celery_waker().waiting(lane)

    def webhooks(self) -> int:
        return _celery_waker().webhooks()

    def awake(self, lane: Priority = Priority.NORMAL) -> bool | None:
        return _celery_waker().awake(lane)

    def mark_awake(self, lanes: tuple[Priority, ...], ttl_s: float) -> None:
        _celery_waker().mark_awake(lanes, ttl_s)

    def clear_awake(self, lanes: tuple[Priority, ...]) -> None:
        _celery_waker().clear_awake(lanes)


def service(waker: Waker | None = None) -> Dispatcher:
    """The process's Dispatcher, built on first use."""
    global _service
    with _lock:
        if _service is None:
            current = settings()
            for secret in current.secrets():
                redaction.register_secret(secret)
            _service = Dispatcher(current, waker=waker or _LazyCeleryWaker())
        return _service


def producer() -> Dispatcher:
    """The process's Dispatcher for ``send()``: its database checked once to hold this
    version's schema, an embedded SQLite one brought up to date, a server one refused
    in one line naming it and ``dispatcher migrate`` (``migrate.ensure_current``)."""
    global _schema_ready
    current = service()
    if not _schema_ready:
        from dispatcher.persistence import migrate

        with _lock:
            if not _schema_ready:
                migrate.ensure_current(current.db, upgrade_sqlite=True)
                _schema_ready = True
    return current


LANE_CHECK_S = 60.0
"""How long ``send()`` trusts its last look at which lanes have a consuming worker."""
# (when looked, consuming workers per lane, lanes already warned about since then)
_lanes_seen: tuple[float, dict[str, dict[str, int]], set[str]] | None = None


def unserved_lane_news(priority: str) -> bool:
    """Whether to warn that no live worker consumes ``priority``'s lane: true once per
    lane per look at the workers' heartbeats, and a look at most every
    ``LANE_CHECK_S`` (one read a minute, not one per send; one warning a minute, not
    one per job, for a producer sending thousands while its workers are away)."""
    global _lanes_seen
    now = time.monotonic()
    with _lock:
        seen = _lanes_seen
    if seen is None or now - seen[0] > LANE_CHECK_S:
        fresh = (now, service().lanes_served(), set[str]())
        with _lock:
            _lanes_seen = seen = fresh
    if seen[1].get(priority, {}).get("consuming", 0) > 0:
        return False
    with _lock:
        if priority in seen[2]:
            return False
        seen[2].add(priority)
    return True


def reset() -> None:
    """Forget the process's service (after settings change, in tests and the demo)."""
    global _service, _override, _celery, _waker, _schema_ready, _lanes_seen
    with _lock:
        _schema_ready = False
        _lanes_seen = None
        if _service is not None:
            _service.close()
        if _waker is not None:
            _waker.close()
        _service = None
        _override = None
        _celery = None
        _waker = None
    get_settings.cache_clear()


def after_fork() -> None:
    """Make the inherited service safe to use in a forked child."""
    if _service is not None:
        _service.db.after_fork()


FAILURE_LOG_INTERVAL_S = 60.0
"""At most one logged failure of each kind this often in ``sweep_forever``."""


def sweep_forever(
    interval_s: float, stop: threading.Event, *, tick: Callable[[], None] | None = None
) -> None:
    """Sweep every ``interval_s`` (with jitter, so workers spread out) until ``stop``.

    Each round also runs the rollup when ``DISPATCHER_ROLLUP_INTERVAL_S`` has passed,
    and ``tick`` (a worker's heartbeat), each guarded so one failing spares the others.
    """
    next_rollup = time.monotonic()
    # While the database is away each round fails the same way: one traceback a
    # minute per kind says so (the rest at debug level), not two a second.
    told = {kind: Every(FAILURE_LOG_INTERVAL_S) for kind in ("sweep", "rollup", "heartbeat")}

    def failed(kind: str, level: int, message: str, *args: object) -> None:
        if told[kind].due():
            log.log(level, message + " (said at most once a minute)", *args, exc_info=True)
        else:
            log.debug(message, *args, exc_info=True)

    while not stop.wait(interval_s * random.uniform(0.8, 1.2)):
        try:
            service().sweep()
        except Exception:
            failed("sweep", logging.ERROR, "sweep failed; trying again every %g s", interval_s)
        if time.monotonic() >= next_rollup:
            next_rollup = time.monotonic() + settings().rollup_interval_s
            try:
                service().rollup()
            except Exception:
                failed("rollup", logging.ERROR, "rollup failed; the dashboard's figures are stale")
        if tick is not None:
            try:
                tick()
            except Exception:
                failed("heartbeat", logging.WARNING, "heartbeat failed")
