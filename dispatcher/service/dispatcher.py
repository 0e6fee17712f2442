"""The dispatcher service: one object per process that the entry points call.

``Dispatcher`` builds the collaborators from settings (database, gateway client,
webhooks, controls, limiter, retention) and hands each use case what it needs:
``enqueue``, ``dispatch`` (with ``claim`` and ``reply``, in the commit order its
docstring gives), ``sweep``, ``operator`` (retry, cancel, pause, resume) and
``views``. Its methods only delegate; the names callers import from here are
re-exported below.

``utcnow`` and ``RECORD_RETRY_BUDGET_S`` are read from this module at each call and
passed down, so that setting them here (as the tests do, to move the clock or
shorten the wait for the database) reaches the use cases.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Unpack, cast

from dispatcher.config import Settings
from dispatcher.domain.backoff import RetryPolicy
from dispatcher.domain.lanes import LANE_QUEUES, Priority
from dispatcher.domain.limits import CallLimiter
from dispatcher.domain.request import MAX_LABEL_LENGTH, SendOptions, SendRequest
from dispatcher.domain.statuses import RecipientStatus
from dispatcher.domain.tenancy import EVERY_JOB, Viewer
from dispatcher.domain.times import utcnow
from dispatcher.gateway.client import GatewayClient, Submission
from dispatcher.persistence import store
from dispatcher.persistence.db import Database
from dispatcher.persistence.store.heartbeats import health, lanes_served
from dispatcher.service import rollup as rollups
from dispatcher.service import views
from dispatcher.service.claim import Claim, claim_lanes, worker_name
from dispatcher.service.completer import Completer
from dispatcher.service.control import Controls
from dispatcher.service.dispatch import Dispatch, DispatchReport
from dispatcher.service.enqueue import Enqueuer, EnqueueResult
from dispatcher.service.loop import Awake, DispatchLoop
from dispatcher.service.operator import OperatorActions, OperatorResult
from dispatcher.service.privacy import RetentionSchedule
from dispatcher.service.reply import RECORD_RETRY_BUDGET_S, ReplyRecorder
from dispatcher.service.settle import Settled, acknowledge_unknown, settle
from dispatcher.service.sweep import Sweeper
from dispatcher.service.views import JobRow, JobView, job_status, job_to_dict
from dispatcher.service.wake import Waker, Wakes, no_wake
from dispatcher.service.webhooks import Webhooks

__all__ = [
    "MAX_LABEL_LENGTH",
    "RECORD_RETRY_BUDGET_S",
    "Claim",
    "DispatchReport",
    "Dispatcher",
    "EnqueueResult",
    "OperatorResult",
    "Waker",
    "job_status",
    "job_to_dict",
    "no_wake",
    "utcnow",
    "worker_name",
]


class Dispatcher:
    """The service: one per process, shared by its threads."""

    def __init__(
        self,
        settings: Settings,
        *,
        database: Database | None = None,
        waker: Waker = no_wake,
        client_factory: Callable[[], GatewayClient] | None = None,
    ) -> None:
        self.settings = settings
        self.db = database or Database(
            settings.effective_database_url,
            pool_size=settings.database_pool_size or settings.worker_concurrency,
        )
        self.waker = waker
        self.policy = RetryPolicy(
            max_attempts=settings.max_attempts,
            backoff_s=settings.retry_backoff_s,
            backoff_max_s=settings.retry_backoff_max_s,
        )
        self._client_factory = client_factory or (lambda: GatewayClient(settings.gateway_config()))
        self._client: GatewayClient | None = None
        self._client_lock = threading.Lock()
        self.webhooks = Webhooks(settings, self.db)
        self.controls = Controls(settings)
        self.limiter = CallLimiter(
            max_in_flight=settings.gateway_max_in_flight,
            max_per_second=settings.gateway_max_per_second,
        )
        self.retention = RetentionSchedule(settings, self.db)
        wakes = Wakes(settings, self.db, waker)
        self._enqueuer = Enqueuer(settings, self.db, check_url=self.webhooks.check_url, wakes=wakes)
        self._replies = ReplyRecorder(self.db, self.controls, self.policy)
        self.completer = (
            Completer(self._replies, max_batch=settings.reply_batch_size)
            if settings.reply_batch_size > 1
            else None
        )
        self._dispatch = Dispatch(
            self.db,
            controls=self.controls,
            replies=self._replies,
            limiter=self.limiter,
            lanes=self.lanes,
            client=lambda: self.client,
            wakes=wakes,
            completer=self.completer,
        )
        self._operator = OperatorActions(self.db, controls=self.controls, wakes=wakes)
        self._sweeper = Sweeper(
            settings,
            self.db,
            client=lambda: self.client,
            webhooks=self.webhooks,
            retention=self.retention,
            wakes=wakes,
        )

    @property
    def lanes(self) -> tuple[int, ...]:
        """The lanes this process claims from, high first (``DISPATCHER_WORKER_LANES``)."""
        return claim_lanes(self.settings)

    @property
    def client(self) -> GatewayClient:
        """The gateway client, built on first use (producers never need one)."""
        with self._client_lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    def close(self) -> None:
        """Write the replies still waiting, then release connections."""
        if self.completer is not None:
            self.completer.close()
        if self._client is not None:
            self._client.close()
        self.webhooks.close()
        self.db.dispose()

    # --- enqueue (dispatcher.service.enqueue) ---------------------------------------

    def send_request(
        self, to: str | Iterable[object], text: str, **options: Unpack[SendOptions]
    ) -> SendRequest:
        """A checked send request (``SendRequest.build``) under this deployment's
        recipient cap (``DISPATCHER_MAX_RECIPIENTS_PER_JOB``): what every producer path
        builds before ``enqueue_request``."""
        return SendRequest.build(
            to, text, max_recipients=self.settings.max_recipients_per_job, **options
        )

    def enqueue_request(
        self,
        request: SendRequest,
        *,
        actor: str = "python",
        allowed_senders: Sequence[str] | None = None,
        owner_key_id: int | None = None,
    ) -> EnqueueResult:
        """Write a checked send request whole in one transaction, then wake workers
        (``Enqueuer.enqueue``)."""
        return self._enqueuer.enqueue(
            request,
            actor=actor,
            allowed_senders=allowed_senders,
            owner_key_id=owner_key_id,
            clock=utcnow,
        )

    def enqueue(
        self,
        to: str | Iterable[object],
        text: str,
        *,
        actor: str = "python",
        allowed_senders: Sequence[str] | None = None,
        owner_key_id: int | None = None,
        **options: Unpack[SendOptions],
    ) -> EnqueueResult:
        """``send_request`` then ``enqueue_request``, for callers holding plain values."""
        return self.enqueue_request(
            self.send_request(to, text, **options),
            actor=actor,
            allowed_senders=allowed_senders,
            owner_key_id=owner_key_id,
        )

    # --- dispatch (dispatcher.service.dispatch) -------------------------------------

    def claim(self, *, worker: str | None = None) -> Claim | None:
        """Claim the oldest due batch and commit the claim with its in-flight attempt."""
        return self._dispatch.claim(worker=worker or worker_name())

    def claim_many(self, *, limit: int, worker: str | None = None) -> list[Claim]:
        """Claim up to ``limit`` due batches in one transaction (one statement on
        PostgreSQL while dispatch is open; one batch otherwise)."""
        return self._dispatch.claim_many(worker=worker or worker_name(), limit=limit)

    def submit(self, claim: Claim) -> Submission:
        """Make the HTTP call for a claimed batch."""
        return self._dispatch.submit(claim)

    def record(self, claim: Claim, submission: Submission, *, worker: str | None = None) -> None:
        """Write the attempt's result and every recipient's, retrying while the DB is away
        (``ReplyRecorder.record``)."""
        self._replies.record(
            claim, submission, worker=worker or worker_name(), budget_s=RECORD_RETRY_BUDGET_S
        )

    def dispatch_one(self, *, worker: str | None = None) -> Submission | None:
        """Claim, submit and record one batch; None when nothing is due."""
        return self._dispatch.dispatch_one(
            worker=worker or worker_name(), record_budget_s=RECORD_RETRY_BUDGET_S
        )

    def dispatch_due(
        self,
        *,
        worker: str | None = None,
        max_batches: int = 10_000,
        budget_s: float = 60.0,
        stop: threading.Event | None = None,
    ) -> DispatchReport:
        """Work through due batches until none is due, ``max_batches``, ``budget_s`` or
        ``stop`` (``Dispatch.dispatch_due``)."""
        return self._dispatch.dispatch_due(
            worker=worker or worker_name(),
            max_batches=max_batches,
            budget_s=budget_s,
            stop=stop,
            record_budget_s=RECORD_RETRY_BUDGET_S,
        )

    def start_loop(self, *, on_batch: Callable[[], None] | None = None) -> DispatchLoop:
        """Start this process's dispatch loop (``dispatcher.service.loop``), marking its
        lanes awake through the waker where the waker can (``mark_awake``)."""
        awake = self.waker if hasattr(self.waker, "mark_awake") else None
        loop = DispatchLoop(
            self._dispatch,
            senders=self.settings.worker_concurrency,
            lanes=tuple(Priority(name) for name in self.settings.worker_lanes),
            linger_s=self.settings.dispatch_linger_s,
            poll_s=self.settings.dispatch_poll_s,
            record_budget_s=RECORD_RETRY_BUDGET_S,
            worker=f"{worker_name().rsplit(':', 1)[0]}:dispatch-loop",
            awake=cast(Awake | None, awake),
            on_batch=on_batch,
        )
        loop.start()
        return loop

    # --- operator actions (dispatcher.service.operator) -----------------------------

    def retry(
        self,
        *,
        actor: str,
        job_id: str | None = None,
        statuses: Iterable[RecipientStatus | str] = (RecipientStatus.FAILED,),
        error_code: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        numbers: Iterable[str] | None = None,
        confirm_unknown: bool = False,
        valid_for_s: float | None = None,
        dry_run: bool = False,
        viewer: Viewer = EVERY_JOB,
    ) -> OperatorResult:
        """Queue again the `failed` (and, confirmed, `unknown`) recipients that can
        succeed, audited; ``dry_run`` only says what would go (``OperatorActions.retry``)."""
        return self._operator.retry(
            actor=actor,
            job_id=job_id,
            statuses=statuses,
            error_code=error_code,
            since=since,
            until=until,
            numbers=numbers,
            confirm_unknown=confirm_unknown,
            valid_for_s=valid_for_s,
            dry_run=dry_run,
            viewer=viewer,
        )

    def settle(
        self,
        job_id: str,
        *,
        status: RecipientStatus | str,
        reason: str,
        actor: str,
        numbers: Iterable[str] | None = None,
        gateway_message_id: str | None = None,
        viewer: Viewer = EVERY_JOB,
    ) -> Settled:
        """Settle a job's `unknown` recipients as `sent` or `failed` from evidence,
        audited (``dispatcher.service.settle``)."""
        return settle(
            self.db,
            job_id=job_id,
            status=status,
            reason=reason,
            actor=actor,
            numbers=numbers,
            gateway_message_id=gateway_message_id,
            viewer=viewer,
        )

    def acknowledge_unknown(self, *, actor: str) -> int:
        """Mark every `unknown` recipient so far as seen by an operator, so the alert on
        unknown recipients clears until new ones appear; audited."""
        return acknowledge_unknown(self.db, actor=actor)

    def cancel(self, job_id: str, *, actor: str, viewer: Viewer = EVERY_JOB) -> OperatorResult:
        """Cancel a job's recipients that no worker has claimed; audited."""
        return self._operator.cancel(job_id, actor=actor, viewer=viewer)

    def cancel_matching(self, selection: store.RecipientFilter, *, actor: str) -> OperatorResult:
        """Cancel the waiting (`queued`, `retry_wait`) recipients of ``selection``; audited."""
        return self._operator.cancel_matching(selection, actor=actor)

    def pause(self, *, actor: str, detail: str = "paused by an operator") -> dict[str, Any]:
        """Stop all claims until ``resume``; calls in flight finish and are recorded."""
        return self._operator.pause(actor=actor, detail=detail)

    def resume(self, *, actor: str) -> dict[str, Any]:
        """End a pause of any reason, and wake workers for the work that waited."""
        return self._operator.resume(actor=actor)

    # --- sweeping (dispatcher.service.sweep) ----------------------------------------

    def sweep(self) -> dict[str, int]:
        """One sweep (``Sweeper.sweep``): what each step changed, by name."""
        return self._sweeper.sweep()

    def rollup(self, *, force: bool = False) -> rollups.RollupReport | None:
        """Recompute the recent rollup minutes and status counts (``dispatcher.service.rollup``).

        None when another worker's run holds the lock or ran within the interval,
        unless ``force``.
        """
        return rollups.run(
            self.db,
            retention_days=self.settings.stats_retention_days,
            min_interval_s=0.0 if force else 0.9 * self.settings.rollup_interval_s,
        )

    # --- reading (dispatcher.service.views) -----------------------------------------

    def control(self) -> dict[str, Any]:
        """Paused or not (with reason, time and who), and the breaker's state."""
        return views.control(self.db)

    def lanes_served(self) -> dict[str, dict[str, int]]:
        """Per lane (high, normal, bulk), the workers alive and those consuming from the
        broker, by their heartbeats."""
        with self.db.transaction() as session:
            by_queue = lanes_served(
                session, now=utcnow(), interval_s=self.settings.heartbeat_interval_s
            )
        return {
            lane: dict(zip(("alive", "consuming"), by_queue.get(queue, (0, 0)), strict=True))
            for lane, queue in LANE_QUEUES.items()
        }

    def worker_health(self, hostname: str) -> tuple[bool, bool]:
        """Whether a worker on ``hostname`` is alive, and consuming from the broker, by
        its heartbeats (README, "Worker health"): a container's health check."""
        with self.db.transaction() as session:
            found = health(
                session,
                now=utcnow(),
                interval_s=self.settings.heartbeat_interval_s,
                hostname=hostname,
            )
        return found.alive > 0, found.consuming > 0

    def check_balance(self) -> float:
        """Ask the gateway for the account's credit balance now, and keep it as the last
        balance checked (``dispatcher state``, the dashboard, the metric). Raises what
        the gateway client raises when no usable answer came."""
        balance = self.client.balance()
        with self.db.transaction() as session:
            store.update_control(
                session, values={"last_balance": balance, "credit_checked_at": utcnow()}
            )
        return balance

    def job_view(self, job_id: str, *, viewer: Viewer = EVERY_JOB) -> JobView:
        """A job as JSON-ready data; NotFoundError for one ``viewer`` may not see."""
        return views.job_view(self.db, job_id, viewer=viewer)

    def summary(self, job_ids: Sequence[str] | None = None) -> dict[str, Any]:
        """Recipients per status and error code, attempts, and a few gateway IDs."""
        return views.summary(self.db, job_ids)

    def list_jobs(
        self,
        *,
        limit: int = 20,
        number: str | None = None,
        status: RecipientStatus | None = None,
        reference: str | None = None,
    ) -> list[JobRow]:
        """The newest jobs with their recipients per status, newest first."""
        return views.list_jobs(
            self.db, limit=limit, number=number, status=status, reference=reference
        )

    def list_jobs_page(
        self,
        *,
        selection: store.JobFilter,
        limit: int,
        after: str | None = None,
        viewer: Viewer = EVERY_JOB,
    ) -> tuple[list[JobRow], bool]:
        """A page of jobs ``viewer`` may see, newest first, with ids below ``after``, and
        whether more follow (``views.list_jobs_page``)."""
        return views.list_jobs_page(
            self.db, selection=selection, limit=limit, after=after, viewer=viewer
        )
