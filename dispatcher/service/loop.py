"""The dispatch loop: a worker process that keeps claiming, without a message per job.

One claimer thread per worker process claims due batches while it has a free
sender thread, and hands each to a sender, which makes the HTTP call and hands
the reply to the completer (``dispatcher.service.completer``). The commit order
is the one ``dispatcher.service.dispatch`` gives: each claim is committed, with its
in-flight attempt row, before its call.

When a claim finds nothing due the claimer lingers for ``DISPATCHER_DISPATCH_LINGER_S``,
claiming again every ``DISPATCHER_DISPATCH_POLL_S``. While it claims or lingers with a
free sender it marks its lanes *awake* (``Awake``): a producer that sees the mark
skips the wake-up message of a one-batch job, since a claim will find that job
within a poll (docs/design.md, section 3). The mark's one promise is that a claim
follows every commit that saw it, so the claimer clears it *before* its last look
and then sleeps until a wake-up (a Celery task calls ``nudge``). A claimer killed
with the mark set leaves it to expire (``AWAKE_TTL_S``); the jobs committed
meanwhile wait for the sweeper's wake-ups, as a lost wake-up always has; a loop that
stops (a warm shutdown) wakes workers for what is due on its way out instead. With
every sender busy for a poll the mark is cleared too, so producers wake other
workers. A claim that fails (the database away) is tried again after a pause that
neither a wake-up cuts short nor swallows; it never sends the loop to sleep.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from dispatcher.domain.lanes import Priority
from dispatcher.service.claim import Claim
from dispatcher.service.dispatch import Dispatch, gates

log = logging.getLogger(__name__)

# How long an awake mark outlives its last renewal: a claimer that died with it set
# costs the jobs committed meanwhile this long, plus a sweep, before their wake-up.
AWAKE_TTL_S = 1.0
# Renew the mark at most this often: one write to the broker per interval, not per claim.
AWAKE_RENEW_S = AWAKE_TTL_S / 4
# The most batches claimed in one statement: enough to fill a worker's free senders
# after a burst, few enough that one claim's transaction stays short.
MAX_CLAIM = 32
# After the broker refused a mark, try marking again only after this long.
MARK_RETRY_AFTER_S = 10.0
# After a claim fails (the database away), wait this long before the next.
CLAIM_FAILURE_PAUSE_S = 1.0


class Awake(Protocol):
    """Marks telling producers that a claim is coming in some lanes (on the broker)."""

    def mark_awake(self, lanes: tuple[Priority, ...], ttl_s: float) -> None: ...

    def clear_awake(self, lanes: tuple[Priority, ...]) -> None: ...


class DispatchLoop:
    """A worker process's claimer thread and ``senders`` sender threads.

    ``awake`` is None where the broker cannot hold the mark: then producers always
    send wake-ups, and the loop still saves a task and a claim per job that arrives
    while it works or lingers. ``on_batch`` is called once per batch sent (the
    worker's heartbeat count).
    """

    def __init__(
        self,
        dispatch: Dispatch,
        *,
        senders: int,
        lanes: tuple[Priority, ...],
        linger_s: float,
        poll_s: float,
        record_budget_s: float,
        worker: str,
        awake: Awake | None = None,
        on_batch: Callable[[], None] | None = None,
    ) -> None:
        self.dispatch = dispatch
        self.senders = senders
        self.lanes = lanes
        self.linger_s = linger_s
        self.poll_s = poll_s
        self.record_budget_s = record_budget_s
        self.worker = worker
        self.awake = awake
        self.on_batch = on_batch
        self._nudged = threading.Event()
        self.asleep = threading.Event()
        """Set while the claimer sleeps until a wake-up (``nudge``)."""
        self._stopping = threading.Event()
        self._free = threading.Condition()
        self._busy = 0
        self._gating = 0
        """Replies being written that may pause dispatch or open the breaker: the
        claimer waits for them, as a thread's own next claim would."""
        self._marked_at: float | None = None
        self._mark_again_at = 0.0
        self._may_be_marked = False
        self._executor = ThreadPoolExecutor(senders, thread_name_prefix="dispatch-sender")
        self._thread = threading.Thread(target=self._run, name="dispatch-claimer", daemon=True)

    def start(self) -> None:
        """Start claiming."""
        self._thread.start()

    @property
    def running(self) -> bool:
        """Claiming (started, not stopping)."""
        return self._thread.is_alive() and not self._stopping.is_set()

    def nudge(self) -> None:
        """Look for due work now (a wake-up arrived, or a reply put work back)."""
        self._nudged.set()

    def stop(self) -> None:
        """Claim nothing more; calls in flight go on to be recorded (``join``)."""
        self._stopping.set()
        self._nudged.set()
        with self._free:
            self._free.notify_all()

    def join(self, timeout_s: float | None = None) -> bool:
        """After ``stop``: wait for the claimer and every call in flight to finish and
        be recorded; False if ``timeout_s`` passed first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._thread.join(timeout_s)
        with self._free:
            while self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._free.wait(left)
        self._executor.shutdown(wait=False)
        return not self._thread.is_alive()

    # --- the claimer ------------------------------------------------------------------

    def _run(self) -> None:
        linger_until = time.monotonic() + self.linger_s
        try:
            while not self._stopping.is_set():
                found = self._claim_and_hand_out(mark=True)
                if found is None:
                    continue  # the claim failed or was held: look again, never sleep
                if not found:
                    if self._stopping.is_set():
                        break
                    if time.monotonic() < linger_until:
                        self._wait(self.poll_s)
                        continue
                    # Going to sleep: producers must send wake-ups again, so the mark
                    # goes first, then one more look catches a job committed while it
                    # was set.
                    self._clear()
                    found = self._claim_and_hand_out(mark=False)
                    if found is None:
                        continue
                    if not found:
                        if self._stopping.is_set():
                            break
                        self.asleep.set()
                        self._wait(None)
                        self.asleep.clear()
                linger_until = time.monotonic() + self.linger_s
        except Exception:  # pragma: no cover - a bug; the Celery task path takes over
            log.exception("the dispatch loop stopped; wake-ups will run dispatch tasks")
        finally:
            self._stopping.set()
            self._hand_on()

    def _hand_on(self) -> None:
        """On the way out: take the mark off and wake workers for whatever is due, as a
        dispatch run cut short does. A producer that saw the mark sent no wake-up, and
        a wake-up this loop took just before it stopped led to no claim: neither is
        left to the sweeper."""
        self._clear()
        try:
            self.dispatch.wakes.due()
        except Exception:
            log.warning("could not hand due work on; the sweeper will", exc_info=True)

    def _claim_and_hand_out(self, *, mark: bool) -> bool | None:
        """Take the free senders, claim a batch for each (one statement on PostgreSQL),
        and hand the batches out: whether any was claimed, or None when the claim
        failed or was held back (a reply that may pause dispatch came in meanwhile),
        so the caller looks again rather than sleeps. False when stopping."""
        taken = self._take_senders()
        if not taken:
            return False
        if mark:
            # A sender is free and a claim comes next: producers need not wake.
            self._mark()
        with self._free:
            held = self._gating > 0
        claims = None if held else self._claim(taken)
        for claim in claims or ():
            self._executor.submit(self._send, claim)
        for _ in range(taken - len(claims or ())):
            self._give_sender()
        return None if claims is None else bool(claims)

    def _claim(self, limit: int) -> list[Claim] | None:
        """Claim up to ``limit`` batches; None when the claim failed (after a pause
        that a wake-up does not cut short, and that does not swallow it).

        With limits on the gateway's calls, one at a time, its place taken first (the
        limiter's wait is never inside a claim) and given back by its sender; without,
        a place costs nothing and several go."""
        limiter = self.dispatch.limiter
        limited = not limiter.unlimited
        if limited:
            limiter.acquire()
        try:
            claims: list[Claim] | None = self.dispatch.claim_many(
                worker=self.worker, limit=1 if limited else limit
            )
        except Exception:
            claims = None
            log.warning("could not claim; trying again shortly", exc_info=True)
            self._stopping.wait(CLAIM_FAILURE_PAUSE_S)
        if limited and not claims:
            limiter.release()
        return claims

    def _wait(self, timeout_s: float | None) -> None:
        self._nudged.wait(timeout_s)
        self._nudged.clear()

    def _take_senders(self) -> int:
        """Wait for a free sender thread and take every free one (at most
        ``MAX_CLAIM``); 0 when stopping."""
        with self._free:
            ready = self._free.wait_for(self._can_take, timeout=self.poll_s)
        if not ready:
            # Every sender busy for a poll: producers should wake other workers.
            self._clear()
        with self._free:
            self._free.wait_for(self._can_take)
            if self._stopping.is_set():
                return 0
            taken = min(self.senders - self._busy, MAX_CLAIM)
            self._busy += taken
            return taken

    def _can_take(self) -> bool:
        # Under self._free.
        return self._stopping.is_set() or (self._busy < self.senders and not self._gating)

    def _give_sender(self) -> None:
        with self._free:
            self._busy -= 1
            self._free.notify_all()

    def _mark(self) -> None:
        if self.awake is None:
            return
        now = time.monotonic()
        if self._marked_at is not None and now - self._marked_at < AWAKE_RENEW_S:
            return
        if now < self._mark_again_at:
            return
        # Set before the write: a write that timed out may still have landed.
        self._may_be_marked = True
        try:
            self.awake.mark_awake(self.lanes, AWAKE_TTL_S)
            self._marked_at = now
        except Exception:
            # Unmarked, producers wake as before; a broker in trouble must not slow
            # every poll by a timeout, so leave it alone for a while.
            log.debug("could not mark the lanes awake", exc_info=True)
            self._mark_again_at = now + MARK_RETRY_AFTER_S

    def _clear(self) -> None:
        if self.awake is None or not self._may_be_marked:
            return
        self._may_be_marked = False
        self._marked_at = None
        try:
            self.awake.clear_awake(self.lanes)
        except Exception:
            # The mark expires by itself within AWAKE_TTL_S; the sweeper wakes for
            # anything committed meanwhile.
            log.warning("could not clear the lanes' awake mark", exc_info=True)

    # --- the senders ------------------------------------------------------------------

    def _send(self, claim: Claim) -> None:
        try:
            try:
                submission = self.dispatch.submit(claim)
            finally:
                # The place _claim took (nothing to give back without limits).
                if not self.dispatch.limiter.unlimited:
                    self.dispatch.limiter.release()
            gating = gates(claim, submission)
            if gating:
                with self._free:
                    self._gating += 1
            try:
                recorded, requeued = self.dispatch.hand_in(
                    claim, submission, worker=self.worker, record_budget_s=self.record_budget_s
                )
                # The sender is free again once its reply is on record: replies
                # unwritten never outnumber the senders, and ``join`` means recorded.
                if recorded is not None:
                    recorded.wait()
            finally:
                if gating:
                    with self._free:
                        self._gating -= 1
                        self._free.notify_all()
            if requeued:
                self.nudge()
            if self.on_batch is not None:
                self.on_batch()
        except Exception:
            # The batch stays `submitting` with its attempt in flight: the sweeper's.
            log.exception("batch %s: the send failed unexpectedly", claim.batch_id)
        finally:
            self._give_sender()
