"""The Alembic migrations build the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text

from dispatcher.domain.statuses import AttemptOutcome, BatchStatus, RecipientStatus
from dispatcher.domain.times import utcnow
from dispatcher.persistence import migrate, store
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Base, Batch, Recipient, StatusEvent
from support.services import scratch_pg_database

TABLES = {"jobs", "batches", "recipients", "attempts", "status_events"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database with nothing in it: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "postgresql":
        request.getfixturevalue("services")
        with scratch_pg_database("dispatcher_migrations") as url:
            database = Database(url, pool_size=2)
            try:
                yield database
            finally:
                database.dispose()
        return
    database = Database(f"sqlite:///{tmp_path / 'migrations.sqlite3'}")
    try:
        yield database
    finally:
        database.dispose()


def schema_diff(database: Database) -> list[Any]:
    """What autogenerate would change to make the database match the models."""
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def tables(database: Database) -> set[str]:
    return set(inspect(database.engine).get_table_names()) - {"alembic_version"}


def test_migrations_build_the_schema_of_the_models(empty_database: Database) -> None:
    assert migrate.current_revision(empty_database) is None
    # The comparison sees a difference where there is one.
    missing = {op[1].name for op in schema_diff(empty_database) if op[0] == "add_table"}
    assert missing >= TABLES

    migrate.upgrade(empty_database)

    assert migrate.current_revision(empty_database) == migrate.head_revision(empty_database)
    assert tables(empty_database) >= TABLES
    assert schema_diff(empty_database) == []


def test_upgrade_downgrade_upgrade(empty_database: Database) -> None:
    migrate.upgrade(empty_database)
    migrate.downgrade(empty_database, "base")

    assert migrate.current_revision(empty_database) is None
    assert tables(empty_database) == set()

    migrate.upgrade(empty_database)

    assert migrate.current_revision(empty_database) == migrate.head_revision(empty_database)
    assert schema_diff(empty_database) == []


def test_upgrade_twice_is_a_no_op(empty_database: Database) -> None:
    migrate.upgrade(empty_database)
    migrate.upgrade(empty_database)
    assert migrate.current_revision(empty_database) == migrate.head_revision(empty_database)
    assert schema_diff(empty_database) == []


def _revisions(database: Database) -> list[str]:
    script = ScriptDirectory.from_config(migrate.alembic_config(database))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def test_every_upgrade_keeps_the_data_already_written(empty_database: Database) -> None:
    # SQLite alters a table by copying and dropping it: with foreign keys enforced,
    # the drop cascades and deletes every recipient of every job.
    first, *later = _revisions(empty_database)
    assert later, "needs at least two revisions to mean anything"
    migrate.upgrade(empty_database, first)
    with empty_database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (id, created_at, text, kind, maxconcat, parts, encoding,"
                " recipient_count, refused_count) VALUES ('J1', :at, 'kept', 'text', 1, 1,"
                " 'GSM-7', 2, 0)"
            ),
            {"at": utcnow()},
        )
        for index in range(2):
            connection.execute(
                text(
                    "INSERT INTO recipients (job_id, number, status, attempts, created_at,"
                    " updated_at) VALUES ('J1', :n, 'sent', 1, :at, :at)"
                ),
                {"n": f"44770090000{index}", "at": utcnow()},
            )
            connection.execute(
                text(
                    "INSERT INTO status_events (recipient_id, job_id, at, to_status, cause,"
                    " actor) SELECT id, 'J1', :at, 'sent', 'test', 'test' FROM recipients"
                    " WHERE number = :n"
                ),
                {"n": f"44770090000{index}", "at": utcnow()},
            )

    for revision in later:
        migrate.upgrade(empty_database, revision)
        with empty_database.engine.connect() as connection:
            counts = {
                table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()  # noqa: S608
                for table in ("jobs", "recipients", "status_events")
            }
        assert counts == {"jobs": 1, "recipients": 2, "status_events": 2}, revision


def test_0008_gives_existing_jobs_their_owner_key_and_keeps_long_ids(
    empty_database: Database,
) -> None:
    migrate.upgrade(empty_database, "0007")
    with empty_database.engine.begin() as connection:
        for key_id, name in ((1, "shop"), (2, "bank")):
            connection.execute(
                text(
                    "INSERT INTO api_keys (id, name, token_hash, scopes, created_at, created_by)"
                    " VALUES (:id, :name, :hash, 'send,read', :at, 'test')"
                ),
                {"id": key_id, "name": name, "hash": f"{key_id:064d}", "at": utcnow()},
            )
        for job_id, created_by in (
            ("JA", "api:shop"),
            ("JD", "dropin:bank"),
            ("JP", "python"),
            # A name that merely starts like a key's must not match it.
            ("JX", "api:shop2"),
        ):
            connection.execute(
                text(
                    "INSERT INTO jobs (id, created_at, text, kind, maxconcat, parts, encoding,"
                    " recipient_count, refused_count, created_by) VALUES (:id, :at, 't', 'text',"
                    " 1, 1, 'GSM-7', 1, 0, :by)"
                ),
                {"id": job_id, "at": utcnow(), "by": created_by},
            )

    migrate.upgrade(empty_database, "0008")

    with empty_database.engine.begin() as connection:
        rows = connection.execute(text("SELECT id, owner_key_id FROM jobs")).all()
        owners: dict[str, int | None] = {row.id: row.owner_key_id for row in rows}
        long_id = "9" * 5000
        connection.execute(
            text(
                "INSERT INTO recipients (job_id, number, status, attempts, created_at,"
                " updated_at, gateway_message_id) VALUES ('JA', '447700900001', 'sent', 1,"
                " :at, :at, :gid)"
            ),
            {"at": utcnow(), "gid": long_id},
        )
        stored = connection.execute(
            text("SELECT gateway_message_id FROM recipients WHERE gateway_message_id = :gid"),
            {"gid": long_id},
        ).scalar_one()
    assert owners == {"JA": 1, "JD": 2, "JP": None, "JX": None}
    assert stored == long_id


def _in_flight_at_0008(database: Database, *, stored: str) -> None:
    """A job whose one batch is in flight, its recipient stored as ``stored``, with its
    attempt in flight: what a claim wrote before 0009 (``submitting``) or after."""
    at = utcnow()
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (id, created_at, text, kind, maxconcat, parts, encoding,"
                " recipient_count, refused_count, created_by) VALUES ('J1', :at, 't', 'text',"
                " 1, 1, 'GSM-7', 1, 0, 'python')"
            ),
            {"at": at},
        )
        connection.execute(
            text(
                "INSERT INTO batches (id, job_id, status, due_at, attempts, claimed_at,"
                " created_at, updated_at, lane) VALUES (1, 'J1', 'submitting', :at, 1, :at,"
                " :at, :at, 1)"
            ),
            {"at": at},
        )
        connection.execute(
            text(
                "INSERT INTO recipients (id, job_id, batch_id, number, status, attempts,"
                " created_at, updated_at) VALUES (1, 'J1', 1, '447700900001', :status, 0,"
                " :at, :at)"
            ),
            {"at": at, "status": stored},
        )
        connection.execute(
            text(
                "INSERT INTO attempts (id, batch_id, job_id, attempt_no, numbers, started_at,"
                " outcome, worker) VALUES (1, 1, 'J1', 1, '447700900001', :at, 'in_flight',"
                " 'old-worker')"
            ),
            {"at": at},
        )


def test_0009_a_recipient_in_flight_across_the_upgrade_is_shown_and_recorded(
    empty_database: Database,
) -> None:
    migrate.upgrade(empty_database, "0008")
    _in_flight_at_0008(empty_database, stored="submitting")

    migrate.upgrade(empty_database, "head")

    with empty_database.transaction() as session:
        [recipient] = session.execute(select(Recipient)).scalars()
        assert recipient.status == RecipientStatus.SUBMITTING
        moved = store.record_reply(
            session,
            attempt_id=1,
            batch_id=1,
            attempt={"finished_at": utcnow(), "outcome": AttemptOutcome.ACCEPTED},
            groups={
                store.OutcomeGroup(
                    RecipientStatus.SENT, "ID1", None, "accepted", spent=True, next_attempt_at=None
                ): [1]
            },
            at=utcnow(),
            actor="new-worker",
            reset_breaker_failures=False,
        )
    assert moved == 1
    with empty_database.transaction() as session:
        [recipient] = session.execute(select(Recipient)).scalars()
        [event] = session.execute(select(StatusEvent)).scalars()
        status = session.execute(select(Batch.status)).scalar_one()
    assert (recipient.status, recipient.gateway_message_id, recipient.attempts) == (
        RecipientStatus.SENT,
        "ID1",
        1,
    )
    assert (event.from_status, event.to_status) == ("submitting", "sent")
    assert status == BatchStatus.DONE


def test_0009_downgrade_writes_the_status_older_code_reads_in_flight(
    empty_database: Database,
) -> None:
    migrate.upgrade(empty_database, "0008")
    _in_flight_at_0008(empty_database, stored="queued")
    migrate.upgrade(empty_database, "head")

    migrate.downgrade(empty_database, "0008")

    with empty_database.engine.begin() as connection:
        status = connection.execute(text("SELECT status FROM recipients")).scalar_one()
    assert status == "submitting"


def test_0010_downgrade_writes_the_first_events_older_code_reads(
    empty_database: Database,
) -> None:
    migrate.upgrade(empty_database, "head")
    at = utcnow()
    with empty_database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (id, created_at, text, kind, maxconcat, parts, encoding,"
                " recipient_count, refused_count, created_by, creation_implied) VALUES"
                " ('J1', :at, 't', 'text', 1, 1, 'GSM-7', 1, 1, 'api:shop', :implied)"
            ),
            {"at": at, "implied": True},
        )
        connection.execute(
            text(
                "INSERT INTO batches (id, job_id, status, due_at, attempts, created_at,"
                " updated_at, lane) VALUES (1, 'J1', 'queued', :at, 0, :at, :at, 1)"
            ),
            {"at": at},
        )
        for rid, batch_id, status in ((1, 1, "queued"), (2, None, "failed")):
            connection.execute(
                text(
                    "INSERT INTO recipients (id, job_id, batch_id, number, status, attempts,"
                    " created_at, updated_at) VALUES (:id, 'J1', :batch, '447700900001',"
                    " :status, 0, :at, :at)"
                ),
                {"id": rid, "batch": batch_id, "status": status, "at": at},
            )

    migrate.downgrade(empty_database, "0009")

    with empty_database.engine.begin() as connection:
        rows = connection.execute(
            text("SELECT recipient_id, from_status, to_status, cause, actor FROM status_events")
        ).all()
    # The accepted recipient's implied event, written; the refused one's was a row.
    assert [tuple(row) for row in rows] == [(1, None, "queued", "enqueued", "api:shop")]
