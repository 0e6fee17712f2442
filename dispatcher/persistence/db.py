"""Engines and transactions, tuned per database.

PostgreSQL goes through psycopg 3. SQLite, the embedded default, is made safe for
several processes: WAL so readers never block the writer, a busy timeout so a
writer waits for the lock instead of failing, and ``BEGIN IMMEDIATE`` so a
transaction that will write takes the write lock up front (a deferred one can
fail half-way with "database is locked" when it tries to upgrade).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DisconnectionError,
)
from sqlalchemy.exc import DBAPIError as DBAPIError
from sqlalchemy.exc import IntegrityError as IntegrityError
from sqlalchemy.exc import InterfaceError as InterfaceError
from sqlalchemy.exc import OperationalError as OperationalError
from sqlalchemy.exc import SQLAlchemyError as SQLAlchemyError
from sqlalchemy.orm import Session as Session
from sqlalchemy.orm import sessionmaker

# Session and the database's refusals are re-exported above so that the services
# can type their transactions and tell a refusal from an outage while only this
# layer imports SQLAlchemy (docs/design.md, "Layers").
from dispatcher.domain import redaction
from dispatcher.persistence.dialect import is_postgresql, is_sqlite, name_of

SQLITE_BUSY_TIMEOUT_MS = 30_000


def check_database_url(url: str) -> bool:
    """Whether ``url`` parses as a database URL (never echoed: it may hold a password)."""
    try:
        make_url(url)
    except (ArgumentError, ValueError):
        return False
    return True


def normalise_url(url: str) -> str:
    """Route plain PostgreSQL URLs to psycopg 3, the driver this project installs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _sqlite_setup(engine: Engine, *, foreign_keys: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so the "begin" hook below decides.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    echo: bool = False,
    sqlite_foreign_keys: bool = True,
    autocommit: bool = False,
) -> Engine:
    """An engine for ``url`` with this project's settings for its database.

    ``sqlite_foreign_keys=False`` is for migrations only: SQLite alters a table by
    copying it and dropping the original, and with foreign keys enforced that drop
    would cascade into every row that references it. The pragma cannot change
    inside a transaction, so it is set as each connection opens.
    """
    url = normalise_url(url)
    parsed = make_url(url)
    if is_sqlite(parsed):
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            echo=echo,
            hide_parameters=True,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )
        _sqlite_setup(engine, foreign_keys=sqlite_foreign_keys)
        return engine
    engine = create_engine(
        url,
        echo=echo,
        # A failed statement's parameters are message text and numbers: keep them out
        # of exception messages and so out of every log and traceback.
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        # Set once per connection: switching a pooled connection in and out of
        # autocommit costs SQLAlchemy round trips of its own.
        **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
    )
    _ping_idle_connections(engine)
    return engine


PING_AFTER_IDLE_S = 1.0
"""A pooled connection unused for longer than this is pinged before it is handed out."""


def _ping_idle_connections(engine: Engine) -> None:
    """``pool_pre_ping``, but only for connections that sat idle in the pool.

    A connection broken by a database restart is replaced instead of failing the
    next transaction: that is what a producer or an API process, whose connections
    wait idle between requests, needs. A busy worker hands a connection out twice
    per batch; pinging every checkout cost a round trip each, about a fifth of a
    dispatch thread's time under load (py-spy). A connection used within the last
    second is not pinged: if the database restarted meanwhile, the first statement
    fails as a disconnect, SQLAlchemy then discards every connection of the pool
    opened before it, and the callers already handle a database that went away
    (``record`` retries; a failed claim leaves the batch queued for the sweeper).
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in_at = record.info.get("checked_in_at")
        if checked_in_at is None or time.monotonic() - checked_in_at < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool discards this connection and checks out another.
            raise DisconnectionError("pooled connection lost while idle") from exc


class Database:
    """One engine and its session factory, safe to share between threads."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = normalise_url(url)
        self.pool_size = pool_size
        self.engine = make_engine(self.url, pool_size=pool_size)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._autocommit: Engine | None = None

    def __repr__(self) -> str:
        return f"Database({self.display_url!r})"

    @property
    def display_url(self) -> str:
        """The URL with its password masked, for output and logs."""
        return redaction.redact(self.url)

    @property
    def dialect(self) -> str:
        """``postgresql`` or ``sqlite``."""
        return name_of(self.engine)

    def after_fork(self) -> None:
        """Drop connections inherited from a parent process without closing them for it."""
        with self._lock:
            if os.getpid() != self._pid:
                self.engine.dispose(close=False)
                if self._autocommit is not None:
                    self._autocommit.dispose(close=False)
                self._pid = os.getpid()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed on success and rolled back on error."""
        self.after_fork()
        with self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def one_statement(self) -> Iterator[Session]:
        """A session for a write that is one statement: on PostgreSQL the statement is
        its own transaction (autocommit), one round trip instead of three (BEGIN, the
        statement, COMMIT); on SQLite, ``transaction``. More than one statement in it
        would commit each by itself: use ``transaction`` for those."""
        if not is_postgresql(self.engine):
            with self.transaction() as session:
                yield session
            return
        self.after_fork()
        with Session(bind=self.autocommit_engine()) as session:
            yield session

    def engines(self) -> list[Engine]:
        """Every engine this database's statements go through (to watch them all)."""
        if not is_postgresql(self.engine):
            return [self.engine]
        return [self.engine, self.autocommit_engine()]

    def autocommit_engine(self) -> Engine:
        """A pool of autocommit connections as large as the main one, made on first use
        (by producers of small jobs: an API process sends as many at once as it
        serves requests; workers never ask)."""
        with self._lock:
            if self._autocommit is None:
                self._autocommit = make_engine(self.url, pool_size=self.pool_size, autocommit=True)
            return self._autocommit

    def ping(self) -> None:
        """One round trip on a pooled connection; raises what the driver raises if none."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        if self._autocommit is not None:
            self._autocommit.dispose()
