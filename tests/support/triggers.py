"""Triggers that make the database refuse a write, as a constraint or an operator's
trigger would: a refusal no amount of waiting cures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dispatcher.persistence.db import Database


@contextmanager
def refusing(database: Database, condition: str, table: str = "recipients") -> Iterator[None]:
    """A trigger that refuses every update of a row of ``table`` where ``condition``
    (SQL over NEW) holds: a value the database will not take, as a constraint or an
    operator's trigger would, which no amount of waiting cures."""
    if database.dialect == "postgresql":
        create = [
            "CREATE FUNCTION refuse_recipient() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN IF {condition} THEN RAISE EXCEPTION 'refused by a test trigger' "
            "USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$",
            f"CREATE TRIGGER refuse_recipient BEFORE UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION refuse_recipient()",
        ]
        drop = [
            f"DROP TRIGGER IF EXISTS refuse_recipient ON {table}",
            "DROP FUNCTION IF EXISTS refuse_recipient()",
        ]
    else:
        create = [
            f"CREATE TRIGGER refuse_recipient BEFORE UPDATE ON {table} WHEN {condition} "
            "BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
        ]
        drop = ["DROP TRIGGER IF EXISTS refuse_recipient"]
    with database.engine.begin() as connection:
        for statement in create:
            connection.exec_driver_sql(statement)
    try:
        yield
    finally:
        with database.engine.begin() as connection:
            for statement in drop:
                connection.exec_driver_sql(statement)
