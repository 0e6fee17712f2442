"""The dispatch control row: the pause and the circuit breaker every claim consults
(docs/design.md, section 2), changed by compare-and-set."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session

from dispatcher.domain.statuses import BreakerState, PauseReason
from dispatcher.domain.times import utcnow
from dispatcher.persistence import dialect
from dispatcher.persistence.models import CONTROL_ROW_ID, DispatchControl


def get_control(session: Session) -> DispatchControl:
    """The dispatch control row, created if missing (a wiped table must not crash workers)."""
    row = session.get(DispatchControl, CONTROL_ROW_ID, populate_existing=True)
    if row is not None:
        return row
    values = {
        "id": CONTROL_ROW_ID,
        "paused": False,
        "breaker_state": str(BreakerState.CLOSED),
        "breaker_failures": 0,
        "breaker_trips": 0,
        "updated_at": utcnow(),
    }
    session.execute(dialect.insert_or_ignore(session, DispatchControl, values))
    row = session.get(DispatchControl, CONTROL_ROW_ID, populate_existing=True)
    assert row is not None
    return row


def update_control(
    session: Session, *, values: dict[str, Any], where: ColumnElement[bool] | None = None
) -> bool:
    """Update the control row if ``where`` holds (compare-and-set); True if it did."""
    get_control(session)
    query = update(DispatchControl).where(DispatchControl.id == CONTROL_ROW_ID)
    if where is not None:
        query = query.where(where)
    result = session.execute(
        query.values(updated_at=utcnow(), **values).execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def reset_failures(session: Session) -> None:
    """Zero the breaker's count of failures in a row, if it is not zero already.

    No read first and no row created: a missing or zero count is left as it is.
    """
    session.execute(
        update(DispatchControl)
        .where(DispatchControl.id == CONTROL_ROW_ID, DispatchControl.breaker_failures > 0)
        .values(breaker_failures=0, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def take_probe(
    session: Session, *, state: BreakerState, now: dt.datetime, lease_until: dt.datetime
) -> bool:
    """Make this claimer the breaker's probe, leased until ``lease_until``, if the
    breaker is still in ``state`` and its retry time has come; True if it won."""
    return update_control(
        session,
        values={"breaker_state": BreakerState.PROBING, "breaker_retry_at": lease_until},
        where=(DispatchControl.breaker_state == str(state))
        & (DispatchControl.breaker_retry_at.is_(None) | (DispatchControl.breaker_retry_at <= now)),
    )


def count_breaker_failure(session: Session) -> None:
    """Add one to the breaker's count of whole submissions failed in a row."""
    update_control(session, values={"breaker_failures": DispatchControl.breaker_failures + 1})


def open_breaker(session: Session, *, trips: int, now: dt.datetime, retry_at: dt.datetime) -> None:
    """Open the breaker (its ``trips``-th time in a row) until ``retry_at``; the first
    trip stamps when the outage began, later ones keep that time."""
    update_control(
        session,
        values={
            "breaker_state": BreakerState.OPEN,
            "breaker_trips": trips,
            "breaker_opened_at": now if trips == 1 else DispatchControl.breaker_opened_at,
            "breaker_retry_at": retry_at,
        },
    )


def set_pause(session: Session, *, values: Mapping[str, object]) -> bool:
    """Write a pause's ``values`` unless dispatch is already paused for its credentials;
    True if it did."""
    # A credentials pause outranks the others: it needs a person whatever the balance.
    return update_control(
        session,
        values=dict(values),
        where=DispatchControl.paused.is_(False)
        | (DispatchControl.pause_reason != str(PauseReason.LOGIN_INVALID)),
    )


def claim_credit_check(session: Session, *, now: dt.datetime, due_before: dt.datetime) -> bool:
    """Stamp the credit check at ``now`` if none ran since ``due_before``: one sweeper
    asks the gateway at a time. True if this one is to ask."""
    return update_control(
        session,
        values={"credit_checked_at": now},
        where=DispatchControl.credit_checked_at.is_(None)
        | (DispatchControl.credit_checked_at <= due_before),
    )


def end_pause_for(session: Session, reason: PauseReason, *, values: Mapping[str, object]) -> bool:
    """Write ``values`` (the unpaused ones) if dispatch is paused for ``reason``, and
    only then; True if it did."""
    return update_control(
        session, values=dict(values), where=DispatchControl.pause_reason == str(reason)
    )
