"""Bad input to ``send()`` and ``Dispatcher.enqueue``: a typed error, and nothing written.

README "Sending": ``send()`` validates everything first and raises a
``dispatcher.errors.ValidationError`` subclass, writing nothing, when no number is
usable, the text is empty or needs more parts than ``maxconcat``, or an option is
out of range; numbers that cannot be phone numbers are recorded as ``failed``
beside the others. Each case runs on PostgreSQL (the session's migrated database)
and on SQLite (the embedded default), counting the rows of every table before and
after, and counting the wake-ups sent.
"""

from __future__ import annotations

import datetime as dt
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import dispatcher
from dispatcher import runtime
from dispatcher.config import ENV_PREFIX, load_settings
from dispatcher.domain.lanes import LANE_QUEUES, Priority
from dispatcher.domain.times import utcnow
from dispatcher.errors import (
    InvalidOptionError,
    InvalidSenderError,
    InvalidTextError,
    NoRecipientsError,
    NoWorkerWarning,
    TooManyRecipientsError,
    ValidationError,
)
from dispatcher.persistence import migrate
from dispatcher.persistence.db import Database
from dispatcher.persistence.store.heartbeats import upsert_heartbeat
from dispatcher.service.dispatcher import Dispatcher
from support.numbers import number
from support.reads import recipients_of, row_counts

GOOD_TO = ["07700 900001", "+44 7700 900002"]


@dataclass
class CountingWaker:
    """A waker that only counts the wake-ups asked of it."""

    calls: list[int] = field(default_factory=list)

    def __call__(self, count: int, lane: Priority = Priority.NORMAL) -> None:
        self.calls.append(count)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DISPATCHER_* variable and no settings file from the machine or the repo."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.setenv(ENV_PREFIX + "SETTINGS_FILE", os.devnull)
    monkeypatch.setenv(ENV_PREFIX + "DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(
    params=[pytest.param("postgresql", marks=pytest.mark.services), pytest.param("sqlite")]
)
def db(request: pytest.FixtureRequest, tmp_path: Path, clean_env: None) -> Iterator[Database]:
    """An empty, migrated database: the session's PostgreSQL one, or a SQLite file."""
    if request.param == "postgresql":
        pg: Database = request.getfixturevalue("pg_db")
        yield pg
        return
    sqlite = Database(f"sqlite:///{tmp_path / 'validation.sqlite3'}")
    try:
        migrate.upgrade(sqlite)
        yield sqlite
    finally:
        sqlite.dispose()


@dataclass
class Service:
    """A Dispatcher on ``db`` whose wake-ups are counted."""

    dispatcher: Dispatcher
    waker: CountingWaker
    db: Database


@pytest.fixture
def service(db: Database) -> Iterator[Service]:
    """A Dispatcher on the test's database, with one valid job already written.

    The job makes every count non-zero, so "unchanged" cannot pass by counting an
    empty table that the request failed to reach.
    """
    waker = CountingWaker()
    settings = load_settings(database_url=db.url)
    svc = Dispatcher(settings, database=db, waker=waker)
    try:
        # A refused number too: only a refusal writes a status event at enqueue.
        svc.enqueue([*GOOD_TO, "12"], "The job before")
        assert waker.calls == [1]
        counts = row_counts(db)
        assert counts["jobs"] == 1
        assert (counts["recipients"], counts["status_events"]) == (3, 1)
        assert counts["batches"] == 1
        yield Service(svc, waker, db)
    finally:
        svc.close()


def _offset(minutes: int) -> dt.tzinfo:
    return dt.timezone(dt.timedelta(minutes=minutes))


def _utc(year: int, month: int, day: int) -> dt.datetime:
    return dt.datetime(year, month, day, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Bad:
    """A send request that must be refused, the error it must raise, and a word of it."""

    to: Any
    text: Any
    error: type[ValidationError]
    needle: str
    options: dict[str, Any] = field(default_factory=dict)


BAD = [
    pytest.param(
        Bad(["12345", "not a number"], "hi", NoRecipientsError, "no valid recipient"),
        id="no-valid-recipient",
    ),
    pytest.param(Bad([], "hi", NoRecipientsError, "no valid recipient given"), id="to-empty-list"),
    pytest.param(Bad("", "hi", NoRecipientsError, "no valid recipient"), id="to-empty-string"),
    pytest.param(Bad(" , ,", "hi", NoRecipientsError, "empty"), id="to-only-commas"),
    pytest.param(
        Bad([447700900123], "hi", NoRecipientsError, "must be a string, not int"), id="to-only-ints"
    ),
    pytest.param(Bad(None, "hi", NoRecipientsError, "to must be a number"), id="to-none"),
    pytest.param(
        Bad(447700900123, "hi", NoRecipientsError, "to must be a number"), id="to-one-int"
    ),
    pytest.param(
        Bad(b"07700900123", "hi", NoRecipientsError, "must be a string, not int"), id="to-bytes"
    ),
    pytest.param(Bad(GOOD_TO, "", InvalidTextError, "text is empty"), id="text-empty"),
    pytest.param(Bad(GOOD_TO, " \t\r\n ", InvalidTextError, "text is empty"), id="text-whitespace"),
    pytest.param(Bad(GOOD_TO, None, InvalidTextError, "text must be a string"), id="text-none"),
    pytest.param(Bad(GOOD_TO, "a\x00b", InvalidTextError, "NUL"), id="text-nul"),
    pytest.param(
        Bad(GOOD_TO, "a" * 161, InvalidTextError, "needs 2 parts"), id="gsm-161-maxconcat-1"
    ),
    pytest.param(
        Bad(GOOD_TO, "ł" * 71, InvalidTextError, "needs 2 parts"), id="ucs2-71-maxconcat-1"
    ),
    pytest.param(
        Bad(GOOD_TO, "a" * (3 * 153 + 1), InvalidTextError, "maxconcat is 3", {"maxconcat": 3}),
        id="gsm-4-parts-maxconcat-3",
    ),
    pytest.param(
        Bad(GOOD_TO, "hi", InvalidOptionError, "between 1 and 255", {"maxconcat": 0}),
        id="maxconcat-0",
    ),
    pytest.param(
        Bad(GOOD_TO, "hi", InvalidOptionError, "between 1 and 255", {"maxconcat": 256}),
        id="maxconcat-256",
    ),
    pytest.param(
        Bad(GOOD_TO, "hi", InvalidOptionError, "between 1 and 255", {"maxconcat": -1}),
        id="maxconcat-negative",
    ),
    pytest.param(
        Bad(GOOD_TO, "hi", InvalidOptionError, "not str", {"maxconcat": "2"}), id="maxconcat-str"
    ),
    pytest.param(
        Bad(GOOD_TO, "hi", InvalidOptionError, "not bool", {"maxconcat": True}), id="maxconcat-true"
    ),
    pytest.param(
        Bad(GOOD_TO, "hi", InvalidOptionError, "not float", {"maxconcat": 2.0}),
        id="maxconcat-float",
    ),
    pytest.param(
        Bad(GOOD_TO, "hi", InvalidOptionError, "kind must be one of text, voice", {"kind": "fax"}),
        id="kind-unknown",
    ),
    pytest.param(Bad(GOOD_TO, "hi", InvalidOptionError, "kind", {"kind": None}), id="kind-none"),
    pytest.param(
        Bad(GOOD_TO, "hi", InvalidSenderError, "up to 11", {"sender": "TwelveChars1"}),
        id="sender-12-alphanumerics",
    ),
    pytest.param(
        Bad(GOOD_TO, "hi", InvalidSenderError, "at most 15 digits", {"sender": "1234567890123456"}),
        id="sender-16-digits",
    ),
    pytest.param(
        Bad(GOOD_TO, "hi", InvalidSenderError, "up to 11", {"sender": "Acme!"}),
        id="sender-punctuation",
    ),
    pytest.param(
        Bad(GOOD_TO, "hi", InvalidSenderError, "up to 11", {"sender": "Acmé"}),
        id="sender-non-ascii",
    ),
    pytest.param(
        Bad(GOOD_TO, "hi", InvalidSenderError, "up to 11", {"sender": "12345 67890"}),
        id="sender-digits-and-space",
    ),
    pytest.param(
        Bad(GOOD_TO, "hi", InvalidSenderError, "must be a string", {"sender": 447700}),
        id="sender-int",
    ),
    pytest.param(
        Bad(GOOD_TO, "hi", InvalidOptionError, "reference must be a string", {"reference": 7}),
        id="reference-int",
    ),
    pytest.param(
        Bad(
            GOOD_TO, "hi", InvalidOptionError, "reference must be printable", {"reference": "a\nb"}
        ),
        id="reference-newline",
    ),
    pytest.param(
        Bad(
            GOOD_TO,
            "hi",
            InvalidOptionError,
            "at most 200 characters",
            {"idempotency_key": "k" * 201},
        ),
        id="idempotency-key-too-long",
    ),
    # What PostgreSQL (NUL) or any UTF-8 database (a lone surrogate) cannot hold is
    # refused naming the field, never a driver error from deep inside the insert.
    pytest.param(
        Bad(GOOD_TO, "a\ud800b", InvalidTextError, "text is not valid Unicode"),
        id="text-lone-surrogate",
    ),
    pytest.param(
        Bad(GOOD_TO, "a\udcffb", InvalidTextError, "text is not valid Unicode"),
        id="text-undecodable-byte",
    ),
    pytest.param(
        Bad(GOOD_TO, "hi", InvalidOptionError, "reference contains a NUL", {"reference": "a\x00"}),
        id="reference-nul",
    ),
    pytest.param(
        Bad(
            GOOD_TO,
            "hi",
            InvalidOptionError,
            "reference is not valid Unicode",
            {"reference": "r\udfff"},
        ),
        id="reference-lone-surrogate",
    ),
    pytest.param(
        Bad(
            GOOD_TO,
            "hi",
            InvalidOptionError,
            "idempotency_key contains a NUL",
            {"idempotency_key": "k\x00"},
        ),
        id="idempotency-key-nul",
    ),
    pytest.param(
        Bad(["\ud800", "44\x00"], "hi", NoRecipientsError, "no valid recipient"),
        id="to-only-unstorable",
    ),
    pytest.param(
        Bad(GOOD_TO, "hi", InvalidOptionError, "in the past", {"send_at": _utc(1, 1, 1)}),
        id="send-at-year-1",
    ),
    pytest.param(
        Bad(GOOD_TO, "hi", InvalidOptionError, "in the past", {"send_at": _utc(2001, 1, 1)}),
        id="send-at-past",
    ),
    pytest.param(
        Bad(
            GOOD_TO,
            "hi",
            InvalidOptionError,
            "out of range",
            {"send_at": dt.datetime(1, 1, 1, tzinfo=_offset(60))},
        ),
        id="send-at-before-year-1-in-utc",
    ),
    pytest.param(
        Bad(
            GOOD_TO,
            "hi",
            InvalidOptionError,
            "out of range",
            {"send_at": dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=_offset(-(23 * 60 + 59)))},
        ),
        id="send-at-after-year-9999-in-utc",
    ),
]


def assert_one_readable_line(exc: BaseException, needle: str) -> None:
    message = str(exc)
    assert needle in message, message
    assert "\n" not in message, message
    assert 10 <= len(message) <= 300, message


@pytest.mark.parametrize("bad", BAD)
def test_bad_request_raises_a_typed_error_and_writes_nothing(service: Service, bad: Bad) -> None:
    before = row_counts(service.db)

    with pytest.raises(ValidationError) as info:
        service.dispatcher.enqueue(bad.to, bad.text, **bad.options)

    assert type(info.value) is bad.error
    assert isinstance(info.value, ValueError)  # and so catchable as one
    assert_one_readable_line(info.value, bad.needle)
    assert row_counts(service.db) == before
    assert service.waker.calls == [1]  # the earlier job's only


def test_a_mixed_list_keeps_the_strings_and_records_an_int_as_refused(service: Service) -> None:
    # A non-string in the list is refused like any impossible number: recorded failed
    # (INVALID_NUMBER, with the reason) beside the others, the job still sent.
    mixed: list[Any] = ["07700 900123", 447700900456]
    result = service.dispatcher.enqueue(mixed, "Mixed types")

    assert result.accepted == [number(123)]
    assert result.refused == [("447700900456", "must be a string, not int")]
    rows = recipients_of(service.db, result.job_id)
    assert [
        (r.number, r.status, r.error_code, r.error_detail, r.batch_id is None) for r in rows
    ] == [
        (number(123), "queued", None, None, False),
        (
            "447700900456",
            "failed",
            "INVALID_NUMBER",
            "refused at enqueue: must be a string, not int",
            True,
        ),
    ]


def test_a_number_that_is_not_text_is_recorded_as_refused(service: Service) -> None:
    """A number with a lone surrogate or a NUL (which no database column can hold) is
    refused like any impossible number and recorded, escaped, beside the others."""
    result = service.dispatcher.enqueue(["07700 900123", "0770\udcff", "44\x00"], "Odd bytes")

    assert result.accepted == [number(123)]
    assert [raw for raw, _reason in result.refused] == ["'0770\\udcff'", "'44\\x00'"]
    rows = recipients_of(service.db, result.job_id)
    assert [(r.number, r.status, r.error_code) for r in rows] == [
        (number(123), "queued", None),
        ("'0770\\udcff'", "failed", "INVALID_NUMBER"),
        ("'44\\x00'", "failed", "INVALID_NUMBER"),
    ]


def test_the_limits_themselves_are_accepted(service: Service) -> None:
    # The edges of every check, so the refusals above are not simply "refuse a lot".
    accepted = [
        service.dispatcher.enqueue(GOOD_TO, "a" * 160),
        service.dispatcher.enqueue(GOOD_TO, "ł" * 70),
        service.dispatcher.enqueue(GOOD_TO, "a" * (255 * 153), maxconcat=255),
        service.dispatcher.enqueue(GOOD_TO, "hi", sender="Acme Ltd 01"),
        service.dispatcher.enqueue(GOOD_TO, "hi", sender="123456789012345"),
        service.dispatcher.enqueue(GOOD_TO, "hi", sender="+447700900123"),
        service.dispatcher.enqueue(GOOD_TO, "hi", sender="   "),
        service.dispatcher.enqueue(GOOD_TO, "hi", kind=" VOICE "),
        service.dispatcher.enqueue("07700900001,07700900002", "hi"),
    ]
    assert [r.parts for r in accepted] == [1, 1, 255, 1, 1, 1, 1, 1, 1]
    assert all(r.accepted == [number(1), number(2)] for r in accepted)
    assert row_counts(service.db)["jobs"] == 1 + len(accepted)


# --- the public send() -------------------------------------------------------------


@pytest.fixture
def public_send(db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingWaker]:
    """``dispatcher.send`` configured by DISPATCHER_* for ``db``; its waker counts."""
    monkeypatch.setenv(ENV_PREFIX + "DATABASE_URL", db.url)
    runtime.reset()
    waker = CountingWaker()
    try:
        # The process-wide service, built now with a waker that needs no broker.
        assert runtime.service(waker=waker).db.url == db.url
        yield waker
    finally:
        runtime.reset()


@pytest.mark.parametrize(
    ("to", "text", "options", "error", "needle"),
    [
        pytest.param(["12345"], "hi", {}, NoRecipientsError, "no valid recipient", id="number"),
        pytest.param(GOOD_TO, "  ", {}, InvalidTextError, "text is empty", id="text"),
        pytest.param(GOOD_TO, "a" * 200, {}, InvalidTextError, "raise maxconcat to 2", id="parts"),
        pytest.param(GOOD_TO, "hi", {"maxconcat": 0}, InvalidOptionError, "maxconcat", id="mc"),
        pytest.param(GOOD_TO, "hi", {"kind": "fax"}, InvalidOptionError, "kind", id="kind"),
        pytest.param(GOOD_TO, "hi", {"sender": "Acme!"}, InvalidSenderError, "sender", id="from"),
        pytest.param(GOOD_TO, "a\ud800", {}, InvalidTextError, "not valid Unicode", id="surrogate"),
        pytest.param(
            GOOD_TO, "hi", {"send_at": _utc(2001, 1, 1)}, InvalidOptionError, "past", id="past"
        ),
    ],
)
def test_public_send_refuses_in_one_readable_line_and_writes_nothing(
    public_send: CountingWaker,
    db: Database,
    to: Any,
    text: str,
    options: dict[str, Any],
    error: type[ValidationError],
    needle: str,
) -> None:
    before = row_counts(db)

    with pytest.raises(error) as info:
        dispatcher.send(to, text, **options)

    assert_one_readable_line(info.value, needle)
    assert row_counts(db) == before
    assert public_send.calls == []

    # The control: the same process-wide service writes a valid job.
    job_id = dispatcher.send(GOOD_TO, "hi")
    assert [r.number for r in recipients_of(db, job_id)] == [number(1), number(2)]
    assert public_send.calls == [1]


def test_the_recipient_cap_applies_to_send_as_to_every_producer_path(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``DISPATCHER_MAX_RECIPIENTS_PER_JOB`` is checked where the send request is built,
    so ``send()`` refuses what ``/v1`` and the drop-in refuse, writing nothing."""
    monkeypatch.setenv(ENV_PREFIX + "DATABASE_URL", db.url)
    monkeypatch.setenv(ENV_PREFIX + "MAX_RECIPIENTS_PER_JOB", "3")
    runtime.reset()
    waker = CountingWaker()
    try:
        runtime.service(waker=waker)
        before = row_counts(db)
        with pytest.raises(TooManyRecipientsError) as info:
            dispatcher.send([number(i) for i in range(1, 5)], "four is one too many")
        assert_one_readable_line(info.value, "DISPATCHER_MAX_RECIPIENTS_PER_JOB")
        assert row_counts(db) == before
        assert waker.calls == []

        job_id = dispatcher.send([number(i) for i in range(1, 4)], "three is the cap")
        assert len(recipients_of(db, job_id)) == 3
    finally:
        runtime.reset()


def test_send_warns_when_no_live_worker_consumes_the_jobs_lane(
    public_send: CountingWaker, db: Database
) -> None:
    """A warning, not an error: the job is queued and waits for a worker (issue 16, item 4).
    Once per lane per look at the heartbeats, not once per job: a producer sending
    thousands while its workers are away gets one line, not thousands."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        job_id = dispatcher.send(GOOD_TO, "hi", priority="high")
        later = [dispatcher.send(GOOD_TO, f"again {i}", priority="high") for i in range(3)]
        dispatcher.send(GOOD_TO, "another lane", priority="bulk")
    assert all(issubclass(w.category, NoWorkerWarning) for w in caught)
    assert all("no live worker consumes" in str(w.message) for w in caught)
    assert [r.number for r in recipients_of(db, job_id)] == [number(1), number(2)]
    assert all(len(recipients_of(db, j)) == 2 for j in later)
    lanes = [str(w.message).split(" lane")[0].rsplit(" ", 1)[-1] for w in caught]
    assert lanes == ["high", "bulk"]

    # A worker consuming the high lane, seen now: no warning once send() looks again.
    now = utcnow()
    with db.transaction() as session:
        upsert_heartbeat(
            session,
            {
                "name": "w@h",
                "hostname": "h",
                "pid": 1,
                "queues": ",".join(sorted(LANE_QUEUES.values())),
                "started_at": now,
                "seen_at": now,
                "consumed_at": now,
                "batches": 0,
                "state": "running",
            },
        )
    runtime.reset()
    runtime.service(waker=public_send)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoWorkerWarning)
        dispatcher.send(GOOD_TO, "hi", priority="high")
