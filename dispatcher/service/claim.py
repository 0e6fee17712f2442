"""The claim: the oldest due batch taken for one HTTP submission, committed before it.

The second step of the commit order (``dispatcher.service.dispatch``): the batch
goes ``submitting`` with its attempt row written as in flight, and that is
committed before the call, so a second worker finds nothing to claim and a worker
killed mid-call leaves evidence the sweeper turns into ``unknown``, never into a
resend (docs/design.md, "Guarantees"). Expired batches and emptied ones are
closed on the way, and the pause and breaker are read in the claim's own
transaction (``dispatcher.service.control``).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
from dataclasses import dataclass

from dispatcher.config import Settings
from dispatcher.domain.lanes import Priority
from dispatcher.domain.message import check_kind
from dispatcher.domain.statuses import BreakerState
from dispatcher.domain.times import utcnow
from dispatcher.gateway.client import Message
from dispatcher.persistence import store
from dispatcher.persistence.db import Database, Session
from dispatcher.service.control import Controls


def worker_name() -> str:
    """host:pid:thread, enough to find the process that made an attempt."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"


def claim_lanes(settings: Settings) -> tuple[int, ...]:
    """The lanes a process claims from, high first (``DISPATCHER_WORKER_LANES``)."""
    return tuple(Priority(name).lane for name in settings.worker_lanes)


def expiry_cause(expires_at: dt.datetime | None) -> str:
    """The cause recorded for recipients not sent before their validity ended."""
    when = expires_at.isoformat() if expires_at else "its expiry"
    return f"not sent: its validity ended at {when}"


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


def _sendable_claim(batch: store.ClaimedBatch, now: dt.datetime) -> bool:
    """Whether a claimed batch will go out: unexpired, with recipients left to send."""
    return bool(batch.recipients) and (batch.expires_at is None or batch.expires_at > now)


def claim(db: Database, controls: Controls, *, lanes: tuple[int, ...], worker: str) -> Claim | None:
    """Claim the oldest due batch in ``lanes`` and commit the claim with its in-flight
    attempt; None when nothing is due, or dispatch is paused or its breaker open."""
    claims = claim_many(db, controls, lanes=lanes, worker=worker, limit=1)
    return claims[0] if claims else None


def claim_many(
    db: Database, controls: Controls, *, lanes: tuple[int, ...], worker: str, limit: int
) -> list[Claim]:
    """Claim up to ``limit`` of the oldest due batches in ``lanes`` and commit the claims
    with their in-flight attempts, in one transaction; empty when nothing is due, or
    dispatch is paused or its breaker open.

    Several only on PostgreSQL with dispatch open (``store.claim_if_open``, one
    statement); the careful path (another database, a pause, the breaker's probe)
    claims one.
    """
    while True:
        now = utcnow()
        with db.transaction() as session:
            probe, retry_at = False, None
            # PostgreSQL: control row, claims, jobs, recipients and attempt rows in one
            # statement while dispatch is open; the careful path below otherwise.
            batches = store.claim_if_open(session, now=now, worker=worker, lanes=lanes, limit=limit)
            if isinstance(batches, store.Raced):
                continue
            if isinstance(batches, store.Gated):
                gate = controls.gate(session, now)
                if gate is None:
                    return []
                probe, retry_at = gate
                one = store.claim_batch(session, now=now, worker=worker, lanes=lanes)
                batches = [one] if one is not None else None
            if probe and (not batches or not _sendable_claim(batches[0], now)):
                # Nothing to probe with (nothing due, or the batch claimed is
                # expired or emptied): the next due batch may probe at once, rather
                # than dispatch waiting out the probe's timeout.
                store.update_control(
                    session,
                    values={"breaker_state": BreakerState.OPEN, "breaker_retry_at": retry_at},
                )
            if not batches:
                return []
            claims = [
                c
                for batch in batches
                if (c := _start(session, batch, now=now, worker=worker, probe=probe))
            ]
        if claims or not any(batch.more_due for batch in batches):
            return claims
        # Every batch claimed was closed on the way (expired, emptied): look again.


def _start(
    session: Session, batch: store.ClaimedBatch, *, now: dt.datetime, worker: str, probe: bool
) -> Claim | None:
    """A claimed batch made ready to send, with its attempt row; None when it was
    closed instead (expired, or emptied meanwhile)."""
    if batch.expires_at is not None and batch.expires_at <= now:
        # Sent now it would arrive too late to matter (an OTP after its validity):
        # after an outage, nothing stale goes out in a burst.
        store.expire_batch(
            session,
            batch_id=batch.id,
            now=now,
            cause=expiry_cause(batch.expires_at),
            actor=worker,
        )
        return None
    if not batch.recipients:
        # Everything in it was cancelled or settled meanwhile.
        store.settle_batch(session, batch_id=batch.id, now=now)
        return None
    kind = check_kind(batch.kind)
    attempt_id = batch.attempt_id
    if attempt_id is None:
        attempt_id = store.start_attempt(
            session,
            batch=batch,
            request=store.request_json(batch, kind.gateway_type),
            now=now,
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
