"""Where PostgreSQL and SQLite differ, decided in one place.

PostgreSQL is the production database; SQLite is the embedded one, for a single
host. Both hold the same schema, built by the same migrations, and every path
writes the same rows on both (the tests compare them). Code anywhere that needs
to know which database it talks to asks this module instead of comparing dialect
names, and the SQL that differs is built here. The differences:

- **Row locks.** PostgreSQL has them: claimers, sweepers and purgers pass over
  rows another transaction holds with ``FOR UPDATE SKIP LOCKED``
  (``skip_locked``), and a job that must run once at a time takes an advisory
  lock (``try_advisory_lock``). SQLite has no row locks, and needs none: every
  writing transaction begins ``IMMEDIATE`` (``dispatcher.persistence.db``), which
  admits one writer at a time, so the plain query is already exclusive.
- **Upserts.** Both speak ``INSERT ... ON CONFLICT``, but SQLAlchemy builds it
  with each dialect's own ``insert`` (``conflict_insert``, ``insert_or_ignore``,
  ``upsert``).
- **Lists of ids.** On PostgreSQL ``= ANY(array)`` binds a whole list as one
  parameter (``id_in``).
- **One-statement writes.** PostgreSQL runs data-modifying statements inside
  ``WITH``, unpacks a JSON parameter into rows (``json_to_recordset``) and loads
  rows by ``COPY``, so the hot paths (a small job, a claim, an attempt's start, a
  reply, a large job's recipients) are one round trip there; SQLite's ``WITH``
  holds only queries, so there the same rows are written by several statements.
  Those paths ask ``is_postgresql``.
- **Time.** SQLite keeps a datetime as text without a zone: it is stored as
  naive UTC in one fixed form so that text order is time order
  (``types.UTCDateTime``, via ``is_sqlite``), and truncated and subtracted with
  ``strftime`` and ``julianday`` where PostgreSQL has ``date_trunc`` and
  ``extract`` (``Functions``).
- **Schema.** SQLite auto-increments only an ``INTEGER PRIMARY KEY``
  (``id_type``); both take partial indexes, each by its own keyword
  (``partial_index``).
- **Errors.** psycopg names a refusal by its SQLSTATE, sqlite3 by its error name
  (``error_state``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Dialect,
    Engine,
    Integer,
    Select,
    any_,
    bindparam,
    func,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.orm import QueryableAttribute, Session
from sqlalchemy.types import TypeEngine

POSTGRESQL = "postgresql"
SQLITE = "sqlite"

Target = Session | Connection | Engine | Dialect | URL
"""Anything that knows its database: a session, a connection, an engine, a dialect
or a URL."""

_Query = TypeVar("_Query", bound=Select[*tuple[Any, ...]])


def name_of(target: Target) -> str:
    """The dialect's name: ``postgresql`` or ``sqlite``."""
    if isinstance(target, Session):
        return target.get_bind().dialect.name
    if isinstance(target, Dialect):
        return target.name
    if isinstance(target, URL):
        return target.get_backend_name()
    return target.dialect.name


def is_postgresql(target: Target) -> bool:
    """Whether ``target`` talks to PostgreSQL."""
    return name_of(target) == POSTGRESQL


def is_sqlite(target: Target) -> bool:
    """Whether ``target`` talks to SQLite."""
    return name_of(target) == SQLITE


# --- locks -------------------------------------------------------------------------


def skip_locked(target: Target, query: _Query, *, of: Any = None) -> _Query:
    """``query`` with ``FOR UPDATE SKIP LOCKED`` (of the rows of ``of``, if given) on
    PostgreSQL, so concurrent workers pass over rows another is taking; SQLite's
    ``BEGIN IMMEDIATE`` already admits one writer at a time and has no row locks."""
    if is_postgresql(target):
        return query.with_for_update(skip_locked=True, of=of)
    return query


def try_advisory_lock(session: Session, key: int) -> bool:
    """Take the advisory lock ``key`` until the transaction ends, if no one holds it;
    whether it was taken. On SQLite always True: ``BEGIN IMMEDIATE`` already holds
    the one write lock."""
    if not is_postgresql(session):
        return True
    return bool(
        session.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key}).scalar_one()
    )


# --- statements --------------------------------------------------------------------


def conflict_insert(target: Target, table: Any) -> postgresql.Insert | sqlite.Insert:
    """An ``INSERT`` into ``table`` (a model or a table) that takes ``ON CONFLICT``:
    each dialect builds its own."""
    if is_postgresql(target):
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_or_ignore(
    target: Target, table: Any, values: dict[str, Any]
) -> postgresql.Insert | sqlite.Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` of one row."""
    return conflict_insert(target, table).values(values).on_conflict_do_nothing()


def upsert(
    target: Target, table: Any, values: dict[str, Any], *, key: Sequence[str]
) -> postgresql.Insert | sqlite.Insert:
    """``INSERT`` one row, or on a conflict over the unique columns ``key`` update the
    existing row's other columns to ``values``."""
    statement = conflict_insert(target, table).values(**values)
    changed = {k: statement.excluded[k] for k in values if k not in key}
    return statement.on_conflict_do_update(index_elements=list(key), set_=changed)


def id_in(
    target: Target,
    column: QueryableAttribute[int] | ColumnElement[int],
    ids: Collection[int],
) -> ColumnElement[bool]:
    """``column IN ids``; on PostgreSQL as ``= ANY(array)``, one parameter (named
    ``ids``) instead of one per id (a batch has up to 100), which is cheaper to render,
    bind and plan."""
    if is_postgresql(target):
        return column == any_(bindparam("ids", list(ids), type_=postgresql.ARRAY(BigInteger)))
    return column.in_(list(ids))


class Functions:
    """The time functions whose SQL differs: truncation to the minute, milliseconds
    between two times, and the value such an expression reads back as."""

    def __init__(self, name: str) -> None:
        self.name = name
        """The dialect's name (``name_of``)."""

    @classmethod
    def of(cls, target: Target) -> Functions:
        """The functions of ``target``'s database."""
        return cls(name_of(target))

    def minute(self, column: Any) -> ColumnElement[Any]:
        """``column`` truncated to its minute (text on SQLite: see ``as_datetime``)."""
        if self.name == POSTGRESQL:
            return func.date_trunc("minute", column)
        return func.strftime("%Y-%m-%d %H:%M:00", column)

    def ms_between(self, later: Any, earlier: Any) -> ColumnElement[float]:
        """Milliseconds from ``earlier`` to ``later``."""
        if self.name == POSTGRESQL:
            seconds: Any = func.extract("epoch", later - earlier)
            return seconds * 1000.0  # type: ignore[no-any-return]
        return (func.julianday(later) - func.julianday(earlier)) * 86_400_000.0

    @staticmethod
    def as_datetime(value: Any) -> dt.datetime:
        """A UTC datetime from what ``minute`` reads back as (SQLite: naive UTC text)."""
        if isinstance(value, str):
            return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
        assert isinstance(value, dt.datetime)
        return value.astimezone(dt.UTC)


# --- schema ------------------------------------------------------------------------


def id_type() -> TypeEngine[int]:
    """A 64-bit id column's type: ``BIGINT``, but ``INTEGER`` on SQLite, whose only
    auto-incrementing key is an ``INTEGER PRIMARY KEY`` (64-bit there anyway)."""
    return BigInteger().with_variant(Integer(), SQLITE)


def partial_index(where: str) -> dict[str, Any]:
    """The keywords of an ``Index`` covering only the rows where ``where`` holds, on
    both databases (each takes the condition by its own keyword)."""
    condition = text(where)
    return {"postgresql_where": condition, "sqlite_where": condition}


# --- errors ------------------------------------------------------------------------


def error_state(error: BaseException) -> str | None:
    """How the driver names a database error: psycopg's SQLSTATE, sqlite3's error
    name; None for other errors."""
    state = getattr(error, "sqlstate", None) or getattr(error, "sqlite_errorname", None)
    return str(state) if state else None
