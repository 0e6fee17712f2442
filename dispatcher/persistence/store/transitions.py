"""Recipient status changes, each with its status event: the history is written by
the same code that changes a status, so no change goes unrecorded.

``transition`` is a compare-and-set on the status (and an optional guard): a
recipient something else has moved meanwhile is left alone.

The claim is recorded per submission (docs/design.md section 3): recipients of a
batch in flight keep their stored ``queued`` or ``retry_wait`` and read as
``submitting`` (``Recipient.shown_status``). So a change that starts from a waiting
status must leave alone those whose batch a worker holds: ``transition`` takes the
batches' side of that by ``batches``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    String,
    case,
    insert,
    literal,
    null,
    select,
    type_coerce,
    update,
)
from sqlalchemy.orm import Session

from dispatcher.domain.statuses import (
    WAITING_STATUSES,
    BatchStatus,
    RecipientStatus,
    check_transitions,
)
from dispatcher.persistence import dialect
from dispatcher.persistence.models import Batch, Recipient, StatusEvent

BatchSide = Literal["idle", "held", "in_flight"]
"""Where the recipients' batches stand, for a change from a waiting status:

- ``idle``: only recipients whose batch no worker holds move; the batches are
  locked and touched (``_idle_batches``) so a claim waits for this change, or this
  change sees the claim, or the claim sees the change and claims again;
- ``held``: the caller holds the batches (it locked or claimed them itself);
- ``in_flight``: the recipients are those of a submission: a stored waiting status
  reads, and is recorded, as ``submitting``.
"""

_WAITING = [str(s) for s in WAITING_STATUSES]


_KEEP: Any = object()
"""``record_transitions``' default: each event takes its recipient's current code."""


def record_transitions(
    session: Session,
    *,
    where: ColumnElement[bool],
    to_status: RecipientStatus | None,
    at: dt.datetime,
    cause: str | ColumnElement[Any],
    actor: str,
    attempt_id: int | None = None,
    in_flight: bool = False,
    error_code: Any = _KEEP,
) -> None:
    """Append a status event for every recipient matching ``where``.

    Called just before the update that changes their status, so ``from_status``
    is read from the rows as they are (``submitting`` for a waiting one when
    ``in_flight``). ``to_status=None`` records each row's current status as its
    first one (at enqueue), with no previous status. ``error_code``: the code the
    update gives them; by default the one each has, which it keeps.
    """
    from_known = to_status is not None
    cause_expr = cause if not isinstance(cause, str) else literal(cause)
    stored = type_coerce(Recipient.stored_status, String)
    from_status: ColumnElement[Any] = (
        case((stored.in_(_WAITING), str(RecipientStatus.SUBMITTING)), else_=stored)
        if in_flight
        else stored
    )
    source = select(
        Recipient.id,
        Recipient.job_id,
        literal(at, type_=StatusEvent.at.type),
        from_status if from_known else null(),
        literal(str(to_status)) if to_status is not None else Recipient.stored_status,
        cause_expr,
        literal(actor),
        literal(attempt_id, type_=StatusEvent.attempt_id.type),
        Recipient.error_code
        if error_code is _KEEP
        else literal(error_code, type_=StatusEvent.error_code.type),
    ).where(where)
    session.execute(
        insert(StatusEvent).from_select(
            [
                StatusEvent.recipient_id,
                StatusEvent.job_id,
                StatusEvent.at,
                StatusEvent.from_status,
                StatusEvent.to_status,
                StatusEvent.cause,
                StatusEvent.actor,
                StatusEvent.attempt_id,
                StatusEvent.error_code,
            ],
            source,
        )
    )


def status_recheck(statuses: Iterable[str]) -> ColumnElement[bool]:
    """``status IN statuses`` for rows already found by id or batch, kept off the status index.

    Right after a large job is enqueued the planner's statistics still say that
    few rows are ``queued``, so it would intersect the id (or batch) lookup with a
    scan of the (status, updated_at) index over the whole new backlog, on every
    claim and every reply: measured at 20,000 index entries read to check 100
    rows. ``status || ''`` is the same test, which no index serves, so the few
    rows found by the selective condition are just rechecked.
    """
    # Typed as plain text: the enum type would check '' as a status.
    return (type_coerce(Recipient.stored_status, String) + "").in_([str(s) for s in statuses])


def transition(
    session: Session,
    *,
    ids: Collection[int],
    from_statuses: Iterable[RecipientStatus],
    to_status: RecipientStatus,
    at: dt.datetime,
    cause: str,
    actor: str,
    attempt_id: int | None = None,
    values: dict[str, Any] | None = None,
    guard: ColumnElement[bool] | None = None,
    batches: BatchSide = "idle",
) -> int:
    """Move recipients ``ids`` that are in one of ``from_statuses`` to ``to_status``.

    Records one status event per recipient moved; returns how many moved. The
    status condition (and ``guard``, if given) makes it a compare-and-set: a
    recipient something else has moved meanwhile is left alone. ``from_statuses``
    are statuses as readers show them; ``batches`` says how the recipients'
    batches stand (``BatchSide``).
    """
    olds = [RecipientStatus(s) for s in from_statuses]
    check_transitions(olds, to_status)
    if not ids:
        return 0
    allowed = {str(s) for s in olds}
    if batches == "in_flight" and RecipientStatus.SUBMITTING in olds:
        allowed.update(_WAITING)
    where = dialect.id_in(session, Recipient.id, ids) & status_recheck(sorted(allowed))
    if batches == "idle" and allowed & set(_WAITING):
        where = where & _idle_batches(session, ids, at)
    if guard is not None:
        where = where & guard
    record_transitions(
        session,
        where=where,
        to_status=to_status,
        at=at,
        cause=cause,
        actor=actor,
        attempt_id=attempt_id,
        in_flight=batches == "in_flight",
        error_code=(values or {}).get("error_code", _KEEP),
    )
    result = session.execute(
        update(Recipient)
        .where(where)
        .values(stored_status=str(to_status), updated_at=at, **(values or {}))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def _idle_batches(session: Session, ids: Collection[int], at: dt.datetime) -> ColumnElement[bool]:
    """Recipients whose batch no worker holds, with those batches locked for the rest
    of the transaction and touched (``updated_at``), in id order.

    A claim racing this change either committed first (its batch is ``submitting``
    and left out) or finds the batch locked and skips it, or, if it read the batch
    before this change committed, sees the batch's row changed since and claims again
    (``claims._claim_statement``), so it never carries what this change moved. An
    exclusive lock, not a shared one: two such changes on one batch queue up instead
    of each waiting for the other to give up its share before it can settle it.
    """
    theirs = select(Recipient.batch_id).where(dialect.id_in(session, Recipient.id, ids))
    chosen = (
        select(Batch.id)
        .where(Batch.id.in_(theirs), Batch.status != str(BatchStatus.SUBMITTING))
        .order_by(Batch.id)
    )
    if dialect.is_postgresql(session):
        chosen = chosen.with_for_update()
    idle = list(
        session.execute(
            update(Batch)
            .where(Batch.id.in_(chosen))
            .values(updated_at=at)
            .returning(Batch.id)
            .execution_options(synchronize_session=False)
        ).scalars()
    )
    return Recipient.batch_id.in_(idle) | Recipient.batch_id.is_(None)
