"""The dispatcher's use cases: enqueue, claim, submit, record, sweep. Owns transactions.

The order of commits is the product's guarantees (SPEC section 3):

1. ``enqueue`` commits the job, its recipients, batches and history in one
   transaction, and only then wakes a worker: nothing acknowledged is lost, and
   a lost wake-up is repaired by the sweeper.
2. ``dispatch_one`` commits the claim (batch ``submitting``, recipients
   ``submitting``, attempt row in flight) before the HTTP call: a second worker
   finds nothing to claim, and a worker killed mid-call leaves evidence the
   sweeper turns into ``unknown``, never into a resend.
3. The reply is written, attempt and recipients together, in one transaction,
   retried while the database is away, and logged meanwhile so no accepted
   gateway ID is lost. Its values are fitted to their columns first
   (``dispatcher.columns``), and a write the database refuses all the same is made
   recipient by recipient (``dispatcher.salvage``) rather than left to the sweeper.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol

from dispatcher.config import Settings
from dispatcher.domain.backoff import RetryPolicy
from dispatcher.domain.lanes import Priority, check_priority
from dispatcher.domain.limits import CallLimiter
from dispatcher.domain.message import (
    Kind,
    check_kind,
    check_send_at,
    check_send_at_not_past,
    check_sender,
    check_validity,
    sender_for_key,
)
from dispatcher.domain.numbers import RecipientList, chunk, prepare
from dispatcher.domain.parts import TextInfo, check_maxconcat, check_text
from dispatcher.domain.statuses import (
    PENDING_STATUSES,
    AttemptOutcome,
    BreakerState,
    PauseReason,
    RecipientStatus,
)
from dispatcher.domain.storable import check_storable
from dispatcher.domain.tenancy import EVERY_JOB, Viewer
from dispatcher.domain.times import utcnow
from dispatcher.errors import (
    ConfigurationError,
    ConfirmationRequiredError,
    ConflictError,
    GatewayError,
    InvalidOptionError,
    NoRecipientsError,
    NotFoundError,
)
from dispatcher.gateway import protocol
from dispatcher.gateway.client import GatewayClient, Message, Submission
from dispatcher.gateway.protocol import Outcome, RecipientOutcome
from dispatcher.persistence import columns, salvage, store, store_dispatch
from dispatcher.persistence.db import Database, DBAPIError, IntegrityError, Session
from dispatcher.persistence.models import Job, Recipient
from dispatcher.persistence.store import visible_to
from dispatcher.service import rollup as rollups
from dispatcher.service.audit import RetentionSchedule
from dispatcher.service.control import UNPAUSED, Controls, control_view
from dispatcher.service.webhooks import Webhooks

log = logging.getLogger(__name__)

# How long a worker keeps trying to write a reply while the database is away
# before giving up and leaving the batch to the sweeper (as `unknown`).
RECORD_RETRY_BUDGET_S = 300.0

_S = RecipientStatus
_SENDABLE = (_S.QUEUED, _S.RETRY_WAIT)


class Waker(Protocol):
    """Something that wakes ``count`` workers serving ``lane`` to look for due work."""

    def __call__(self, count: int, lane: Priority = Priority.NORMAL) -> None: ...


def no_wake(count: int, lane: Priority = Priority.NORMAL) -> None:
    """A waker for processes that only write (tests, imports): wakes nobody."""


def worker_name() -> str:
    """host:pid:thread, enough to find the process that made an attempt."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """What ``enqueue`` wrote."""

    job_id: str
    accepted: list[str]
    refused: list[tuple[str, str]]
    batches: int
    parts: int
    replayed: bool = False
    """True when an idempotency key matched an earlier request: nothing new was written."""
    priority: str = "normal"
    send_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None

    @property
    def credits(self) -> int:
        """Estimated credits: parts times recipients queued (one credit per part)."""
        return self.parts * len(self.accepted)


@dataclass(frozen=True, slots=True)
class _Timing:
    """When a job's batches fall due and expire, and in which lane."""

    now: dt.datetime
    send_at: dt.datetime | None
    priority: Priority
    validity_s: float | None

    @property
    def due_at(self) -> dt.datetime:
        """The first claimable time: ``send_at`` if later than now."""
        return max(self.send_at, self.now) if self.send_at else self.now

    @property
    def expires_at(self) -> dt.datetime | None:
        """``validity_s`` after the due time, or None."""
        if self.validity_s is None:
            return None
        return self.due_at + dt.timedelta(seconds=self.validity_s)


@dataclass(slots=True)
class Claim:
    """A batch claimed for one HTTP submission, with what it needs to send."""

    batch_id: int
    attempt_id: int
    attempt_no: int
    job_id: str
    recipients: list[store.PendingRecipient]
    message: Message
    probe: bool = False
    """This batch is the circuit breaker's probe: its result closes or reopens it."""
    more_due: bool = True
    """Another batch was due when this one was claimed (True when unknown)."""


class _GroupKey(NamedTuple):
    """Recipients of one reply that are written with one statement."""

    status: RecipientStatus
    message_id: str | None
    error_code: str | None
    cause: str
    spent: bool


@dataclass(frozen=True, slots=True)
class OperatorResult:
    """What an operator action touched."""

    affected: int
    jobs: list[str]


@dataclass(slots=True)
class DispatchReport:
    """What a run of ``dispatch_due`` did."""

    batches: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))


_REQUEUING = frozenset({Outcome.TRANSIENT, Outcome.NO_CREDIT})


def _sendable_claim(batch: store.ClaimedBatch, now: dt.datetime) -> bool:
    """Whether a claimed batch will go out: unexpired, with recipients left to send."""
    return bool(batch.recipients) and (batch.expires_at is None or batch.expires_at > now)


def _attempt_outcome(outcomes: Sequence[RecipientOutcome]) -> AttemptOutcome:
    kinds = {o.outcome for o in outcomes}
    if kinds == {Outcome.ACCEPTED}:
        return AttemptOutcome.ACCEPTED
    if Outcome.ACCEPTED in kinds:
        return AttemptOutcome.PARTIAL
    if Outcome.AMBIGUOUS in kinds:
        return AttemptOutcome.AMBIGUOUS
    if kinds <= {Outcome.TRANSIENT, Outcome.NO_CREDIT}:
        return AttemptOutcome.TRANSIENT
    return AttemptOutcome.REJECTED


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

    @property
    def lanes(self) -> tuple[int, ...]:
        """The lanes this process claims from, high first (``DISPATCHER_WORKER_LANES``)."""
        return tuple(Priority(name).lane for name in self.settings.worker_lanes)

    @property
    def client(self) -> GatewayClient:
        """The gateway client, built on first use (producers never need one)."""
        with self._client_lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    def close(self) -> None:
        """Release connections."""
        if self._client is not None:
            self._client.close()
        self.webhooks.close()
        self.db.dispose()

    # --- enqueue -------------------------------------------------------------------

    def enqueue(
        self,
        to: str | Iterable[str],
        text: str,
        *,
        sender: str | None = None,
        maxconcat: int = 1,
        kind: str = "text",
        send_at: dt.datetime | None = None,
        priority: str = "normal",
        valid_for_s: float | None = None,
        idempotency_key: str | None = None,
        reference: str | None = None,
        callback_url: str | None = None,
        actor: str = "python",
        allowed_senders: Sequence[str] | None = None,
        owner_key_id: int | None = None,
    ) -> EnqueueResult:
        """Validate a send request, write it whole in one transaction, then wake workers.

        ``send_at`` (timezone-aware) holds the job in the database until then;
        ``priority`` picks its lane; ``valid_for_s`` (default
        ``DISPATCHER_DEFAULT_VALIDITY_S``) is how long after its send time its
        recipients may still go out, after which those unsent end ``expired``.
        With no sender, ``DISPATCHER_DEFAULT_SENDER`` is used. ``allowed_senders``
        (an API key's grants) restricts the sender to those and the default, raising
        SenderNotAllowedError; None (Python, the CLI) allows any valid sender.
        ``owner_key_id`` is the API key enqueuing, which alone (besides operators)
        will see the job.

        With ``idempotency_key``, a second request from the same ``actor`` with the
        same key and the same content returns the first job (``replayed``) and
        sends nothing; with different content it raises ConflictError.

        Raises a ValidationError subclass, having written nothing, when the request
        cannot be sent to anybody.
        """
        maxconcat = check_maxconcat(maxconcat)
        kind_ = check_kind(kind)
        asked_sender = check_sender(sender)
        sender = sender_for_key(asked_sender, self.settings.default_sender, allowed_senders)
        priority_ = check_priority(priority)
        send_at = check_send_at(send_at)
        asked_validity = check_validity(valid_for_s)
        validity_s = asked_validity or self.settings.default_validity_s
        info = check_text(text, maxconcat)
        reference = _check_label("reference", reference)
        callback_url = self.webhooks.check_url(callback_url)
        idempotency_key = _check_label("idempotency_key", idempotency_key)
        if isinstance(to, str):
            raw_numbers: list[object] = list(to.split(","))
        elif to is None or not isinstance(to, Iterable):
            raise NoRecipientsError("to must be a number, comma-separated numbers, or a list")
        else:
            raw_numbers = list(to)
        # Options added later join the hash only when set, so keys stored before
        # they existed still match their replays.
        later = {
            "send_at": send_at.isoformat() if send_at else None,
            "priority": str(priority_) if priority_ is not Priority.NORMAL else None,
            "valid_for_s": asked_validity,
        }
        request_hash = _request_hash(
            raw_numbers,
            text,
            asked_sender,
            maxconcat,
            str(kind_),
            reference,
            callback_url,
            *({k: v} for k, v in later.items() if v is not None),
        )
        if idempotency_key is not None:
            replay = self._replay(actor, idempotency_key, request_hash)
            if replay is not None:
                return replay
        # After the replay: a retried request is answered with its job even once
        # its send time has passed.
        check_send_at_not_past(send_at, utcnow())
        prepared = prepare(raw_numbers, self.settings.default_region)
        if not prepared.accepted:
            reasons = "; ".join(f"{r.raw!r}: {r.reason}" for r in prepared.refused[:5])
            raise NoRecipientsError(
                "no valid recipient" + (f" ({reasons})" if reasons else " given")
            )

        now = utcnow()
        job_id = store.new_job_id()
        groups = list(chunk(prepared.accepted, protocol.MAX_RECIPIENTS_PER_SUBMISSION))
        timing = _Timing(now, send_at, priority_, validity_s)
        try:
            self._write_job(
                job_id,
                timing,
                text,
                sender,
                kind_,
                maxconcat,
                info,
                prepared,
                groups,
                actor=actor,
                idempotency_key=idempotency_key,
                request_hash=request_hash,
                reference=reference,
                callback_url=callback_url,
                owner_key_id=owner_key_id,
            )
        except IntegrityError:
            # Two requests with one idempotency key raced; the loser returns the winner's.
            if idempotency_key is None:
                raise
            replay = self._replay(actor, idempotency_key, request_hash)
            if replay is None:
                raise
            return replay
        # Only after the commit: a worker woken earlier could find nothing. A job
        # scheduled for later wakes nobody now: the sweeper wakes workers when it
        # falls due (the database is the schedule, not a broker countdown).
        if timing.due_at <= now:
            self._wake_after_commit(len(groups), priority_)
        return EnqueueResult(
            job_id=job_id,
            accepted=prepared.accepted,
            refused=[(r.raw, r.reason) for r in prepared.refused],
            batches=len(groups),
            parts=info.parts,
            priority=str(priority_),
            send_at=send_at,
            expires_at=timing.expires_at,
        )

    def _replay(self, actor: str, key: str, request_hash: str) -> EnqueueResult | None:
        """The job an earlier request with this key made, or None; ConflictError if it
        was a different request."""
        with self.db.transaction() as session:
            job = store.job_by_idempotency_key(session, created_by=actor, key=key)
            if job is None:
                return None
            if job.request_hash != request_hash:
                raise ConflictError(
                    f"idempotency key {key!r} was used for a different request (job {job.id})"
                )
            recipients = store.job_recipients(session, job_id=job.id)
        return EnqueueResult(
            job_id=job.id,
            accepted=[r.number for r in recipients if r.batch_id is not None],
            refused=[
                (r.number, (r.error_detail or "").removeprefix("refused at enqueue: "))
                for r in recipients
                if r.batch_id is None and r.attempts == 0 and r.status == _S.FAILED
            ],
            batches=0,
            parts=job.parts,
            replayed=True,
            priority=job.priority,
            send_at=job.send_at,
            expires_at=job.expires_at,
        )

    def _write_job(
        self,
        job_id: str,
        timing: _Timing,
        text: str,
        sender: str | None,
        kind_: Kind,
        maxconcat: int,
        info: TextInfo,
        prepared: RecipientList,
        groups: list[Sequence[str]],
        *,
        actor: str,
        idempotency_key: str | None,
        request_hash: str,
        reference: str | None,
        callback_url: str | None,
        owner_key_id: int | None,
    ) -> None:
        now = timing.now
        job = Job(
            id=job_id,
            created_at=now,
            text=text,
            sender=sender,
            kind=str(kind_),
            maxconcat=maxconcat,
            parts=info.parts,
            encoding=str(info.encoding),
            recipient_count=len(prepared.accepted),
            refused_count=len(prepared.refused),
            created_by=actor,
            owner_key_id=owner_key_id,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            reference=reference,
            callback_url=callback_url,
            callback_state="waiting" if callback_url else None,
            send_at=timing.send_at,
            priority=str(timing.priority),
            expires_at=timing.expires_at,
        )
        refused = [(r.raw[:32], f"refused at enqueue: {r.reason}"[:500]) for r in prepared.refused]
        with self.db.transaction() as session:
            store_dispatch.write_job(
                session,
                job=job,
                groups=groups,
                refused=refused,
                due_at=timing.due_at,
                lane=timing.priority.lane,
                expires_at=timing.expires_at,
                now=now,
                actor=actor,
            )

    def _wake_after_commit(self, batches: int, lane: Priority) -> None:
        """Wake workers for a job just committed, counting wake-ups already waiting.

        A wake-up still waiting in the lane's queue now will start its task after
        this job's commit, and a task claims every due batch of its lane, not only
        the batches of the job that sent it; so this job needs only as many more as
        its batches exceed those waiting. Under a stream of one-recipient jobs this
        spares a message, a task and an empty claim per job once workers fall
        behind, and bounds the queue; while workers keep up nothing waits and every
        job sends its own. Wake-ups that vanish (a broker flush, expiry) are the
        sweeper's, as before.
        """
        self._wake_beyond_waiting(batches, lane, ask="waiting")

    def _wake_beyond_waiting(self, wanted: int, lane: Priority, *, ask: str) -> int:
        """Send ``wanted`` wake-ups (at most the fan-out) less those already waiting in
        the lane's queue, counted by the waker's ``ask`` method; returns how many."""
        count = min(wanted, self.settings.wake_fanout)
        waiting = self._pending_wakes(lane, ask=ask)
        if waiting is not None:
            count = max(count - waiting, 0)
        self._wake(count, lane)
        return count

    def _wake(self, batches: int, lane: Priority = Priority.NORMAL) -> None:
        count = min(batches, self.settings.wake_fanout)
        if count <= 0:
            return
        try:
            self.waker(count, lane)
        except Exception:
            # The job is committed; the sweeper will wake a worker for it. Failing
            # the producer here would invite a resubmission and a double send.
            log.warning("could not wake a worker; the sweeper will pick the work up", exc_info=True)

    # --- dispatch ------------------------------------------------------------------

    def claim(self, *, worker: str | None = None) -> Claim | None:
        """Claim the oldest due batch and commit the claim with its in-flight attempt."""
        worker = worker or worker_name()
        while True:
            now = utcnow()
            with self.db.transaction() as session:
                probe, retry_at = False, None
                # PostgreSQL: control row, claim, job and recipients in one statement
                # while dispatch is open; the careful path below otherwise.
                batch = store.claim_if_open(session, now=now, worker=worker, lanes=self.lanes)
                if isinstance(batch, store.Gated):
                    gate = self.controls.gate(session, now)
                    if gate is None:
                        return None
                    probe, retry_at = gate
                    batch = store.claim_batch(session, now=now, worker=worker, lanes=self.lanes)
                if probe and (batch is None or not _sendable_claim(batch, now)):
                    # Nothing to probe with (nothing due, or the batch claimed is
                    # expired or emptied): the next due batch may probe at once, rather
                    # than dispatch waiting out the probe's timeout.
                    store.update_control(
                        session,
                        values={"breaker_state": BreakerState.OPEN, "breaker_retry_at": retry_at},
                    )
                if batch is None:
                    return None
                if batch.expires_at is not None and batch.expires_at <= now:
                    # Sent now it would arrive too late to matter (an OTP after its
                    # validity): after an outage, nothing stale goes out in a burst.
                    store.expire_batch(
                        session,
                        batch_id=batch.id,
                        now=now,
                        cause=_expiry_cause(batch.expires_at),
                        actor=worker,
                    )
                    continue
                if not batch.recipients:
                    # Everything in it was cancelled or settled meanwhile.
                    store.settle_batch(session, batch_id=batch.id, now=now)
                    continue
                kind = check_kind(batch.kind)
                request = {
                    "to": ",".join(r.number for r in batch.recipients),
                    "from": batch.sender,
                    "maxconcat": batch.maxconcat,
                    "type": kind.gateway_type,
                    "usercontext": batch.reference,
                }
                attempt_id = store.start_attempt(
                    session,
                    batch=batch,
                    request=json.dumps(request),
                    now=now,
                    cause=f"attempt {batch.attempts} claimed",
                    actor=worker,
                )
                return Claim(
                    batch_id=batch.id,
                    attempt_id=attempt_id,
                    attempt_no=batch.attempts,
                    job_id=batch.job_id,
                    recipients=batch.recipients,
                    message=Message(
                        text=batch.text,
                        sender=batch.sender,
                        maxconcat=batch.maxconcat,
                        message_type=kind.gateway_type,
                        usercontext=batch.reference,
                    ),
                    probe=probe,
                    more_due=batch.more_due,
                )

    def submit(self, claim: Claim) -> Submission:
        """Make the HTTP call for a claimed batch."""
        return self.client.submit([r.number for r in claim.recipients], claim.message)

    def record(self, claim: Claim, submission: Submission, *, worker: str | None = None) -> None:
        """Write the attempt's result and every recipient's, retrying while the DB is away.

        A write the database refuses for good (not one it cannot take now) is made
        again recipient by recipient (``dispatcher.salvage``), never given up: the
        batch left ``submitting`` would have the sweeper call every recipient lost.
        """
        worker = worker or worker_name()
        deadline = time.monotonic() + RECORD_RETRY_BUDGET_S
        delay_s = 0.5
        careful = False
        while True:
            try:
                if careful:
                    self._record_carefully(claim, submission, worker)
                else:
                    self._record_once(claim, submission, worker)
                return
            except (DBAPIError, UnicodeEncodeError) as exc:
                away = isinstance(exc, DBAPIError) and salvage.database_away(exc)
                if not away and not careful:
                    log.warning(
                        "attempt %s: the database refused the reply's write (%s); "
                        "recording it recipient by recipient",
                        claim.attempt_id,
                        salvage.refusal(exc),
                    )
                    careful = True
                    continue
                if not away or time.monotonic() >= deadline:
                    log.error(
                        "giving up recording attempt %s; the sweeper will mark batch %s unknown. "
                        "Gateway reply kept here: %s",
                        claim.attempt_id,
                        claim.batch_id,
                        _outcome_summary(submission),
                    )
                    raise
                log.warning(
                    "database unavailable recording attempt %s (%s); retrying in %.1f s. "
                    "Gateway reply so far: %s",
                    claim.attempt_id,
                    type(exc).__name__,
                    delay_s,
                    _outcome_summary(submission),
                )
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 10.0)

    def _record_once(self, claim: Claim, submission: Submission, worker: str) -> None:
        with self.db.transaction() as session:
            write = self._prepare_reply(session, claim, submission, worker)
            moved = store.record_reply(
                session,
                attempt_id=write.attempt_id,
                batch_id=write.batch_id,
                attempt=write.attempt,
                groups=write.groups,
                at=write.at,
                actor=write.actor,
                reset_breaker_failures=write.reset_breaker_failures,
            )
        self._after_record(claim, submission, write, moved)

    def _record_carefully(self, claim: Claim, submission: Submission, worker: str) -> None:
        with self.db.transaction() as session:
            write = self._prepare_reply(session, claim, submission, worker)
            result = salvage.record_reply(session, write)
        result.log(
            attempt_id=claim.attempt_id,
            job_id=claim.job_id,
            numbers={r.id: r.number for r in claim.recipients},
        )
        self._after_record(claim, submission, write, result.moved)

    def _prepare_reply(
        self, session: Session, claim: Claim, submission: Submission, worker: str
    ) -> salvage.ReplyWrite:
        """The breaker and pause steps of a reply, then its writes with values fitted
        to their columns (``dispatcher.columns``), grouped by outcome."""
        now = utcnow()
        by_number = {r.number: r for r in claim.recipients}
        all_transient = all(o.outcome is Outcome.TRANSIENT for o in submission.outcomes)
        # A healthy reply (the common case) resets the breaker's count inside
        # the reply's own statement; a probe or an outage goes the long way.
        healthy = not claim.probe and not all_transient
        outage = not healthy and self.controls.update_breaker(
            session, now, probe=claim.probe, all_transient=all_transient
        )
        self.controls.pause_for(session, submission.outcomes, worker)
        groups: dict[_GroupKey, list[int]] = defaultdict(list)
        retry_at: dt.datetime | None = None
        for outcome in submission.outcomes:
            recipient = by_number[outcome.number]
            made = recipient.attempts + 1
            if outcome.outcome is Outcome.TRANSIENT and outage:
                # The breaker holds the work; an outage must not use up attempts.
                status = _S.RETRY_WAIT
                cause = f"{outcome.error_code}; gateway outage, breaker open, no attempt spent"
                spent = False
                retry_at = retry_at or now
            else:
                status, cause = self._status_for(outcome, made)
                spent = status is not _S.QUEUED
                if status is _S.RETRY_WAIT and retry_at is None:
                    retry_at = now + dt.timedelta(seconds=self.policy.delay_s(made))
            key = _GroupKey(
                status,
                outcome.gateway_message_id,
                columns.fit_code(outcome.error_code),
                columns.fit_cause(cause),
                spent,
            )
            groups[key].append(recipient.id)
        return salvage.ReplyWrite(
            attempt_id=claim.attempt_id,
            batch_id=claim.batch_id,
            attempt=columns.fit_attempt(
                {
                    "finished_at": now,
                    "host": submission.host,
                    "http_status": submission.http_status,
                    "raw_reply": submission.raw_reply,
                    "latency_ms": submission.latency_ms,
                    "outcome": str(_attempt_outcome(submission.outcomes)),
                    "error": submission.error,
                }
            ),
            groups={
                store.OutcomeGroup(
                    *key, next_attempt_at=retry_at if key.status is _S.RETRY_WAIT else None
                ): ids
                for key, ids in groups.items()
            },
            at=now,
            actor=columns.fit_actor(worker),
            reset_breaker_failures=healthy,
        )

    def _after_record(
        self, claim: Claim, submission: Submission, write: salvage.ReplyWrite, moved: int
    ) -> None:
        if moved != write.given:
            log.warning(
                "attempt %s: %d of %d recipients had left `submitting` before the "
                "reply was recorded; the reply stays on the attempt row",
                claim.attempt_id,
                write.given - moved,
                write.given,
            )
        self._log_outcomes(claim, submission)

    def _status_for(self, outcome: RecipientOutcome, made: int) -> tuple[RecipientStatus, str]:
        code = outcome.error_code
        match outcome.outcome:
            case Outcome.ACCEPTED:
                return _S.SENT, f"accepted as {outcome.gateway_message_id}"
            case Outcome.TRANSIENT:
                if self.policy.exhausted(made):
                    return _S.FAILED, f"{code}; gave up after {made} attempts"
                return _S.RETRY_WAIT, f"{code}; attempt {made} of {self.policy.max_attempts}"
            case Outcome.NO_CREDIT:
                return _S.QUEUED, f"{code}; waits for credit, no attempt spent"
            case Outcome.AMBIGUOUS:
                return _S.UNKNOWN, f"{code}; the gateway may have sent it, not resubmitted"
            case Outcome.REJECTED | Outcome.LOGIN_INVALID | Outcome.REQUEST_INVALID:
                return _S.FAILED, f"{code}; permanent"
        raise AssertionError(outcome.outcome)  # pragma: no cover

    def _log_outcomes(self, claim: Claim, submission: Submission) -> None:
        request_errors = [o for o in submission.outcomes if o.outcome is Outcome.REQUEST_INVALID]
        if request_errors:
            log.error(
                "gateway says our request was wrong: job %s attempt %s got %s; "
                "recipients failed, not retried",
                claim.job_id,
                claim.attempt_id,
                sorted({o.error_code or "?" for o in request_errors}),
            )
        if any(o.outcome is Outcome.LOGIN_INVALID for o in submission.outcomes):
            log.error(
                "gateway refused the credentials (LOGIN_INVALID) on attempt %s", claim.attempt_id
            )

    def dispatch_one(self, *, worker: str | None = None) -> Submission | None:
        """Claim, submit and record one batch; None when nothing is due."""
        return self._dispatch_next(worker or worker_name())[0]

    def _dispatch_next(self, worker: str) -> tuple[Submission | None, bool]:
        """``dispatch_one``, and whether another batch was due when this one was claimed."""
        # The limiter's wait happens before the claim, never inside it.
        with self.limiter.slot():
            claim = self.claim(worker=worker)
            if claim is None:
                return None, False
            submission = self.submit(claim)
        self.record(claim, submission, worker=worker)
        # A reply that puts work back (no credit, a transient error in an outage) may
        # have made something due at once: look again, as before.
        requeued = any(o.outcome in _REQUEUING for o in submission.outcomes)
        return submission, claim.more_due or requeued

    def dispatch_due(
        self,
        *,
        worker: str | None = None,
        max_batches: int = 10_000,
        budget_s: float = 60.0,
        stop: threading.Event | None = None,
    ) -> DispatchReport:
        """Work through due batches until none is due, ``max_batches``, ``budget_s`` or ``stop``.

        ``stop`` is checked before each claim, so a worker shutting down finishes the
        call in flight and claims nothing new.
        """
        report = DispatchReport()
        worker = worker or worker_name()
        deadline = time.monotonic() + budget_s
        while report.batches < max_batches and time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                break
            submission, more_due = self._dispatch_next(worker)
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
            self._wake_due()
        except Exception:
            log.warning("could not hand due work on; the sweeper will", exc_info=True)
        return report

    # --- operator actions ----------------------------------------------------------

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
        viewer: Viewer = EVERY_JOB,
    ) -> OperatorResult:
        """Queue `failed` (and, confirmed, `unknown`) recipients again, audited.

        Retrying an `unknown` recipient may send it twice (the gateway may have
        accepted it already), so it needs ``confirm_unknown``; without it,
        ConfirmationRequiredError says how many would be touched. Numbers refused
        at enqueue are never retried: they are not phone numbers. Only jobs
        ``viewer`` may see are touched or counted.
        """
        wanted = {RecipientStatus(s) for s in statuses}
        if not wanted or not wanted <= {_S.FAILED, _S.UNKNOWN}:
            raise InvalidOptionError("retry takes recipients that are failed or unknown")
        if job_id is not None:
            self._require_job(job_id, viewer)
        selection = store.RecipientFilter(
            job_id=job_id,
            statuses=[str(s) for s in wanted],
            error_code=error_code,
            since=since,
            until=until,
            numbers=list(numbers) if numbers is not None else None,
            retryable_only=True,
        )
        selection = visible_to(viewer, selection)
        now = utcnow()
        with self.db.transaction() as session:
            if _S.UNKNOWN in wanted and not confirm_unknown:
                unknown = store.count_recipients(session, selection=selection.only(str(_S.UNKNOWN)))
                if unknown:
                    raise ConfirmationRequiredError(
                        f"{unknown} recipients are `unknown`: the gateway may already have "
                        "sent them, so retrying may send them twice; confirm to go ahead"
                    )
            rows = store.select_recipients(session, selection=selection)
            by_job: dict[str, list[tuple[int, str]]] = defaultdict(list)
            for recipient_id, rjob, status in rows:
                by_job[rjob].append((recipient_id, status))
            moved = 0
            batches: dict[Priority, int] = defaultdict(int)
            for rjob, members in by_job.items():
                job = store.get_job(session, job_id=rjob)
                # The job's lane, but not its expiry: an explicit retry is the
                # operator's decision to send now.
                lane = check_priority(job.priority if job else Priority.NORMAL)
                for group in chunk(members, protocol.MAX_RECIPIENTS_PER_SUBMISSION):
                    [batch_id] = store.insert_batches(
                        session, job_id=rjob, count=1, due_at=now, lane=lane.lane
                    )
                    batches[lane] += 1
                    for status in {st for _, st in group}:
                        moved += store.transition(
                            session,
                            ids=[rid for rid, st in group if st == status],
                            from_statuses=[RecipientStatus(status)],
                            to_status=_S.QUEUED,
                            at=now,
                            cause=f"operator retry (was {status})",
                            actor=actor,
                            values={
                                "batch_id": batch_id,
                                "attempts": 0,
                                "error_code": None,
                                "error_detail": None,
                                "next_attempt_at": None,
                                "gateway_message_id": None,
                            },
                        )
            store.record_action(
                session,
                actor=actor,
                action="retry",
                target=job_id,
                detail=selection.describe() | {"confirm_unknown": confirm_unknown},
                affected=moved,
            )
        for lane, count in batches.items():
            self._wake(count, lane)
        return OperatorResult(affected=moved, jobs=sorted(by_job))

    def cancel(self, job_id: str, *, actor: str, viewer: Viewer = EVERY_JOB) -> OperatorResult:
        """Cancel a job's recipients that no worker has claimed; audited.

        Recipients already `submitting` are past the point of no return and keep
        their course; final ones are left as they are. A job ``viewer`` may not see
        is NotFoundError.
        """
        self._require_job(job_id, viewer)
        selection = visible_to(viewer, store.RecipientFilter(job_id=job_id))
        return self.cancel_matching(selection, actor=actor)

    def cancel_matching(self, selection: store.RecipientFilter, *, actor: str) -> OperatorResult:
        """Cancel the waiting (`queued`, `retry_wait`) recipients of ``selection``; audited.

        ``selection.statuses`` narrows the waiting statuses further; any other status
        in it is ignored, so nothing claimed or final is ever cancelled.
        """
        waiting = [str(s) for s in _SENDABLE]
        statuses = [s for s in selection.statuses or waiting if s in waiting]
        now = utcnow()
        with self.db.transaction() as session:
            rows = store.select_recipients(session, selection=replace(selection, statuses=statuses))
            ids = [rid for rid, _job, _status in rows]
            moved = store.cancel_waiting(
                session, ids=ids, at=now, cause=f"cancelled by {actor}", actor=actor
            )
            store.record_action(
                session,
                actor=actor,
                action="cancel",
                target=selection.job_id,
                detail={} if selection.job_id else selection.describe(),
                affected=moved,
            )
        jobs = [selection.job_id] if selection.job_id else sorted({job for _i, job, _s in rows})
        return OperatorResult(affected=moved, jobs=jobs)

    def _require_job(self, job_id: str, viewer: Viewer) -> None:
        with self.db.transaction() as session:
            if store.get_job(session, job_id=job_id, owner_key_id=viewer.owner_key_id) is None:
                raise NotFoundError(f"no job {job_id!r}")

    # --- pause and resume ----------------------------------------------------------

    def pause(self, *, actor: str, detail: str = "paused by an operator") -> dict[str, Any]:
        """Stop all claims until ``resume``; calls in flight finish and are recorded."""
        check_storable(detail, "the reason")
        with self.db.transaction() as session:
            changed = self.controls.set_pause(
                session, reason=PauseReason.MANUAL, detail=detail, actor=actor
            )
            store.record_action(
                session,
                actor=actor,
                action="pause",
                target=None,
                detail={"detail": detail},
                affected=int(changed),
            )
        return self.control()

    def resume(self, *, actor: str) -> dict[str, Any]:
        """End a pause of any reason, and wake workers for the work that waited."""
        with self.db.transaction() as session:
            was = store.get_control(session)
            reason = was.pause_reason
            store.update_control(session, values=UNPAUSED)
            store.record_action(
                session,
                actor=actor,
                action="resume",
                target=None,
                detail={"was": reason},
                affected=int(reason is not None),
            )
        if reason:
            log.warning("dispatch resumed by %s (was paused: %s)", actor, reason)
        self._wake_due()
        return self.control()

    def control(self) -> dict[str, Any]:
        """Paused or not (with reason, time and who), and the breaker's state."""
        with self.db.transaction() as session:
            return control_view(store.get_control(session))

    # --- sweeping ------------------------------------------------------------------

    def sweep(self) -> dict[str, int]:
        """One sweep: close abandoned batches as unknown, fail retries past their age,
        check credit while paused for it, wake workers for due work, and purge what is
        past ``DISPATCHER_RETENTION_DAYS`` (at most every retention check interval)."""
        abandoned = self._close_abandoned()
        too_old = self._fail_overdue_retries()
        expired = self._expire_overdue()
        self._check_credit()
        self.webhooks.release_stale()
        webhooks = self.webhooks.queue_finished()
        woken = self._wake_due()
        if self.webhooks.count_due():
            # Deliveries have their own queue, served paused or not.
            woken += self._wake_webhooks()
        # Last: the purge is the one step that can wait for the next sweep.
        purged = self.retention.maybe_purge()
        return {
            "abandoned_recipients": abandoned,
            "overdue_failed": too_old,
            "expired_recipients": expired,
            "webhooks_queued": webhooks,
            "woken": woken,
            "purged_jobs": purged,
        }

    def _close_abandoned(self) -> int:
        now = utcnow()
        older_than = now - dt.timedelta(seconds=self.settings.submitting_timeout_s)
        abandoned = 0
        with self.db.transaction() as session:
            for batch_id in store.stale_submitting_batches(session, older_than=older_than):
                abandoned += store.abandon_batch(
                    session,
                    batch_id=batch_id,
                    now=now,
                    cause=(
                        f"no result within {self.settings.submitting_timeout_s:g} s of the "
                        "claim: the worker died mid-call; the gateway may have sent it"
                    ),
                )
        if abandoned:
            log.warning("sweeper marked %d recipients unknown after a lost worker", abandoned)
        return abandoned

    def _fail_overdue_retries(self) -> int:
        now = utcnow()
        cutoff = now - dt.timedelta(seconds=self.settings.max_retry_age_s)
        with self.db.transaction() as session:
            ids = store.overdue_retries(session, created_before=cutoff)
            if not ids:
                return 0
            batches = store.batches_of(session, recipient_ids=ids)
            failed = store.transition(
                session,
                ids=ids,
                from_statuses=[_S.RETRY_WAIT],
                to_status=_S.FAILED,
                at=now,
                cause=f"still failing {self.settings.max_retry_age_s:g} s after it was due; "
                "gave up (DISPATCHER_MAX_RETRY_AGE_S)",
                actor="sweeper",
                values={"error_code": "RETRY_AGE_EXCEEDED", "next_attempt_at": None},
            )
            for batch_id in batches:
                store.settle_batch(session, batch_id=batch_id, now=now)
        if failed:
            log.warning("sweeper failed %d recipients past the maximum retry age", failed)
        return failed

    def _expire_overdue(self) -> int:
        """Expire queued batches (due, scheduled or waiting to retry) past their validity,
        so nothing stale is sent and the recipients show why, paused or not."""
        now = utcnow()
        expired = 0
        with self.db.transaction() as session:
            for batch_id, expires_at in store.expired_batches(session, now=now):
                expired += store.expire_batch(
                    session,
                    batch_id=batch_id,
                    now=now,
                    cause=_expiry_cause(expires_at),
                    actor="sweeper",
                )
        if expired:
            log.warning("sweeper expired %d recipients past their validity", expired)
        return expired

    def _check_credit(self) -> None:
        """While paused for credit, ask the gateway's balance now and then; resume above
        the threshold. One sweeper asks at a time (compare-and-set on the check time)."""
        now = utcnow()
        due_before = now - dt.timedelta(seconds=self.settings.credit_check_interval_s)
        with self.db.transaction() as session:
            control = store.get_control(session)
            if not control.paused or control.pause_reason != PauseReason.NO_CREDIT:
                return
            mine = store_dispatch.claim_credit_check(session, now=now, due_before=due_before)
        if not mine:
            return
        try:
            balance = self.client.balance()
        except (GatewayError, ConfigurationError) as exc:
            log.warning("credit check failed: %s", exc)
            return
        with self.db.transaction() as session:
            store.update_control(session, values={"last_balance": balance})
        if balance > self.settings.credit_resume_threshold:
            log.warning("balance %g is above the threshold; resuming dispatch", balance)
            with self.db.transaction() as session:
                store_dispatch.end_pause_for(session, PauseReason.NO_CREDIT, values=UNPAUSED)

    def _wake_due(self) -> int:
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
            woken += self._wake_beyond_waiting(count, lane, ask="pending")
        return woken

    def _wake_webhooks(self) -> int:
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

    def _pending_wakes(self, lane: Priority, *, ask: str = "pending") -> int | None:
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

    def rollup(self, *, force: bool = False) -> rollups.RollupReport | None:
        """Recompute the recent rollup minutes and status counts (``dispatcher.rollup``).

        None when another worker's run holds the lock or ran within the interval,
        unless ``force``.
        """
        return rollups.run(
            self.db,
            retention_days=self.settings.stats_retention_days,
            min_interval_s=0.0 if force else 0.9 * self.settings.rollup_interval_s,
        )

    # --- reading -------------------------------------------------------------------

    def job_view(self, job_id: str, *, viewer: Viewer = EVERY_JOB) -> dict[str, object]:
        """A job as JSON-ready data (SPEC section 5): id, status, recipients, totals.

        NotFoundError for a job that does not exist or that ``viewer`` may not see,
        alike.
        """
        with self.db.transaction() as session:
            job = store.get_job(session, job_id=job_id, owner_key_id=viewer.owner_key_id)
            if job is None:
                raise NotFoundError(f"no job {job_id!r}")
            recipients = store.job_recipients(session, job_id=job_id)
        return job_to_dict(job, recipients)

    def summary(self, job_ids: Sequence[str] | None = None) -> dict[str, Any]:
        """Recipients per status and error code, attempts, and a few gateway IDs."""
        with self.db.transaction() as session:
            result = store.totals(session, job_ids=job_ids)
            result["sample_ids"] = store.sample_message_ids(session, job_ids=job_ids, limit=5)
        return result

    def list_jobs(
        self,
        *,
        limit: int = 20,
        number: str | None = None,
        status: RecipientStatus | None = None,
        reference: str | None = None,
    ) -> list[dict[str, Any]]:
        """The newest jobs with their recipients per status, newest first."""
        selection = store.JobFilter(status=status, number=number, reference=reference)
        rows, _more = self.list_jobs_page(selection=selection, limit=limit)
        return rows

    def list_jobs_page(
        self,
        *,
        selection: store.JobFilter,
        limit: int,
        after: str | None = None,
        viewer: Viewer = EVERY_JOB,
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of jobs ``viewer`` may see, newest first, with ids below ``after``, and
        whether more follow.

        Shared by the CLI (``dispatcher jobs``) and the API (``GET /v1/jobs``).
        """
        selection = visible_to(viewer, selection)
        with self.db.transaction() as session:
            jobs, more = store.list_jobs(session, selection=selection, limit=limit, after=after)
            counts = store.status_counts(session, job_ids=[j.id for j in jobs])
        rows = []
        for job in jobs:
            job_counts = counts.get(job.id, {})
            pending = any(RecipientStatus(s) in PENDING_STATUSES for s in job_counts)
            rows.append(
                {
                    "id": job.id,
                    "created_at": job.created_at.isoformat(),
                    "status": "in_progress" if pending else "completed",
                    "reference": job.reference,
                    "priority": job.priority,
                    "send_at": _iso(job.send_at),
                    "recipients": job.recipient_count + job.refused_count,
                    "parts": job.parts,
                    "credits": job.parts * job.recipient_count,
                    "counts": job_counts,
                }
            )
        return rows, more


def job_status(recipients: Sequence[Recipient]) -> str:
    """A job's overall status: ``in_progress`` until every recipient is final."""
    if any(RecipientStatus(r.status) in PENDING_STATUSES for r in recipients):
        return "in_progress"
    return "completed"


def job_to_dict(job: Job, recipients: Sequence[Recipient]) -> dict[str, object]:
    """The JSON shape of a job shared by the CLI and the API."""
    counts: dict[str, int] = defaultdict(int)
    for r in recipients:
        counts[r.status] += 1
    return {
        "id": job.id,
        "status": job_status(recipients),
        "created_at": job.created_at.isoformat(),
        "kind": job.kind,
        "sender": job.sender,
        "maxconcat": job.maxconcat,
        "parts": job.parts,
        "credits": job.parts * job.recipient_count,
        "encoding": job.encoding,
        "reference": job.reference,
        "priority": job.priority,
        "send_at": _iso(job.send_at),
        "expires_at": _iso(job.expires_at),
        "created_by": job.created_by,
        "counts": dict(counts),
        "recipients": [
            {
                "number": r.number,
                "status": r.status,
                "gateway_message_id": r.gateway_message_id,
                "error_code": r.error_code,
                "error_detail": r.error_detail,
                "attempts": r.attempts,
                "next_attempt_at": r.next_attempt_at.isoformat() if r.next_attempt_at else None,
                "updated_at": r.updated_at.isoformat(),
            }
            for r in recipients
        ],
    }


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


MAX_LABEL_LENGTH = 200


def _check_label(name: str, value: object) -> str | None:
    """A reference or idempotency key: a non-empty printable string of bounded length."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidOptionError(f"{name} must be a string, not {type(value).__name__}")
    value = check_storable(value, name).strip()
    if not value:
        return None
    if len(value) > MAX_LABEL_LENGTH or not value.isprintable():
        raise InvalidOptionError(
            f"{name} must be printable and at most {MAX_LABEL_LENGTH} characters"
        )
    return value


def _request_hash(*parts: object) -> str:
    """A digest of a send request's content, for idempotent replays."""
    canonical = json.dumps(parts, default=repr, ensure_ascii=False, separators=(",", ":"))
    # surrogatepass: a number with a lone surrogate is refused on its own (recorded
    # as failed), so the hash must not fail on it; valid text encodes as before.
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _expiry_cause(expires_at: dt.datetime | None) -> str:
    when = expires_at.isoformat() if expires_at else "its expiry"
    return f"not sent: its validity ended at {when}"


def _outcome_summary(submission: Submission) -> str:
    parts = [
        f"{o.number}={o.outcome}:{o.gateway_message_id or o.error_code}"
        for o in submission.outcomes
    ]
    return f"host={submission.host} http={submission.http_status} " + ", ".join(parts)
