"""Recording a reply the database refused to write whole: recipient by recipient.

A reply is normally written by one statement (``store.record_reply``), with its
values already fitted to their columns (``dispatcher.persistence.columns``). If the database
still refuses it for a reason waiting cannot cure (a value a constraint or trigger
rejects, a column narrower than the models say, a character it cannot encode),
refusing the whole reply would leave the batch ``submitting`` until the sweeper
guessed WORKER_LOST for every recipient, losing the accepted IDs that did arrive.
This path writes instead what can be written, each step in a savepoint of one
transaction:

1. the attempt row, with the raw reply whole; if that is refused, with the raw
   reply escaped to ASCII (still all of it, readable);
2. each recipient's outcome as the reply gave it; if that is refused, the same
   status with no gateway ID and the code ``REPLY_NOT_RECORDED``, so it is
   plainly marked (the caller logs the ID at ERROR, and the raw reply holds it);
3. the batch settled, unless something could not be written at all: then the
   batch stays ``submitting`` and the sweeper closes what is left, as for a
   worker lost mid-call.

A lost connection is never treated as a refusal: it is raised for the caller to
wait and retry the whole reply.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from dispatcher.persistence import columns, store
from dispatcher.persistence.dialect import error_state

log = logging.getLogger(__name__)

REPLY_NOT_RECORDED = "REPLY_NOT_RECORDED"
"""The code of a recipient whose outcome the database refused as the reply gave it."""


def database_away(exc: DBAPIError) -> bool:
    """True for errors that waiting can cure (connection lost, server restarting),
    False for those it cannot (a value the database refuses)."""
    return isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated


def refusal(exc: Exception) -> str:
    """A refusal named by class and SQL state only: the database's message may quote
    the refused value, which may be a message text or carry a secret."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    state = error_state(cause)
    return f"{type(cause).__name__} ({state})" if state else type(cause).__name__


@dataclass(frozen=True, slots=True)
class ReplyWrite:
    """One reply's writes, values fitted: what either path records."""

    attempt_id: int
    batch_id: int
    attempt: dict[str, Any]
    """The attempt row's result columns."""
    groups: Mapping[store.OutcomeGroup, Sequence[int]]
    at: dt.datetime
    actor: str
    reset_breaker_failures: bool

    @property
    def given(self) -> int:
        """How many recipients the reply covers."""
        return sum(len(ids) for ids in self.groups.values())


@dataclass(frozen=True, slots=True)
class Refusal:
    """A recipient whose outcome the database refused as the reply gave it."""

    recipient_id: int
    said: store.OutcomeGroup
    """What the reply said for it, the exact gateway ID included."""
    reason: str
    recorded: bool
    """Recorded with REPLY_NOT_RECORDED instead; False: left for the sweeper."""


@dataclass(slots=True)
class Salvage:
    """What the careful path wrote."""

    moved: int = 0
    attempt_problem: str | None = None
    """How the attempt row fell short: its raw reply escaped, or not written at all."""
    attempt_written: bool = True
    refusals: list[Refusal] = field(default_factory=list)

    @property
    def settled(self) -> bool:
        """The batch was settled: everything was written, one way or another."""
        return self.attempt_written and all(r.recorded for r in self.refusals)

    def log(self, *, attempt_id: int, job_id: str, numbers: Mapping[int, str]) -> None:
        """ERROR lines for what could not be written as the reply said: the recipients
        (``numbers``: by id) with the gateway's IDs and codes, escaped by ``%r``; the
        refusals by class and SQL state only (``refusal``)."""
        for recorded in (True, False):
            refused = [r for r in self.refusals if r.recorded is recorded]
            if not refused:
                continue
            log.error(
                "attempt %s (job %s): the database refused the outcome of %d recipients "
                "(%s); %s. What the gateway said, kept whole in the attempt's raw reply: %s",
                attempt_id,
                job_id,
                len(refused),
                ", ".join(sorted({r.reason for r in refused})),
                f"recorded with {REPLY_NOT_RECORDED} and no gateway ID"
                if recorded
                else "not written at all; left `submitting` for the sweeper",
                ", ".join(
                    f"{numbers.get(r.recipient_id, r.recipient_id)}={r.said.status}:"
                    f"{r.said.message_id or r.said.error_code!r}"
                    for r in refused
                ),
            )
        if self.attempt_problem:
            log.error("attempt %s: %s", attempt_id, self.attempt_problem)


def _in_savepoint(session: Session, write: Callable[[], int]) -> int | str:
    """``write()`` in a savepoint: its result, or what the database refused it for."""
    try:
        with session.begin_nested():
            return write()
    except DBAPIError as exc:
        if database_away(exc):
            raise
        return refusal(exc)
    except UnicodeEncodeError as exc:
        # The driver could not encode a value (a lone surrogate): refused before
        # it reached the database, and as final as a refusal by it.
        return refusal(exc)


def _escaped(text: str) -> str:
    """``text`` in ASCII with backslash escapes: every character kept, readably."""
    return text.replace("\x00", "\\x00").encode("ascii", "backslashreplace").decode("ascii")


def _complete_attempt(session: Session, write: ReplyWrite, result: Salvage) -> None:
    def complete(values: dict[str, Any]) -> Callable[[], int]:
        def run() -> int:
            store.complete_attempt(session, attempt_id=write.attempt_id, values=values)
            return 1

        return run

    whole = _in_savepoint(session, complete(write.attempt))
    if not isinstance(whole, str):
        return
    raw, error = write.attempt.get("raw_reply"), write.attempt.get("error")
    note = f"the raw reply was refused as received ({whole}) and is stored escaped"
    escaped = columns.fit_attempt(
        write.attempt
        | {
            "raw_reply": _escaped(raw) if raw is not None else None,
            "error": f"{error}; {note}" if error else note,
        }
    )
    again = _in_savepoint(session, complete(escaped))
    if not isinstance(again, str):
        result.attempt_problem = f"raw reply stored escaped ({whole})"
        return
    result.attempt_written = False
    result.attempt_problem = f"attempt row refused ({whole}; escaped: {again})"


def _fallback(said: store.OutcomeGroup, reason: str) -> store.OutcomeGroup:
    return said._replace(
        message_id=None,
        error_code=REPLY_NOT_RECORDED,
        cause=columns.fit_cause(
            f"{said.status} as the gateway answered, but the database refused this "
            f"outcome's values ({reason}); the answer is kept whole in the attempt's raw reply"
        ),
    )


def record_reply(session: Session, write: ReplyWrite) -> Salvage:
    """Write a reply step by step, each in a savepoint, as the module says.

    Raises only when the database is away, or when a step outside the savepoints
    (the breaker's count, settling the batch) is refused.
    """
    result = Salvage()
    if write.reset_breaker_failures:
        store.reset_failures(session)
    _complete_attempt(session, write, result)
    for said, ids in write.groups.items():
        for recipient_id in ids:

            def record(group: store.OutcomeGroup, rid: int = recipient_id) -> Callable[[], int]:
                return lambda: store.record_outcome(
                    session,
                    ids=[rid],
                    group=group,
                    attempt_id=write.attempt_id,
                    at=write.at,
                    actor=write.actor,
                )

            moved = _in_savepoint(session, record(said))
            if isinstance(moved, str):
                reason = moved
                moved = _in_savepoint(session, record(_fallback(said, reason)))
                recorded = not isinstance(moved, str)
                result.refusals.append(Refusal(recipient_id, said, reason, recorded))
            result.moved += moved if isinstance(moved, int) else 0
    if result.settled:
        store.settle_batch(
            session, batch_id=write.batch_id, now=write.at, after_attempt=write.attempt_id
        )
    return result
