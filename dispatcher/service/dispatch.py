"""Dispatch: claim a due batch, submit it to the gateway, record the reply. Owns transactions.

The order of commits is the product's guarantees (docs/design.md, "Guarantees"):

1. ``enqueue`` commits the job, its recipients, batches and history in one
   transaction, and only then wakes a worker: nothing acknowledged is lost, and
   a lost wake-up is repaired by the sweeper (``dispatcher.service.enqueue``).
2. ``dispatch_one`` commits the claim (batch ``submitting``, recipients
   ``submitting``, attempt row in flight) before the HTTP call: a second worker
   finds nothing to claim, and a worker killed mid-call leaves evidence the
   sweeper turns into ``unknown``, never into a resend (``dispatcher.service.claim``).
3. The reply is written, attempt and recipients together, in one transaction,
   retried while the database is away, and logged meanwhile so no accepted
   gateway ID is lost. A dispatch run hands its replies to the process's
   completer, which writes those of all its threads several per transaction
   (``dispatcher.service.completer``); the run returns only once its own are on
   record. Its values are fitted to their columns first
   (``dispatcher.persistence.columns``), and a write the database refuses all the
   same is made recipient by recipient (``dispatcher.persistence.salvage``) rather
   than left to the sweeper (``dispatcher.service.reply``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from dispatcher.domain.limits import CallLimiter
from dispatcher.gateway.client import GatewayClient, Submission
from dispatcher.gateway.protocol import Outcome
from dispatcher.persistence.db import Database
from dispatcher.service import claim as claims
from dispatcher.service.claim import Claim
from dispatcher.service.completer import Completer, Recorded
from dispatcher.service.control import Controls
from dispatcher.service.reply import RECORD_RETRY_BUDGET_S, ReplyRecorder
from dispatcher.service.wake import Wakes

log = logging.getLogger(__name__)

_REQUEUING = frozenset({Outcome.TRANSIENT, Outcome.NO_CREDIT})
# Replies that may pause dispatch or move the breaker (dispatcher.service.control):
# the thread's next claim must see them, so it waits until they are written.
_GATING = _REQUEUING | {Outcome.LOGIN_INVALID}
# A run's replies handed to the completer are looked over this often, and those
# written dropped.
_PRUNE_AT = 64


@dataclass(slots=True)
class DispatchReport:
    """What a run of ``dispatch_due`` did."""

    batches: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class Dispatch:
    """Claims, submits and records batches; one per process, shared by its threads.

    ``client`` gives the gateway client (built on first use by the caller);
    ``limiter`` bounds the calls in flight and per second; ``wakes`` hands on work
    left due when a run stops early; ``completer``, when given, writes the replies
    of ``dispatch_due`` (``dispatch_one`` always writes its own).
    """

    def __init__(
        self,
        db: Database,
        *,
        controls: Controls,
        replies: ReplyRecorder,
        limiter: CallLimiter,
        lanes: tuple[int, ...],
        client: Callable[[], GatewayClient],
        wakes: Wakes,
        completer: Completer | None = None,
    ) -> None:
        self.db = db
        self.completer = completer
        self.controls = controls
        self.replies = replies
        self.limiter = limiter
        self.lanes = lanes
        self.client = client
        self.wakes = wakes

    def claim(self, *, worker: str) -> Claim | None:
        """Claim the oldest due batch and commit the claim with its in-flight attempt."""
        return claims.claim(self.db, self.controls, lanes=self.lanes, worker=worker)

    def claim_many(self, *, worker: str, limit: int) -> list[Claim]:
        """Claim up to ``limit`` due batches in one transaction (``claim.claim_many``)."""
        return claims.claim_many(
            self.db, self.controls, lanes=self.lanes, worker=worker, limit=limit
        )

    def submit(self, claim: Claim) -> Submission:
        """Make the HTTP call for a claimed batch."""
        return self.client().submit([r.number for r in claim.recipients], claim.message)

    def dispatch_one(
        self, *, worker: str, record_budget_s: float = RECORD_RETRY_BUDGET_S
    ) -> Submission | None:
        """Claim, submit and record one batch; None when nothing is due."""
        return self._dispatch_next(worker, record_budget_s, None)[0]

    def _dispatch_next(
        self, worker: str, record_budget_s: float, handed: list[Recorded] | None
    ) -> tuple[Submission | None, bool]:
        """``dispatch_one``, and whether another batch was due when this one was claimed.

        With ``handed``, the reply goes to the completer and is appended there."""
        # The limiter's wait happens before the claim, never inside it.
        with self.limiter.slot():
            claim = self.claim(worker=worker)
            if claim is None:
                return None, False
            submission = self.submit(claim)
        if handed is None:
            self.replies.record(claim, submission, worker=worker, budget_s=record_budget_s)
            requeued = requeues(submission)
        else:
            recorded, requeued = self.hand_in(
                claim, submission, worker=worker, record_budget_s=record_budget_s
            )
            if recorded is not None:
                handed.append(recorded)
                if len(handed) >= _PRUNE_AT:
                    # A long run would otherwise hold every claim and reply it made
                    # until it returns; only those still unwritten or failed matter.
                    handed[:] = [r for r in handed if not r.done or r.error is not None]
        return submission, claim.more_due or requeued

    def hand_in(
        self, claim: Claim, submission: Submission, *, worker: str, record_budget_s: float
    ) -> tuple[Recorded | None, bool]:
        """Have a reply written: by the completer if there is one, else here; returns
        what to wait on (None: written already) and whether it put work back.

        A reply that may pause dispatch, move the breaker or put work back is waited
        for, so the caller's next claim sees it.
        """
        requeued = requeues(submission)
        if self.completer is None:
            self.replies.record(claim, submission, worker=worker, budget_s=record_budget_s)
            return None, requeued
        recorded = self.completer.submit(claim, submission, worker=worker, budget_s=record_budget_s)
        if gates(claim, submission):
            recorded.wait()
        return recorded, requeued

    def dispatch_due(
        self,
        *,
        worker: str,
        max_batches: int = 10_000,
        budget_s: float = 60.0,
        stop: threading.Event | None = None,
        record_budget_s: float = RECORD_RETRY_BUDGET_S,
    ) -> DispatchReport:
        """Work through due batches until none is due, ``max_batches``, ``budget_s`` or ``stop``.

        ``stop`` is checked before each claim, so a worker shutting down finishes the
        call in flight and claims nothing new. ``record_budget_s`` is how long each
        reply's write is retried while the database is away.
        """
        handed: list[Recorded] = []
        try:
            report = self._run(worker, max_batches, budget_s, stop, record_budget_s, handed)
        except BaseException:
            for recorded in handed:
                recorded.wait()
            raise
        _wait_recorded(handed)
        return report

    def _run(
        self,
        worker: str,
        max_batches: int,
        budget_s: float,
        stop: threading.Event | None,
        record_budget_s: float,
        handed: list[Recorded],
    ) -> DispatchReport:
        report = DispatchReport()
        deadline = time.monotonic() + budget_s
        while report.batches < max_batches and time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                break
            submission, more_due = self._dispatch_next(worker, record_budget_s, handed)
            if submission is None:
                return report
            report.batches += 1
            for outcome in submission.outcomes:
                report.outcomes[outcome.outcome] += 1
            if not more_due:
                # Nothing else was due when this batch was claimed. Work committed
                # since has a wake-up of its own, or shares one still waiting in the
                # broker, which starts a task after that commit; so an empty claim
                # here would find only what those tasks will.
                return report
        # Stopped with work perhaps still due (time budget, batch limit, shutdown):
        # jobs that shared this task's wake-up instead of sending their own must
        # not wait for the sweeper, so hand what is due to fresh wake-ups.
        try:
            self.wakes.due()
        except Exception:
            log.warning("could not hand due work on; the sweeper will", exc_info=True)
        return report


def gates(claim: Claim, submission: Submission) -> bool:
    """Whether a reply may pause dispatch or move the breaker: claims after it must
    wait until it is written (``dispatcher.service.control``)."""
    return claim.probe or any(o.outcome in _GATING for o in submission.outcomes)


def requeues(submission: Submission) -> bool:
    """Whether a reply puts work back (no credit, a transient error in an outage), which
    may have made something due at once: the caller looks again once it is written."""
    return any(o.outcome in _REQUEUING for o in submission.outcomes)


def _wait_recorded(handed: list[Recorded]) -> None:
    """Wait until every reply of a run is written; raise the first that was not, as
    writing it on the run's own thread would have."""
    for recorded in handed:
        recorded.wait()
    for recorded in handed:
        if recorded.error is not None:
            raise recorded.error
