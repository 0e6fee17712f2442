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
   gateway ID is lost.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import func
from sqlalchemy.exc import DBAPIError, OperationalError

from dispatcher import store
from dispatcher.config import Settings
from dispatcher.db import Database
from dispatcher.errors import NoRecipientsError, NotFoundError
from dispatcher.gateway import protocol
from dispatcher.gateway.client import GatewayClient, Message, Submission
from dispatcher.gateway.protocol import Outcome, RecipientOutcome
from dispatcher.message import check_kind, check_sender
from dispatcher.models import (
    PENDING_STATUSES,
    Attempt,
    AttemptOutcome,
    Job,
    Recipient,
    RecipientStatus,
    utcnow,
)
from dispatcher.numbers import chunk, prepare
from dispatcher.parts import check_maxconcat, check_text
from dispatcher.retry import RetryPolicy

log = logging.getLogger(__name__)

# How long a worker keeps trying to write a reply while the database is away
# before giving up and leaving the batch to the sweeper (as `unknown`).
RECORD_RETRY_BUDGET_S = 300.0
# Credit exhausted: the work waits this long before it is looked at again.
NO_CREDIT_RECHECK_S = 60.0

_S = RecipientStatus
_SENDABLE = (_S.QUEUED, _S.RETRY_WAIT)


class Waker(Protocol):
    """Something that wakes ``count`` workers to look for due work."""

    def __call__(self, count: int) -> None: ...


def no_wake(count: int) -> None:
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


@dataclass(slots=True)
class Claim:
    """A batch claimed for one HTTP submission, with what it needs to send."""

    batch_id: int
    attempt_id: int
    attempt_no: int
    job_id: str
    recipients: list[store.PendingRecipient]
    message: Message


@dataclass(slots=True)
class DispatchReport:
    """What a run of ``dispatch_due`` did."""

    batches: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))


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
            settings.effective_database_url, pool_size=settings.worker_concurrency
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
        actor: str = "python",
    ) -> EnqueueResult:
        """Validate a send request, write it whole in one transaction, then wake workers.

        Raises a ValidationError subclass, having written nothing, when the request
        cannot be sent to anybody.
        """
        maxconcat = check_maxconcat(maxconcat)
        kind_ = check_kind(kind)
        sender = check_sender(sender)
        info = check_text(text, maxconcat)
        raw_numbers = list(to.split(",")) if isinstance(to, str) else list(to)
        prepared = prepare(raw_numbers, self.settings.default_region)
        if not prepared.accepted:
            reasons = "; ".join(f"{r.raw!r}: {r.reason}" for r in prepared.refused[:5])
            raise NoRecipientsError(
                "no valid recipient" + (f" ({reasons})" if reasons else " given")
            )

        now = utcnow()
        job_id = store.new_job_id()
        groups = list(chunk(prepared.accepted, protocol.MAX_RECIPIENTS_PER_SUBMISSION))
        with self.db.transaction() as session:
            store.insert_job(
                session,
                job=Job(
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
                ),
            )
            batch_ids = store.insert_batches(session, job_id=job_id, count=len(groups), due_at=now)
            rows: list[dict[str, object]] = []
            for batch_id, numbers in zip(batch_ids, groups, strict=True):
                rows.extend(
                    {
                        "job_id": job_id,
                        "batch_id": batch_id,
                        "number": number,
                        "status": str(_S.QUEUED),
                        "attempts": 0,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for number in numbers
                )
            rows.extend(
                {
                    "job_id": job_id,
                    "batch_id": None,
                    "number": refused.raw[:32],
                    "status": str(_S.FAILED),
                    "error_code": "INVALID_NUMBER",
                    "error_detail": f"refused at enqueue: {refused.reason}"[:500],
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                }
                for refused in prepared.refused
            )
            store.insert_recipients(session, rows=rows)
            store.record_transitions(
                session,
                where=Recipient.job_id == job_id,
                to_status=None,
                at=now,
                cause=func.coalesce(Recipient.error_detail, "enqueued"),
                actor=actor,
            )
        # Only after the commit: a worker woken earlier could find nothing.
        self._wake(len(groups))
        return EnqueueResult(
            job_id=job_id,
            accepted=prepared.accepted,
            refused=[(r.raw, r.reason) for r in prepared.refused],
            batches=len(groups),
            parts=info.parts,
        )

    def _wake(self, batches: int) -> None:
        count = min(batches, self.settings.wake_fanout)
        if count <= 0:
            return
        try:
            self.waker(count)
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
                batch = store.claim_next_batch(session, now=now, worker=worker)
                if batch is None:
                    return None
                recipients = store.sendable_recipients(session, batch_id=batch.id)
                if not recipients:
                    # Everything in it was cancelled or settled meanwhile.
                    store.settle_batch(session, batch_id=batch.id, now=now)
                    continue
                job = store.get_job(session, job_id=batch.job_id)
                assert job is not None
                kind = check_kind(job.kind)
                request = {
                    "to": ",".join(r.number for r in recipients),
                    "from": job.sender,
                    "maxconcat": job.maxconcat,
                    "type": kind.gateway_type,
                }
                attempt_id = store.insert_attempt(
                    session,
                    attempt=Attempt(
                        batch_id=batch.id,
                        job_id=job.id,
                        attempt_no=batch.attempts,
                        numbers=",".join(r.number for r in recipients),
                        request=json.dumps(request),
                        started_at=now,
                        worker=worker,
                    ),
                )
                store.transition(
                    session,
                    ids=[r.id for r in recipients],
                    from_statuses=_SENDABLE,
                    to_status=_S.SUBMITTING,
                    at=now,
                    cause=f"attempt {batch.attempts} claimed",
                    actor=worker,
                    attempt_id=attempt_id,
                )
                return Claim(
                    batch_id=batch.id,
                    attempt_id=attempt_id,
                    attempt_no=batch.attempts,
                    job_id=job.id,
                    recipients=recipients,
                    message=Message(
                        text=job.text,
                        sender=job.sender,
                        maxconcat=job.maxconcat,
                        message_type=kind.gateway_type,
                    ),
                )

    def submit(self, claim: Claim) -> Submission:
        """Make the HTTP call for a claimed batch."""
        return self.client.submit([r.number for r in claim.recipients], claim.message)

    def record(self, claim: Claim, submission: Submission, *, worker: str | None = None) -> None:
        """Write the attempt's result and every recipient's, retrying while the DB is away."""
        worker = worker or worker_name()
        deadline = time.monotonic() + RECORD_RETRY_BUDGET_S
        delay_s = 0.5
        while True:
            try:
                self._record_once(claim, submission, worker)
                return
            except (OperationalError, DBAPIError) as exc:
                if time.monotonic() >= deadline:
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
        now = utcnow()
        by_id = {r.number: r for r in claim.recipients}
        groups: dict[tuple[RecipientStatus, str | None, str | None, str], list[int]] = defaultdict(
            list
        )
        retry_at: dt.datetime | None = None
        for outcome in submission.outcomes:
            recipient = by_id[outcome.number]
            made = recipient.attempts + 1
            status, cause = self._status_for(outcome, made)
            key = (status, outcome.gateway_message_id, outcome.error_code, cause)
            groups[key].append(recipient.id)
            if status is _S.RETRY_WAIT and retry_at is None:
                retry_at = now + dt.timedelta(seconds=self.policy.delay_s(made))
            if status is _S.QUEUED and retry_at is None:
                retry_at = now + dt.timedelta(seconds=NO_CREDIT_RECHECK_S)
        with self.db.transaction() as session:
            store.complete_attempt(
                session,
                attempt_id=claim.attempt_id,
                values={
                    "finished_at": now,
                    "host": submission.host,
                    "http_status": submission.http_status,
                    "raw_reply": submission.raw_reply,
                    "latency_ms": submission.latency_ms,
                    "outcome": _attempt_outcome(submission.outcomes),
                    "error": submission.error,
                },
            )
            for (status, message_id, code, cause), ids in groups.items():
                values: dict[str, object] = {"error_code": code}
                if status is not _S.QUEUED:
                    values["attempts"] = Recipient.attempts + 1
                if message_id is not None:
                    values["gateway_message_id"] = message_id
                if status in (_S.RETRY_WAIT, _S.QUEUED):
                    values["next_attempt_at"] = retry_at
                else:
                    values["next_attempt_at"] = None
                moved = store.transition(
                    session,
                    ids=ids,
                    from_statuses=[_S.SUBMITTING],
                    to_status=status,
                    at=now,
                    cause=cause,
                    actor=worker,
                    attempt_id=claim.attempt_id,
                    values=values,
                )
                if moved != len(ids):
                    log.warning(
                        "attempt %s: %d of %d recipients had left `submitting` before the "
                        "reply was recorded; the reply stays on the attempt row",
                        claim.attempt_id,
                        len(ids) - moved,
                        len(ids),
                    )
            store.settle_batch(session, batch_id=claim.batch_id, now=now)
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
        worker = worker or worker_name()
        claim = self.claim(worker=worker)
        if claim is None:
            return None
        submission = self.submit(claim)
        self.record(claim, submission, worker=worker)
        return submission

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
        deadline = time.monotonic() + budget_s
        while report.batches < max_batches and time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                break
            submission = self.dispatch_one(worker=worker)
            if submission is None:
                break
            report.batches += 1
            for outcome in submission.outcomes:
                report.outcomes[outcome.outcome] += 1
        return report

    # --- sweeping ------------------------------------------------------------------

    def sweep(self) -> dict[str, int]:
        """Close batches abandoned mid-call as unknown, and wake workers for due work."""
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
        with self.db.transaction() as session:
            due, _oldest = store.count_due(session, now=now)
        if due:
            self._wake(due)
        return {"abandoned_recipients": abandoned, "due_batches": due}

    # --- reading -------------------------------------------------------------------

    def job_view(self, job_id: str) -> dict[str, object]:
        """A job as JSON-ready data (SPEC section 5): id, status, recipients, totals."""
        with self.db.transaction() as session:
            job = store.get_job(session, job_id=job_id)
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
    ) -> list[dict[str, Any]]:
        """The newest jobs with their recipients per status, newest first."""
        with self.db.transaction() as session:
            jobs = store.recent_jobs(session, limit=limit, number=number, status=status)
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
                    "recipients": job.recipient_count + job.refused_count,
                    "counts": job_counts,
                }
            )
        return rows


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
        "encoding": job.encoding,
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


def _outcome_summary(submission: Submission) -> str:
    parts = [
        f"{o.number}={o.outcome}:{o.gateway_message_id or o.error_code}"
        for o in submission.outcomes
    ]
    return f"host={submission.host} http={submission.http_status} " + ", ".join(parts)
