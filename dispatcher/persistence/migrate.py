"""Run the Alembic migrations shipped in ``dispatcher.persistence.migrations``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.errors import SchemaNotCurrentError
from dispatcher.persistence.db import Database, make_engine
from dispatcher.persistence.dialect import is_sqlite


def alembic_config(database: Database) -> Config:
    """An Alembic Config pointing at the packaged migrations and this database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(files("dispatcher.persistence.migrations")))
    # Alembic's config is an INI parser; a literal % in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", database.url.replace("%", "%%"))
    return cfg


@contextmanager
def _migration_connection(database: Database) -> Iterator[Connection]:
    """A connection for DDL: on SQLite one that does not enforce foreign keys
    (see ``make_engine``), checked for dangling references before it commits."""
    if not is_sqlite(database.engine):
        with database.engine.begin() as connection:
            yield connection
        return
    engine = make_engine(database.url, sqlite_foreign_keys=False)
    try:
        with engine.begin() as connection:
            yield connection
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"migration left dangling references: {broken[:5]}")
    finally:
        engine.dispose()


def upgrade(database: Database, revision: str = "head") -> None:
    """Bring the schema up to ``revision``."""
    cfg = alembic_config(database)
    with _migration_connection(database) as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def downgrade(database: Database, revision: str) -> None:
    """Take the schema down to ``revision``."""
    cfg = alembic_config(database)
    with _migration_connection(database) as connection:
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, revision)


def current_revision(database: Database) -> str | None:
    """The revision the database is at, or None before the first migration."""
    with database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(database: Database) -> str | None:
    """The newest revision shipped with this version."""
    return ScriptDirectory.from_config(alembic_config(database)).get_current_head()


def ensure_current(database: Database, *, upgrade_sqlite: bool = False) -> None:
    """Return once ``database`` holds this version's schema, or raise
    ``SchemaNotCurrentError`` naming the database it looked at and the command to run.

    ``upgrade_sqlite``: a SQLite database (the embedded default) behind this version is
    brought up to date here instead, as a single-host setup has no separate migration
    step; a server database is migrated only by ``dispatcher migrate``, which its
    operator runs once for all its workers (docs/design.md section 4).
    """
    current, head = current_revision(database), head_revision(database)
    if current == head:
        return
    if upgrade_sqlite and is_sqlite(database.engine) and _behind(database, current):
        # Producers started together each get here: the migration runs in one BEGIN
        # IMMEDIATE transaction (``make_engine``), so the others wait for the first
        # and Alembic, reading the revision inside theirs, finds nothing to do.
        upgrade(database)
        return
    state = "no dispatcher schema" if current is None else f"schema {current}"
    raise SchemaNotCurrentError(
        f"the database at {database.display_url} has {state}; this version needs {head}: "
        "run `dispatcher migrate` with the same DISPATCHER_DATABASE_URL "
        "(or DISPATCHER_DATA_DIR) first"
    )


def _behind(database: Database, current: str | None) -> bool:
    """Whether ``current`` is an older revision of ours (or none), not a newer one
    written by a later version, which an older version must not touch."""
    if current is None:
        return True
    script = ScriptDirectory.from_config(alembic_config(database))
    return any(rev.revision == current for rev in script.walk_revisions())


def missing_table(exc: SQLAlchemyError) -> bool:
    """Whether ``exc`` is the database saying a table does not exist: a schema never
    migrated, or the database a process was started against replaced under it."""
    orig = getattr(exc, "orig", None)
    if type(orig).__name__ == "UndefinedTable":  # psycopg's class for SQLSTATE 42P01
        return True
    return "no such table" in str(orig or exc).splitlines()[0]
