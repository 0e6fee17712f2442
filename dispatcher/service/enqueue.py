"""Enqueue: a send request checked, written whole in one transaction, then workers woken.

The first step of the commit order (``dispatcher.service.dispatch``): nothing is
acknowledged to a producer before its job, recipients, batches and history are
committed, and only then is a worker woken; a lost wake-up is the sweeper's to
repair (docs/design.md, "Guarantees").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dispatcher.config import Settings
from dispatcher.domain.lanes import Priority
from dispatcher.domain.message import (
    check_send_at_not_past,
    sender_for_key,
)
from dispatcher.domain.numbers import RecipientList, chunk, prepare
from dispatcher.domain.request import SendRequest
from dispatcher.domain.statuses import RecipientStatus
from dispatcher.domain.times import utcnow
from dispatcher.errors import ConflictError, NoRecipientsError
from dispatcher.gateway import protocol
from dispatcher.persistence import store
from dispatcher.persistence.db import Database, IntegrityError
from dispatcher.persistence.models import Job
from dispatcher.service.wake import Wakes


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


class Enqueuer:
    """Checks send requests and writes them; one per process, shared by its threads.

    ``check_url`` checks a callback URL and its address (``Webhooks.check_url``);
    ``wakes`` wakes workers once a job is committed.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        check_url: Callable[[object], str | None],
        wakes: Wakes,
    ) -> None:
        self.settings = settings
        self.db = db
        self.check_url = check_url
        self.wakes = wakes

    def enqueue(
        self,
        request: SendRequest,
        *,
        actor: str = "python",
        allowed_senders: Sequence[str] | None = None,
        owner_key_id: int | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> EnqueueResult:
        """Write a checked send request whole in one transaction, then wake workers.

        ``request`` holds what the producer asked for, each field checked
        (``SendRequest.build``); what needs the outside world is decided here. With
        no sender, ``DISPATCHER_DEFAULT_SENDER`` is used; ``allowed_senders`` (an API
        key's grants) restricts the sender to those and the default, raising
        SenderNotAllowedError, and None (Python, the CLI) allows any valid sender. A
        callback URL's address is checked (UnsafeCallbackError). A job without
        ``valid_for_s`` takes ``DISPATCHER_DEFAULT_VALIDITY_S``. ``owner_key_id`` is
        the API key enqueuing, which alone (besides operators) will see the job.
        ``clock`` tells the time.

        With an idempotency key, a second request from the same ``actor`` with the
        same key and the same content returns the first job (``replayed``) and
        sends nothing; with different content it raises ConflictError.

        Raises a ValidationError subclass, having written nothing, when the request
        cannot be sent to anybody.
        """
        sender = sender_for_key(request.sender, self.settings.default_sender, allowed_senders)
        request = request.with_callback_url(self.check_url(request.callback_url))
        validity_s = request.valid_for_s or self.settings.default_validity_s
        request_hash = request.content_hash()
        key = request.idempotency_key
        if key is not None:
            replay = self._replay(actor, key, request_hash)
            if replay is not None:
                return replay
        # After the replay: a retried request is answered with its job even once
        # its send time has passed.
        check_send_at_not_past(request.send_at, clock())
        prepared = prepare(list(request.numbers), self.settings.default_region)
        if not prepared.accepted:
            reasons = "; ".join(f"{r.raw!r}: {r.reason}" for r in prepared.refused[:5])
            raise NoRecipientsError(
                "no valid recipient" + (f" ({reasons})" if reasons else " given")
            )

        now = clock()
        job_id = store.new_job_id()
        groups = list(chunk(prepared.accepted, protocol.MAX_RECIPIENTS_PER_SUBMISSION))
        timing = _Timing(now, request.send_at, request.priority, validity_s)
        try:
            self._write_job(
                job_id,
                timing,
                request,
                sender,
                prepared,
                groups,
                actor=actor,
                request_hash=request_hash,
                owner_key_id=owner_key_id,
            )
        except IntegrityError:
            # Two requests with one idempotency key raced; the loser returns the winner's.
            if key is None:
                raise
            replay = self._replay(actor, key, request_hash)
            if replay is None:
                raise
            return replay
        # Only after the commit: a worker woken earlier could find nothing. A job
        # scheduled for later wakes nobody now: the sweeper wakes workers when it
        # falls due (the database is the schedule, not a broker countdown).
        if timing.due_at <= now:
            self.wakes.after_commit(len(groups), request.priority)
        return EnqueueResult(
            job_id=job_id,
            accepted=prepared.accepted,
            refused=[(r.raw, r.reason) for r in prepared.refused],
            batches=len(groups),
            parts=request.info.parts,
            priority=str(request.priority),
            send_at=request.send_at,
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
                if r.batch_id is None and r.attempts == 0 and r.status == RecipientStatus.FAILED
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
        request: SendRequest,
        sender: str | None,
        prepared: RecipientList,
        groups: list[Sequence[str]],
        *,
        actor: str,
        request_hash: str,
        owner_key_id: int | None,
    ) -> None:
        now = timing.now
        job = Job(
            id=job_id,
            created_at=now,
            text=request.text,
            sender=sender,
            kind=str(request.kind),
            maxconcat=request.maxconcat,
            parts=request.info.parts,
            encoding=str(request.info.encoding),
            recipient_count=len(prepared.accepted),
            refused_count=len(prepared.refused),
            created_by=actor,
            owner_key_id=owner_key_id,
            idempotency_key=request.idempotency_key,
            request_hash=request_hash,
            reference=request.reference,
            callback_url=request.callback_url,
            callback_state="waiting" if request.callback_url else None,
            send_at=timing.send_at,
            priority=str(timing.priority),
            expires_at=timing.expires_at,
        )
        refused = [(r.raw[:32], f"refused at enqueue: {r.reason}"[:500]) for r in prepared.refused]
        # A small job is one statement on PostgreSQL: sent alone, it commits itself
        # in the one round trip a producer of one-recipient jobs waits for.
        one = store.written_in_one_statement(self.db.engine, groups=groups, refused=refused)
        with (self.db.one_statement if one else self.db.transaction)() as session:
            store.write_job(
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
