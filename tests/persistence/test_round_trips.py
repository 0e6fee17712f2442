"""A one-recipient job costs its producer one PostgreSQL round trip (issue 15, item 3).

Counted from libpq's own trace of the protocol: every message the client sends is
logged, and each round trip ends with a ``Sync`` (extended protocol) or is one
``Query`` (simple protocol: BEGIN, COMMIT).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event

from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from support.numbers import number
from support.reads import recipients_of
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
