"""Where the real PostgreSQL and Redis of this machine are, and scratch databases on them.

The addresses come from DISPATCHER_TEST_* (defaults: loopback, the standard
ports); the fixtures that check the services answer are ``fixtures/services.py``'s.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from dispatcher.persistence.db import Database

PG_HOST = os.environ.get("DISPATCHER_TEST_PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DISPATCHER_TEST_PGPORT", "5432"))
PG_USER = os.environ.get("DISPATCHER_TEST_PGUSER", "postgres")
REDIS_HOST = os.environ.get("DISPATCHER_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("DISPATCHER_TEST_REDIS_PORT", "6379"))


def pg_admin() -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection to the server's ``postgres`` database."""
    return psycopg.connect(
        host=PG_HOST,
        port=PG_PORT,
        user=PG_USER,
        dbname="postgres",
        autocommit=True,
        connect_timeout=5,
    )


def pg_url(name: str) -> str:
    """The SQLAlchemy URL of database ``name`` on the test server."""
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


@contextmanager
def scratch_pg_database(prefix: str = "dispatcher_test") -> Iterator[str]:
    """A new, empty PostgreSQL database for as long as the block runs; yields its URL."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with pg_admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield pg_url(name)
    finally:
        with pg_admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def truncate_all(db: Database) -> None:
    """Empty every table but Alembic's, on PostgreSQL, resetting the id sequences."""
    with db.engine.begin() as conn:
        # A lock left behind by a stuck connection fails the test instead of hanging it.
        conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
        names = (
            conn.exec_driver_sql(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                "AND tablename <> 'alembic_version'"
            )
            .scalars()
            .all()
        )
        if names:
            quoted = ", ".join(f'"{name}"' for name in names)
            conn.exec_driver_sql(f"TRUNCATE TABLE {quoted} RESTART IDENTITY CASCADE")
