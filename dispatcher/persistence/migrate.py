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
