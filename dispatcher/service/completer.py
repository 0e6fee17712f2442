"""The completer: replies of a process's threads written several per transaction.

A thread that has made its HTTP call hands the reply here and goes on to its next
claim; one thread per process writes whatever replies are waiting in one
transaction (``ReplyRecorder.record_many``), then the ones that arrived meanwhile,
and so on. Nothing waits on a timer: under load a flush carries every reply that
came in while the last one was written, and with one reply waiting it is written at
once, so a finished call is unrecorded only for as long as the replies before it
take to write (docs/design.md, section 3, guarantee 3). The model is River's batch
completer (docs/performance.md, "Issue 15").

A flush the database refuses whole is written again reply by reply, each retried
while the database is away and salvaged recipient by recipient when refused
(``ReplyRecorder.record``), so batching never loses what a single write would keep.
Each reply handed in gets a ``Recorded``: the thread waits on it when it must see
the reply's effect before going on (a requeue), and a dispatch run waits on all of
its own before it returns, so a Celery task is acknowledged only once its replies
are on record, and a warm shutdown ends with none left unwritten.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from dispatcher.gateway.client import Submission
from dispatcher.service.claim import Claim
from dispatcher.service.reply import ReplyRecorder

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Recorded:
    """A reply handed to the completer: done once it is written, or given up."""

    claim: Claim
    submission: Submission
    worker: str
    budget_s: float
    _done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    """Why the reply could not be written (its budget spent with the database away)."""

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until written or given up; False if ``timeout_s`` passed first."""
        return self._done.wait(timeout_s)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self._done.set()


class Completer:
    """Writes the replies of one process's threads, up to ``max_batch`` per transaction.

    Its thread starts with the first reply handed in and stops at ``close``, which
    writes every reply still waiting first.
    """

    def __init__(self, replies: ReplyRecorder, *, max_batch: int) -> None:
        self.replies = replies
        self.max_batch = max_batch
        self._waiting: deque[Recorded] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False

    def submit(
        self, claim: Claim, submission: Submission, *, worker: str, budget_s: float
    ) -> Recorded:
        """Hand a reply in to be written; returns what to wait on.

        After ``close`` (a process shutting down) the reply is written on the caller's
        thread instead, so none is ever left behind.
        """
        item = Recorded(claim, submission, worker, budget_s)
        with self._cond:
            if not self._closing:
                self._waiting.append(item)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="reply-completer", daemon=True
                    )
                    self._thread.start()
                self._cond.notify()
                return item
        self._write([item])
        return item

    def close(self, timeout_s: float | None = None) -> bool:
        """Write every reply still waiting, then stop; False if ``timeout_s`` passed first."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is None:
            return True
        thread.join(timeout_s)
        return not thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closing:
                    self._cond.wait()
                if not self._waiting:
                    return
                group = [
                    self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))
                ]
            self._write(group)

    def _write(self, group: list[Recorded]) -> None:
        try:
            self._write_group(group)
        except BaseException as exc:  # pragma: no cover - a bug; never strand a waiter
            log.exception("the reply completer failed; %d replies left to the sweeper", len(group))
            for item in group:
                if not item.done:
                    item._finish(exc)

    def _write_group(self, group: list[Recorded]) -> None:
        if len(group) > 1:
            try:
                self.replies.record_many(
                    [(item.claim, item.submission, item.worker) for item in group]
                )
            except Exception as exc:
                # One reply's refused value, a deadlock with a sweep, or the database
                # away: each is written again alone, with its own retries and salvage.
                log.info(
                    "a flush of %d replies failed (%s); writing them one by one",
                    len(group),
                    type(exc).__name__,
                )
            else:
                for item in group:
                    item._finish()
                return
        # The budgets run from the first failure, shared: a database that stays
        # away costs one budget in all, not one per reply.
        started = time.monotonic()
        for item in group:
            left_s = max(item.budget_s - (time.monotonic() - started), 0.0)
            try:
                self.replies.record(
                    item.claim, item.submission, worker=item.worker, budget_s=left_s
                )
            except Exception as exc:
                item._finish(exc)
            else:
                item._finish()
