"""Waking workers: how many wake-ups each lane gets, without flooding the broker.

The database is the queue; a wake-up only tells a worker to look (docs/design.md,
"Guarantees"). So a lost wake-up is repaired by the sweeper, and a wake-up beyond
what the workers can use only waits in the broker: every count here is capped by
``DISPATCHER_WAKE_FANOUT`` and, when the waker can tell, by those already waiting.
"""

from __future__ import annotations

import logging
from typing import Protocol

from dispatcher.config import Settings
from dispatcher.domain.lanes import Priority
from dispatcher.domain.statuses import BreakerState
from dispatcher.domain.throttle import Every
from dispatcher.domain.times import utcnow
from dispatcher.persistence import store
from dispatcher.persistence.db import Database

log = logging.getLogger(__name__)

FAILURE_LOG_INTERVAL_S = 60.0
"""At most one warning this often while wake-ups fail (a broker away): every send()
meets the same outage, and the log should say so once, not once per job."""


class Waker(Protocol):
    """Something that wakes ``count`` workers serving ``lane`` to look for due work."""

    def __call__(self, count: int, lane: Priority = Priority.NORMAL) -> None: ...


def no_wake(count: int, lane: Priority = Priority.NORMAL) -> None:
    """A waker for processes that only write (tests, imports): wakes nobody."""


class Wakes:
    """Wake-ups for the use cases: after an enqueue, an operator retry or resume, a
    dispatch run cut short, and each sweep.

    The waker may also have ``pending(lane)`` and ``waiting(lane)`` (wake-ups in the
    lane's queue, counted two ways) and ``webhooks()``; each is optional.
    """

    def __init__(self, settings: Settings, db: Database, waker: Waker) -> None:
        self.settings = settings
        self.db = db
        self.waker = waker
        self._failure_log = Every(FAILURE_LOG_INTERVAL_S)

    def after_commit(self, batches: int, lane: Priority) -> None:
        """Wake workers for a job just committed, counting wake-ups already waiting.

        A wake-up still waiting in the lane's queue now will start its task after
        this job's commit, and a task claims every due batch of its lane, not only
        the batches of the job that sent it; so this job needs only as many more as
        its batches exceed those waiting. Under a stream of one-recipient jobs this
        spares a message, a task and an empty claim per job once workers fall
        behind, and bounds the queue; while workers keep up nothing waits and every
        job sends its own. Wake-ups that vanish (a broker flush, expiry) are the
        sweeper's, as before. A one-batch job sends none while a worker's dispatch
        loop has its lane marked awake (``loop_awake``).
        """
        if batches == 1 and self.loop_awake(lane):
            return
        self.beyond_waiting(batches, lane, ask="waiting")

    def loop_awake(self, lane: Priority) -> bool:
        """Whether a worker's dispatch loop has marked ``lane`` awake (the waker's
        ``awake``): a claim then follows this commit within a poll, so a one-batch
        job needs no wake-up (``dispatcher.service.loop``). A job of several batches
        still wakes as many workers as it can use."""
        awake = getattr(self.waker, "awake", None)
        if awake is None:
            return False
        try:
            return bool(awake(lane))
        except Exception:
            log.debug("could not read the awake mark", exc_info=True)
            return False

    def beyond_waiting(self, wanted: int, lane: Priority, *, ask: str) -> int:
        """Send ``wanted`` wake-ups (at most the fan-out) less those already waiting in
        the lane's queue, counted by the waker's ``ask`` method; returns how many."""
        count = min(wanted, self.settings.wake_fanout)
        waiting = self.pending(lane, ask=ask)
        if waiting is not None:
            count = max(count - waiting, 0)
        self.wake(count, lane)
        return count

    def wake(self, batches: int, lane: Priority = Priority.NORMAL) -> None:
        """Wake up to the fan-out's workers for ``batches`` in ``lane``; never raises."""
        count = min(batches, self.settings.wake_fanout)
        if count <= 0:
            return
        try:
            self.waker(count, lane)
        except Exception as exc:
            # The job is committed; the sweeper will wake a worker for it. Failing
            # the producer here would invite a resubmission and a double send.
            log.debug("could not wake a worker", exc_info=True)
            if self._failure_log.due():
                log.warning(
                    "could not wake a worker (%s); the sweeper will pick the work up "
                    "(said at most once a minute; the traceback at debug level)",
                    type(exc).__name__,
                )

    def due(self) -> int:
        """Wake workers for due work nobody is on, without flooding the broker.

        A woken task keeps claiming until nothing is due, so wake-ups beyond
        ``wake_fanout`` would only queue up; those already waiting in the broker
        count against it. Nothing is woken while paused, and during an outage only
        the one probe, when its time comes.
        """
        now = utcnow()
        with self.db.transaction() as session:
            control = store.get_control(session)
            if control.paused:
                return 0
            due = store.count_due_by_lane(session, now=now)
            if not due:
                return 0
            wanted = {
                Priority.of_lane(lane): min(n, self.settings.wake_fanout)
                for lane, n in sorted(due.items())
            }
            if BreakerState(control.breaker_state) is not BreakerState.CLOSED:
                retry_at = control.breaker_retry_at
                if retry_at is not None and retry_at > now:
                    return 0
                # One probe, in the highest lane with work.
                wanted = {next(iter(wanted)): 1}
        woken = 0
        # Each lane has its own queue: a worker dedicated to one lane only hears its own.
        for lane, count in wanted.items():
            woken += self.beyond_waiting(count, lane, ask="pending")
        return woken

    def webhooks(self) -> int:
        """Wake a worker to deliver due webhooks, through the waker's ``webhooks`` (which
        sends none while one waits); returns how many were sent."""
        wake = getattr(self.waker, "webhooks", None)
        if wake is None:
            return 0
        try:
            return int(wake())
        except Exception:
            log.warning("could not wake a webhook worker; the next sweep will", exc_info=True)
            return 0

    def pending(self, lane: Priority, *, ask: str = "pending") -> int | None:
        """Wake-ups waiting in ``lane``'s queue by the waker's ``ask`` method; None
        when the waker cannot tell (then callers wake as if none waited)."""
        pending = getattr(self.waker, ask, None)
        if pending is None:
            return None
        try:
            count = pending(lane)
        except Exception:
            log.debug("could not count waiting wake-ups", exc_info=True)
            return None
        return None if count is None else int(count)
