"""No reply can lose an accepted gateway ID: recorded on PostgreSQL and on SQLite.

Whatever the gateway answers for one recipient (an undocumented code of any
length, odd characters, an ID longer than any column, lines that break the
grammar), ``Dispatcher.record`` after a real ``claim`` writes every accepted ID
exactly, fits the rest to its columns, and never leaves the batch to the sweeper's
WORKER_LOST guess because the database refused one value. Replies come from the
simulator over HTTP where it can give them, and otherwise (IDs it never makes,
malformed shapes) as the client would classify them (``reply_shapes``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from dispatcher.domain.statuses import AttemptOutcome, BatchStatus, BreakerState
from dispatcher.domain.times import utcnow
from dispatcher.gateway.protocol import decode_body
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence import columns, store
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Batch
from dispatcher.persistence.salvage import REPLY_NOT_RECORDED
from dispatcher.service.control import UNPAUSED
from dispatcher.service.dispatcher import Claim, Dispatcher
from support.numbers import number
from support.pipeline import check_invariants
from support.reads import attempts_of, batches_of, events_of, recipients_of, send_requests
from support.reply_shapes import reply_shapes, reply_submission
from support.settings import SUBMITTING_TIMEOUT_S
from support.triggers import refusing

pytestmark = pytest.mark.usefixtures("clean_env")

ERROR_CODE_WIDTH = 64
CAUSE_WIDTH = 500


def claimed(service: Dispatcher, size: int, text: str) -> tuple[str, Claim, list[str]]:
    """A job to ``size`` numbers, enqueued and claimed: its id, the claim, and the
    numbers as submitted."""
    job_id = service.enqueue([number(i) for i in range(1, size + 1)], text).job_id
    claim = service.claim(worker="w")
    assert claim is not None
    assert claim.job_id == job_id
    return job_id, claim, [r.number for r in claim.recipients]


def set_claimed_at(database: Database, batch_id: int, age_s: float) -> None:
    with database.transaction() as session:
        session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(claimed_at=utcnow() - dt.timedelta(seconds=age_s))
        )


# --- values that do not fit their columns -----------------------------------------------


def test_an_undocumented_code_of_any_length_costs_nobody_else_their_id(
    service: Dispatcher, simulator: GatewaySimulator
) -> None:
    code = "UNDOCUMENTED_" + "X" * 150
    simulator.configure(number_rules={number(2): code})
    job_id, claim, _ = claimed(service, 3, "long code")

    service.record(claim, service.submit(claim), worker="w")

    ok1, odd, ok3 = recipients_of(service.db, job_id)
    assert (ok1.status, ok3.status) == ("sent", "sent")
    assert ok1.gateway_message_id
    assert ok1.gateway_message_id == ok3.gateway_message_id
    assert (odd.status, odd.gateway_message_id) == ("failed", None)
    # Clipped where the column is narrow, recognisably, and saying so; whole in the reply.
    assert odd.error_code is not None
    assert odd.error_code == columns.fit_code(code)
    assert len(odd.error_code) == ERROR_CODE_WIDTH
    assert odd.error_code.startswith("UNDOCUMENTED_XXX")
    assert "…" in odd.error_code
    [attempt] = attempts_of(service.db, job_id)
    assert attempt.raw_reply is not None
    assert f"{number(2)},ERR:{code}" in attempt.raw_reply
    check_invariants(service.db, simulator)


def test_a_gateway_id_of_any_length_is_stored_exactly(service: Dispatcher) -> None:
    # As long as the client takes a reply (64 KiB), in characters of every width.
    gateway_id = "7" * 60_000 + "é€😀" * 300
    job_id, claim, numbers = claimed(service, 2, "long id")

    service.record(claim, reply_submission(numbers, f"ID:{gateway_id}\r\n".encode()))

    rows = recipients_of(service.db, job_id)
    assert [(r.status, r.gateway_message_id) for r in rows] == [("sent", gateway_id)] * 2
    sent = [e for e in events_of(service.db, job_id) if e.to_status == "sent"]
    assert len(sent) == 2
    for event in sent:
        assert len(event.cause) == CAUSE_WIDTH
        assert event.cause.startswith("accepted as 7777")
        assert event.cause.endswith("…")


@pytest.mark.parametrize(
    ("value", "want"),
    [
        pytest.param("A" * 64, "A" * 64, id="fits"),
        pytest.param("é" * 600, "é" * 499 + "…", id="clipped-by-characters"),
        pytest.param("😀" * 501, "😀" * 499 + "…", id="astral-characters-whole"),
        pytest.param("a\x00b\ud800", "a\ufffdb\ufffd", id="unstorable-replaced"),
    ],
)
def test_fitting_a_cause_never_splits_a_character(value: str, want: str) -> None:
    assert columns.fit_cause(value) == want


def test_fitting_a_code_keeps_long_codes_apart_and_stable() -> None:
    one, two = "E" * 80 + "ONE", "E" * 80 + "TWO"
    assert columns.fit_code(one) == columns.fit_code(one)
    assert columns.fit_code(one) != columns.fit_code(two)
    assert {len(columns.fit_code(c) or "") for c in (one, two)} == {ERROR_CODE_WIDTH}
    assert columns.fit_code("INVALID_NUMBER") == "INVALID_NUMBER"
    assert columns.fit_code(None) is None


# --- a write the database refuses -------------------------------------------------------


def test_a_refused_outcome_is_recorded_plainly_and_the_rest_of_the_reply_whole(
    service: Dispatcher, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING")
    job_id, claim, [one, two, three] = claimed(service, 3, "refused")
    body = f"{one},ID:good-1\r\n{two},ID:poison\r\n{three},ERR:INVALID_NUMBER\r\n".encode()

    with refusing(database, "NEW.gateway_message_id = 'poison'"):
        service.record(claim, reply_submission([one, two, three], body), worker="w")

    good, refused, invalid = recipients_of(service.db, job_id)
    assert (good.status, good.gateway_message_id, good.attempts) == ("sent", "good-1", 1)
    assert (refused.status, refused.gateway_message_id, refused.error_code) == (
        "sent",
        None,
        REPLY_NOT_RECORDED,
    )
    assert refused.attempts == 1
    assert (invalid.status, invalid.error_code) == ("failed", "INVALID_NUMBER")
    [attempt] = attempts_of(service.db, job_id)
    assert (attempt.outcome, attempt.raw_reply) == (AttemptOutcome.PARTIAL, decode_body(body))
    [batch] = batches_of(service.db, job_id)
    assert batch.status == BatchStatus.DONE
    [event] = [
        e
        for e in events_of(service.db, job_id)
        if e.recipient_id == refused.id and e.to_status == "sent"
    ]
    assert "refused" in event.cause
    assert event.attempt_id == attempt.id
    # The accepted ID the database would not take is in an ERROR line, with the reason.
    [error] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert f"{two}=sent:'poison'" in error.getMessage()
    assert REPLY_NOT_RECORDED in error.getMessage()
    assert "refused by a test trigger" not in caplog.text, "the database's message stays out"
    # Nothing for the sweeper to guess.
    set_claimed_at(service.db, claim.batch_id, SUBMITTING_TIMEOUT_S + 5)
    assert service.sweep()["abandoned_recipients"] == 0


def test_a_value_the_driver_cannot_encode_is_recorded_plainly(
    service: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    # The client never makes a lone surrogate (replies are decoded with replacement),
    # but whatever a database driver refuses to encode is refused like a value the
    # database refuses: the rest of the reply is recorded.
    caplog.set_level("ERROR")
    job_id, claim, [one, two] = claimed(service, 2, "unencodable")
    submission = reply_submission([one, two], f"{one},ID:5\r\n{two},ID:6\r\n".encode())
    submission.outcomes[1] = replace(submission.outcomes[1], gateway_message_id="6\ud800")

    service.record(claim, submission, worker="w")

    rows = recipients_of(service.db, job_id)
    assert [(r.status, r.gateway_message_id, r.error_code) for r in rows] == [
        ("sent", "5", None),
        ("sent", None, REPLY_NOT_RECORDED),
    ]
    assert f"{two}=sent:'6\\ud800'" in caplog.text
    [batch] = batches_of(service.db, job_id)
    assert batch.status == BatchStatus.DONE


def test_a_raw_reply_refused_as_received_is_stored_escaped(
    service: Dispatcher, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("ERROR")
    job_id, claim, [one, two] = claimed(service, 2, "escaped")
    body = f"{one},ID:é1\r\n{two},ERR:INVALID_NUMBER\r\n".encode()
    has_e = {
        "postgresql": "strpos(NEW.raw_reply, 'é') > 0",
        "sqlite": "instr(NEW.raw_reply, 'é') > 0",
    }

    with refusing(database, has_e[database.dialect], table="attempts"):
        service.record(claim, reply_submission([one, two], body), worker="w")

    rows = recipients_of(service.db, job_id)
    assert [(r.status, r.gateway_message_id) for r in rows] == [("sent", "é1"), ("failed", None)]
    [attempt] = attempts_of(service.db, job_id)
    assert attempt.raw_reply == f"{one},ID:\\xe91\r\n{two},ERR:INVALID_NUMBER\r\n"
    assert attempt.outcome == AttemptOutcome.PARTIAL
    assert attempt.error is not None
    assert "stored escaped" in attempt.error
    assert "raw reply stored escaped" in caplog.text
    [batch] = batches_of(service.db, job_id)
    assert batch.status == BatchStatus.DONE


def test_an_outcome_nothing_can_write_is_left_to_the_sweeper_and_the_rest_recorded(
    service: Dispatcher, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING")
    job_id, claim, [one, two] = claimed(service, 2, "unwritable")
    body = f"{one},ID:41\r\n{two},ID:41\r\n".encode()

    with refusing(database, f"NEW.number = '{two}' AND NEW.status = 'sent'"):
        service.record(claim, reply_submission([one, two], body), worker="w")

        good, stuck = recipients_of(service.db, job_id)
        assert (good.status, good.gateway_message_id) == ("sent", "41")
        assert stuck.status == "submitting"
        [batch] = batches_of(service.db, job_id)
        assert batch.status == BatchStatus.SUBMITTING, "left for the sweeper to close"
        [attempt] = attempts_of(service.db, job_id)
        assert (attempt.outcome, attempt.raw_reply) == (AttemptOutcome.ACCEPTED, decode_body(body))
        [error] = [r for r in caplog.records if r.levelname == "ERROR"]
        assert f"{two}=sent:'41'" in error.getMessage()
        assert "left `submitting`" in error.getMessage()

        set_claimed_at(service.db, claim.batch_id, SUBMITTING_TIMEOUT_S + 5)
        assert service.sweep()["abandoned_recipients"] == 1

    good, stuck = recipients_of(service.db, job_id)
    assert (good.status, good.gateway_message_id) == ("sent", "41")
    assert (stuck.status, stuck.error_code, stuck.attempts) == ("unknown", store.WORKER_LOST, 1)
    [attempt] = attempts_of(service.db, job_id)
    assert attempt.outcome == AttemptOutcome.ACCEPTED, "the sweeper leaves a completed attempt"


# --- the attempt a worker died in -------------------------------------------------------


@pytest.mark.parametrize(
    ("knobs", "want"),
    [
        pytest.param({}, ("sent", 1), id="accepted"),
        pytest.param({"transient_error_rate": 1.0}, ("retry_wait", 1), id="transient"),
        pytest.param({"credit": 0}, ("queued", 0), id="no-credit-spends-nothing"),
        pytest.param(
            {"http_error_rate": 1.0, "http_error_status": 500}, ("unknown", 1), id="ambiguous"
        ),
    ],
)
def test_a_late_reply_replaces_the_sweepers_guess_without_counting_twice(
    service: Dispatcher,
    simulator: GatewaySimulator,
    knobs: dict[str, Any],
    want: tuple[str, int],
) -> None:
    # The worker's database was away past the submitting timeout: the sweeper counted
    # the call it was in and guessed WORKER_LOST; then the reply could be written.
    simulator.configure(**knobs)
    job_id, claim, _ = claimed(service, 2, "late")
    submission = service.submit(claim)
    set_claimed_at(service.db, claim.batch_id, SUBMITTING_TIMEOUT_S + 5)
    assert service.sweep()["abandoned_recipients"] == 2
    guessed = recipients_of(service.db, job_id)
    assert [(r.status, r.attempts) for r in guessed] == [("unknown", 1)] * 2

    service.record(claim, submission, worker="w")

    rows = recipients_of(service.db, job_id)
    assert [(r.status, r.attempts) for r in rows] == [want] * 2
    assert send_requests(simulator) == 1


# --- any reply shape --------------------------------------------------------------------


def reopen_dispatch(database: Database) -> None:
    """Undo what a reply may have done to dispatch (a pause, the breaker's count),
    so the next example's claim is not held back."""
    with database.transaction() as session:
        store.update_control(
            session,
            values=UNPAUSED
            | {
                "breaker_state": BreakerState.CLOSED,
                "breaker_failures": 0,
                "breaker_trips": 0,
                "breaker_retry_at": None,
            },
        )


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(size=st.integers(1, 6), data=st.data())
def test_any_reply_shape_is_recorded_with_every_accepted_id(
    service: Dispatcher, size: int, data: st.DataObject
) -> None:
    job_id, claim, numbers = claimed(service, size, "any shape")
    shape = data.draw(reply_shapes(numbers), label="reply")
    try:
        service.record(claim, reply_submission(numbers, shape.body), worker="w")

        rows = recipients_of(service.db, job_id)
        for row in rows:
            if row.number in shape.ids:
                assert (row.status, row.gateway_message_id) == ("sent", shape.ids[row.number])
            else:
                assert row.status != "sent"
                assert row.gateway_message_id is None
            assert row.error_code is None or len(row.error_code) <= ERROR_CODE_WIDTH
        [attempt] = attempts_of(service.db, job_id)
        assert attempt.raw_reply == decode_body(shape.body)
        assert attempt.outcome != AttemptOutcome.IN_FLIGHT
        assert all(len(e.cause) <= CAUSE_WIDTH for e in events_of(service.db, job_id))
        [batch] = batches_of(service.db, job_id)
        assert batch.status != BatchStatus.SUBMITTING
    finally:
        service.cancel(job_id, actor="test")
        reopen_dispatch(service.db)
