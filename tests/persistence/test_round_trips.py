"""A one-recipient job costs its producer one PostgreSQL round trip (issue 15, item 3),
and a claim writes its in-flight attempt row in its own statement (item 2).

Counted from libpq's own trace of the protocol: every message the client sends is
logged, and each round trip ends with a ``Sync`` (extended protocol) or is one
``Query`` (simple protocol: BEGIN, COMMIT).
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, update

from dispatcher.domain.message import Kind
from dispatcher.domain.times import utcnow
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Batch
from support.numbers import number
from support.reads import attempts_of, batches_of, recipients_of
from support.settings import make_service

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("clean_env")]


@contextmanager
def traced(engines: list[Engine]) -> Iterator[list[str]]:
    """The messages the client sends on connections checked out meanwhile."""
    sent: list[str] = []
    with tempfile.TemporaryFile("w+") as log:

        def on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
            dbapi_connection.pgconn.trace(log.fileno())

        def on_checkin(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.pgconn.untrace()

        for engine in engines:
            event.listen(engine, "checkout", on_checkout)
            event.listen(engine, "checkin", on_checkin)
        try:
            yield sent
        finally:
            for engine in engines:
                event.remove(engine, "checkout", on_checkout)
                event.remove(engine, "checkin", on_checkin)
            log.seek(0)
            sent.extend(
                line.split("\t")[3].strip() for line in log if line.split("\t")[1:2] == ["F"]
            )


def round_trips(sent: list[str]) -> int:
    return sum(1 for message in sent if message in ("Sync", "Query"))


def test_a_one_recipient_send_is_one_round_trip(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    service = make_service(pg_db, simulator, tmp_path)
    try:
        service.enqueue(number(1), "warm the pools")
        engines = pg_db.engines()
        with traced(engines) as sent:
            result = service.enqueue(number(2), "Your code is 123456")
        # Committed by that one statement: another connection sees it whole.
        observer = Database(pg_db.url)
        try:
            [recipient] = recipients_of(observer, result.job_id)
        finally:
            observer.dispose()
    finally:
        service.close()
    assert recipient.number == number(2)
    assert round_trips(sent) == 1, sent


def test_a_large_job_is_still_one_transaction(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    service = make_service(pg_db, simulator, tmp_path)
    try:
        with traced(pg_db.engines()) as sent:
            service.enqueue([number(i) for i in range(1, 201)], "Bulk")
    finally:
        service.close()
    assert sent.count("Query") >= 2  # BEGIN and COMMIT around its several statements
    assert round_trips(sent) > 2


def test_a_claim_writes_its_attempt_row_in_its_own_statement(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    service = make_service(pg_db, simulator, tmp_path)
    try:
        # The first claim finds no dispatch control row yet and takes the careful path.
        service.enqueue(number(9), "warm up")
        assert service.claim(worker="w") is not None
        job_id = service.enqueue(
            [number(1), number(2)], "Your code is 123456", sender="Acme", reference="ref-1"
        ).job_id
        with traced(pg_db.engines()) as sent:
            claim = service.claim(worker="w")
        assert claim is not None
        [attempt] = attempts_of(pg_db, job_id)
        waiting = recipients_of(pg_db, job_id)
    finally:
        service.close()
    # BEGIN, the claim with its attempt row, COMMIT: the separate INSERT is gone.
    assert round_trips(sent) == 3, "\n".join(sent)
    assert attempt.id == claim.attempt_id
    assert (attempt.attempt_no, attempt.worker, attempt.outcome) == (1, "w", "in_flight")
    assert attempt.numbers == f"{number(1)},{number(2)}"
    # What attempts.start_attempt writes on the other path, read as JSON.
    assert json.loads(attempt.claimed or "") == [[r.id, "queued"] for r in waiting]
    assert json.loads(attempt.request or "") == {
        "to": f"{number(1)},{number(2)}",
        "from": "Acme",
        "maxconcat": claim.message.maxconcat,
        "type": Kind.TEXT.gateway_type,
        "usercontext": "ref-1",
    }


def test_an_expired_batch_is_claimed_without_an_attempt_row(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    service = make_service(pg_db, simulator, tmp_path)
    try:
        expired = service.enqueue(number(1), "too late", valid_for_s=60).job_id
        with pg_db.transaction() as session:
            session.execute(
                update(Batch)
                .where(Batch.job_id == expired)
                .values(expires_at=utcnow() - dt.timedelta(seconds=1))
            )
        assert service.claim(worker="w") is None
        [recipient] = recipients_of(pg_db, expired)
        assert recipient.status == "expired"
        assert attempts_of(pg_db, expired) == []
    finally:
        service.close()


def test_one_statement_claims_several_batches_high_lane_first(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    service = make_service(pg_db, simulator, tmp_path)
    try:
        service.control()  # the control row: the claim takes PostgreSQL's one statement
        normal = [service.enqueue(number(i), f"normal {i}").job_id for i in range(1, 4)]
        high = [
            service.enqueue(number(10 + i), f"high {i}", priority="high").job_id for i in range(2)
        ]
        with traced(pg_db.engines()) as sent:
            claims = service.claim_many(worker="w", limit=4)
        attempts = {a.job_id: a for a in attempts_of(pg_db)}
        left = [b for b in batches_of(pg_db) if b.status == "queued"]
    finally:
        service.close()
    assert round_trips(sent) == 3, "\n".join(sent)
    # Both high jobs, then the two oldest normal ones; the newest normal one waits.
    assert {c.job_id for c in claims} == {*high, *normal[:2]}
    assert [b.job_id for b in left] == [normal[2]]
    for claim in claims:
        attempt = attempts[claim.job_id]
        assert attempt.id == claim.attempt_id
        assert attempt.numbers == claim.recipients[0].number
        assert json.loads(attempt.claimed or "") == [[claim.recipients[0].id, "queued"]]


def test_a_claim_of_several_closes_an_expired_batch_and_starts_the_rest(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    service = make_service(pg_db, simulator, tmp_path)
    try:
        service.control()
        jobs = [service.enqueue(number(i), f"job {i}", valid_for_s=60).job_id for i in range(3)]
        with pg_db.transaction() as session:
            session.execute(
                update(Batch)
                .where(Batch.job_id == jobs[1])
                .values(expires_at=utcnow() - dt.timedelta(seconds=1))
            )
        claims = service.claim_many(worker="w", limit=3)
        [expired] = recipients_of(pg_db, jobs[1])
        attempted = {a.job_id for a in attempts_of(pg_db)}
    finally:
        service.close()
    assert [c.job_id for c in claims] == [jobs[0], jobs[2]]
    assert expired.status == "expired"
    assert attempted == {jobs[0], jobs[2]}
