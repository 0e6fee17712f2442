"""Whole references without foreign keys (migration 0011, docs/design.md "Integrity
without foreign keys"): every batch, recipient and attempt names a job and batch that
exist, as written by each enqueue path (one statement, COPY, SQLite) and each claim.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from dispatcher.domain.times import utcnow
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.service.dispatcher import Dispatcher
from support.integrity import dangling_references
from support.numbers import number

pytestmark = pytest.mark.usefixtures("clean_env")


def test_every_write_path_leaves_references_whole(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    service.enqueue(number(1), "one recipient")
    service.enqueue([number(i) for i in range(2, 252)], "three batches")
    service.enqueue([number(300), "not a number"], "one refused")
    report = service.dispatch_due()
    assert report.batches == 5
    with service.db.transaction() as session:
        assert dangling_references(session) == {}


def test_the_check_finds_what_a_foreign_key_would_have_refused(database: Database) -> None:
    # The database no longer refuses these rows (the keys are gone on both dialects),
    # so the invariants' check is what stands in for the keys: it must see each one.
    now = utcnow()
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO recipients (job_id, batch_id, number, status, attempts,"
                " created_at, updated_at) VALUES ('NO-SUCH-JOB', 424242, '447700900001',"
                " 'queued', 0, :at, :at)"
            ),
            {"at": now},
        )
        connection.execute(
            text(
                "INSERT INTO attempts (batch_id, job_id, attempt_no, numbers, started_at,"
                " outcome) VALUES (424242, 'NO-SUCH-JOB', 1, '447700900001', :at,"
                " 'in_flight')"
            ),
            {"at": now},
        )
    with database.transaction() as session:
        assert dangling_references(session) == {
            "recipients.job_id": 1,
            "recipients.batch_id": 1,
            "attempts.batch_id": 1,
        }
