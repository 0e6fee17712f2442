"""Settling `unknown` recipients: an operator who has learned from the gateway's own
records whether a message went records it, as `sent` (with its gateway ID when known)
or `failed`, with the reason, audited (docs/operating.md, "Settle").

`unknown` means the dispatcher cannot know whether the gateway sent it (a reply
lost, a worker killed mid-call); it never resubmits one by itself. An operator can
find out, from the vendor's delivery reports or account history, and settle it: the
recipient's history keeps its `unknown` and adds the operator's move with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dispatcher.domain.statuses import RecipientStatus
from dispatcher.domain.storable import check_storable
from dispatcher.domain.tenancy import EVERY_JOB, Viewer
from dispatcher.domain.times import utcnow
from dispatcher.errors import InvalidOptionError, NotFoundError
from dispatcher.persistence import store
from dispatcher.persistence.db import Database
from dispatcher.persistence.store import visible_to

SETTLED_AS = (RecipientStatus.SENT, RecipientStatus.FAILED)
MAX_REASON_LENGTH = 400
MAX_GATEWAY_ID_LENGTH = 2000


@dataclass(frozen=True, slots=True)
class Settled:
    """What a settle moved."""

    settled: int
    job: str
    status: RecipientStatus


def settle(
    db: Database,
    *,
    job_id: str,
    status: RecipientStatus | str,
    reason: str,
    actor: str,
    numbers: Iterable[str] | None = None,
    gateway_message_id: str | None = None,
    viewer: Viewer = EVERY_JOB,
) -> Settled:
    """Settle the `unknown` recipients of ``job_id`` (those with ``numbers``, else all)
    as ``status`` (`sent` or `failed`) for ``reason``, audited.

    InvalidOptionError for another status, an empty reason, or a gateway ID with
    `failed` or for more than one recipient (an ID names one message); NotFoundError
    for a job ``viewer`` may not see. Recipients no longer `unknown` (settled or
    retried meanwhile) are left alone and not counted.
    """
    wanted = _status(status)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidOptionError("a settle needs a reason: what the gateway's records say")
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidOptionError(f"the reason is at most {MAX_REASON_LENGTH} characters")
    check_storable(reason, "the reason")
    if gateway_message_id is not None:
        if wanted is not RecipientStatus.SENT:
            raise InvalidOptionError("a gateway ID settles a recipient as sent, not failed")
        if not gateway_message_id.strip() or len(gateway_message_id) > MAX_GATEWAY_ID_LENGTH:
            raise InvalidOptionError("the gateway ID is empty or too long")
        check_storable(gateway_message_id, "the gateway ID")
    selection = visible_to(
        viewer,
        store.RecipientFilter(
            job_id=job_id,
            statuses=[str(RecipientStatus.UNKNOWN)],
            numbers=list(numbers) if numbers is not None else None,
        ),
    )
    now = utcnow()
    with db.transaction() as session:
        if store.get_job(session, job_id=job_id, owner_key_id=viewer.owner_key_id) is None:
            raise NotFoundError(f"no job {job_id!r}")
        ids = [rid for rid, _job, _status in store.select_recipients(session, selection=selection)]
        if gateway_message_id is not None and len(ids) > 1:
            raise InvalidOptionError(
                f"a gateway ID names one message, and {len(ids)} recipients would be "
                "settled: name the number"
            )
        moved = store.settle_unknown(
            session,
            ids=ids,
            to_status=wanted,
            gateway_message_id=gateway_message_id,
            cause=f"settled as {wanted} by an operator: {reason}",
            at=now,
            actor=actor,
        )
        store.record_action(
            session,
            actor=actor,
            action="settle",
            target=job_id,
            detail={
                "status": str(wanted),
                "reason": reason,
                "numbers": len(selection.numbers) if selection.numbers is not None else None,
                "gateway_message_id": gateway_message_id is not None,
            },
            affected=moved,
        )
    return Settled(settled=moved, job=job_id, status=wanted)


def _status(status: RecipientStatus | str) -> RecipientStatus:
    try:
        wanted = RecipientStatus(status)
    except ValueError:
        wanted = None
    if wanted not in SETTLED_AS:
        raise InvalidOptionError("an unknown recipient is settled as sent or failed")
    assert wanted is not None
    return wanted


def acknowledge_unknown(db: Database, *, actor: str) -> int:
    """Record that an operator has seen every recipient `unknown` so far: the
    UnknownRecipients alert (``sms_dispatcher_unknown_unacknowledged``) counts only
    those that become `unknown` later. Returns how many were unacknowledged; audited."""
    now = utcnow()
    with db.transaction() as session:
        since = store.get_control(session).unknown_acknowledged_at
        seen = store.unknown_since(session, since=since)
        store.update_control(session, values={"unknown_acknowledged_at": now})
        store.record_action(
            session,
            actor=actor,
            action="acknowledge_unknown",
            target=None,
            detail={"since": since},
            affected=seen,
        )
    return seen
