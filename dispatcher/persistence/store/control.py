"""The dispatch control row: the pause and the circuit breaker every claim consults
(docs/design.md, section 2), changed by compare-and-set."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session

from dispatcher.domain.statuses import BreakerState
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
