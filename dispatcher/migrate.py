"""Run the Alembic migrations shipped in ``dispatcher.migrations``."""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from dispatcher.db import Database


def alembic_config(database: Database) -> Config:
    """An Alembic Config pointing at the packaged migrations and this database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(files("dispatcher.migrations")))
    # Alembic's config is an INI parser; a literal % in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", database.url.replace("%", "%%"))
    return cfg


def upgrade(database: Database, revision: str = "head") -> None:
    """Bring the schema up to ``revision``."""
    cfg = alembic_config(database)
    with database.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def downgrade(database: Database, revision: str) -> None:
    """Take the schema down to ``revision``."""
    cfg = alembic_config(database)
    with database.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, revision)


def current_revision(database: Database) -> str | None:
    """The revision the database is at, or None before the first migration."""
    with database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(database: Database) -> str | None:
    """The newest revision shipped with this version."""
    return ScriptDirectory.from_config(alembic_config(database)).get_current_head()
