"""The gateway reply parser against docs/design.md sections 1 and 2, row by row, then fuzzed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.domain.message import TYPE_TEXT, TYPE_VOICE
from dispatcher.gateway.protocol import (
    CODE_MISSING_FROM_REPLY,
    CODE_UNREADABLE_REPLY,
    MAX_RECIPIENTS_PER_SUBMISSION,
    REDACTED,
    BalanceReply,
    Outcome,
    RecipientOutcome,
    build_send_form,
    classify_code,
    classify_reply,
    parse_balance,
    redact_form,
)
from support.reply_shapes import reply_shapes

A = "447700900123"
B = "447700900124"
C = "447700900125"
LONG_ID = "10011000000000000001"  # the vendor's own example; above 2**64


@dataclass(frozen=True)
class Want:
    """What one recipient's outcome should be."""

    outcome: Outcome
    code: str | None = None
    gateway_id: str | None = None


def accepted(gateway_id: str) -> Want:
    return Want(Outcome.ACCEPTED, None, gateway_id)


def check(numbers: Sequence[str], result: list[RecipientOutcome], wants: Sequence[Want]) -> None:
    assert [r.number for r in result] == list(numbers)
    got = [Want(r.outcome, r.error_code, r.gateway_message_id) for r in result]
    assert got == list(wants)


# --- docs/design.md section 2, one row (or more) per line of the outcome table --------------------

OUTCOME_TABLE = [
    # ID: accepted
    pytest.param([A], 200, b"ID:" + LONG_ID.encode(), [accepted(LONG_ID)], id="id-single"),
    pytest.param(
        [A, B],
        200,
        f"{A},ID:777\r\n{B},ID:777\r\n".encode(),
        [accepted("777"), accepted("777")],
        id="id-multi",
    ),
    # transient
    pytest.param(
        [A],
        200,
        b"ERR:GATEWAY_ERROR",
        [Want(Outcome.TRANSIENT, "GATEWAY_ERROR")],
        id="gateway-error",
    ),
    pytest.param(
        [A],
        200,
        b"ERR:INTERNAL_ERROR",
        [Want(Outcome.TRANSIENT, "INTERNAL_ERROR")],
        id="internal-error",
    ),
    pytest.param(
        [A, B],
        503,
        b"<html>Service Unavailable</html>",
        [Want(Outcome.TRANSIENT, "HTTP_503")] * 2,
        id="http-503",
    ),
    pytest.param(
        [A, B], 429, b"Too Many Requests", [Want(Outcome.TRANSIENT, "HTTP_429")] * 2, id="http-429"
    ),
    pytest.param(
        [A, B], 408, b"Request Timeout", [Want(Outcome.TRANSIENT, "HTTP_408")] * 2, id="http-408"
    ),
    pytest.param(
        [A, B],
        200,
        f"{A},ERR:GATEWAY_ERROR\r\n{B},ERR:INTERNAL_ERROR\r\n".encode(),
        [Want(Outcome.TRANSIENT, "GATEWAY_ERROR"), Want(Outcome.TRANSIENT, "INTERNAL_ERROR")],
        id="transient-multi",
    ),
    # INVALID_NUMBER
    pytest.param(
        [A],
        200,
        b"ERR:INVALID_NUMBER",
        [Want(Outcome.REJECTED, "INVALID_NUMBER")],
        id="invalid-number-single",
    ),
    pytest.param(
        [A, B],
        200,
        f"{A},ID:42\r\n{B},ERR:INVALID_NUMBER\r\n".encode(),
        [accepted("42"), Want(Outcome.REJECTED, "INVALID_NUMBER")],
        id="invalid-number-multi-mixed",
    ),
    # LOGIN_INVALID
    pytest.param(
        [A, B],
        200,
        b"ERR:LOGIN_INVALID",
        [Want(Outcome.LOGIN_INVALID, "LOGIN_INVALID")] * 2,
        id="login-invalid",
    ),
    # our request was wrong
    pytest.param([A], 200, b"ERR:NO_TO", [Want(Outcome.REQUEST_INVALID, "NO_TO")], id="no-to"),
    pytest.param(
        [A], 200, b"ERR:NO_TEXT", [Want(Outcome.REQUEST_INVALID, "NO_TEXT")], id="no-text"
    ),
    pytest.param(
        [A],
        200,
        b"ERR:NO_USERNAME",
        [Want(Outcome.REQUEST_INVALID, "NO_USERNAME")],
        id="no-username",
    ),
    pytest.param(
        [A],
        200,
        b"ERR:INVALID_REQUEST",
        [Want(Outcome.REQUEST_INVALID, "INVALID_REQUEST")],
        id="invalid-request",
    ),
    pytest.param(
        [A, B],
        200,
        b"ERR:SOMETHING_NEW",
        [Want(Outcome.REQUEST_INVALID, "SOMETHING_NEW")] * 2,
        id="unknown-code-verbatim",
    ),
    pytest.param(
        [A, B],
        200,
        f"{A},ERR:Weird-Code.42\n{B},ID:9\n".encode(),
        [Want(Outcome.REQUEST_INVALID, "Weird-Code.42"), accepted("9")],
        id="unknown-code-verbatim-multi",
    ),
    # INSUFFICIENT_CREDIT
    pytest.param(
        [A, B],
        200,
        b"ERR:INSUFFICIENT_CREDIT",
        [Want(Outcome.NO_CREDIT, "INSUFFICIENT_CREDIT")] * 2,
        id="insufficient-credit",
    ),
    # ambiguous: other 5xx
    pytest.param(
        [A, B],
        500,
        b"<html><body>Server Error</body></html>",
        [Want(Outcome.AMBIGUOUS, "HTTP_500")] * 2,
        id="http-500",
    ),
    pytest.param([A], 502, b"", [Want(Outcome.AMBIGUOUS, "HTTP_502")], id="http-502"),
    pytest.param(
        [A], 504, b"Gateway Timeout", [Want(Outcome.AMBIGUOUS, "HTTP_504")], id="http-504"
    ),
    # ambiguous: unreadable reply
    pytest.param(
        [A, B],
        200,
        b"<!DOCTYPE html><html><body><h1>Welcome</h1></body></html>",
        [Want(Outcome.AMBIGUOUS, CODE_UNREADABLE_REPLY)] * 2,
        id="unreadable-html-on-200",
    ),
    pytest.param(
        [A], 200, b"", [Want(Outcome.AMBIGUOUS, CODE_UNREADABLE_REPLY)], id="unreadable-empty"
    ),
    pytest.param(
        [A],
        200,
        b"\r\n  \r\n",
        [Want(Outcome.AMBIGUOUS, CODE_UNREADABLE_REPLY)],
        id="unreadable-blank-lines-only",
    ),
    pytest.param(
        [A],
        200,
        b"\xff\xfe\x00\x81garbage\x00",
        [Want(Outcome.AMBIGUOUS, CODE_UNREADABLE_REPLY)],
        id="unreadable-garbage-bytes",
    ),
    pytest.param(
        [A], 200, b"ID:", [Want(Outcome.AMBIGUOUS, CODE_UNREADABLE_REPLY)], id="unreadable-id-empty"
    ),
    pytest.param(
        [A],
        200,
        b"ERR:",
        [Want(Outcome.AMBIGUOUS, CODE_UNREADABLE_REPLY)],
        id="unreadable-err-empty",
    ),
    # ambiguous: a recipient whose line is unreadable; the others keep their own lines
    pytest.param(
        [A, B],
        200,
        f"{A},ID:5\r\nsomething else\r\n".encode(),
        [accepted("5"), Want(Outcome.AMBIGUOUS, CODE_UNREADABLE_REPLY)],
        id="unreadable-line-costs-only-the-unmatched",
    ),
    pytest.param(
        [A, B],
        200,
        f"{A},ID:5\r\nERR:GATEWAY_ERROR\r\n".encode(),
        [accepted("5"), Want(Outcome.AMBIGUOUS, CODE_UNREADABLE_REPLY)],
        id="unreadable-bare-line-among-numbered",
    ),
    pytest.param(
        [A, B, C],
        200,
        f"{A},ID:5\r\n{B},ID:5 trailing words\r\n{C},ERR:INVALID_NUMBER\r\n".encode(),
        [
            accepted("5"),
            Want(Outcome.AMBIGUOUS, CODE_UNREADABLE_REPLY),
            Want(Outcome.REJECTED, "INVALID_NUMBER"),
        ],
        id="unreadable-own-line",
    ),
    pytest.param(
        [A],
        200,
        b"ID:5\r\n<html>footer</html>\r\n",
        [Want(Outcome.AMBIGUOUS, CODE_UNREADABLE_REPLY)],
        id="unreadable-single-line-with-junk",
    ),
    pytest.param(
        [A, B],
        200,
        b"ID:5\r\nID:5\r\n",
        [Want(Outcome.AMBIGUOUS, CODE_UNREADABLE_REPLY)] * 2,
        id="unreadable-two-bare-lines",
    ),
    # ambiguous: recipient missing from a multi-line reply
    pytest.param(
        [A, B, C],
        200,
        f"{A},ID:5\r\n{C},ERR:INVALID_NUMBER\r\n".encode(),
        [
            accepted("5"),
            Want(Outcome.AMBIGUOUS, CODE_MISSING_FROM_REPLY),
            Want(Outcome.REJECTED, "INVALID_NUMBER"),
        ],
        id="missing-from-multi-line-reply",
    ),
    pytest.param(
        [A, B],
        200,
        f"{A},ID:5\r\n".encode(),
        [accepted("5"), Want(Outcome.AMBIGUOUS, CODE_MISSING_FROM_REPLY)],
        id="missing-one-numbered-line-for-two",
    ),
]


@pytest.mark.parametrize(("numbers", "status", "body", "wants"), OUTCOME_TABLE)
def test_outcome_table(numbers: list[str], status: int, body: bytes, wants: list[Want]) -> None:
    check(numbers, classify_reply(numbers, status, body), wants)


# --- line format: endings, blanks, whitespace, BOM ---------------------------------------

MULTI = [
    accepted("31"),
    Want(Outcome.REJECTED, "INVALID_NUMBER"),
    accepted("31"),
]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(f"{A},ID:31\r\n{B},ERR:INVALID_NUMBER\r\n{C},ID:31\r\n", id="crlf"),
        pytest.param(f"{A},ID:31\n{B},ERR:INVALID_NUMBER\n{C},ID:31\n", id="lf"),
        pytest.param(f"{A},ID:31\n{B},ERR:INVALID_NUMBER\n{C},ID:31", id="lf-no-final-newline"),
        pytest.param(f"{A},ID:31\r\n{B},ERR:INVALID_NUMBER\n{C},ID:31\r\n", id="mixed-endings"),
        pytest.param(
            f"\r\n{A},ID:31\r\n\r\n\r\n{B},ERR:INVALID_NUMBER\r\n\r\n{C},ID:31\r\n\r\n",
            id="blank-lines",
        ),
        pytest.param(
            f"{A},ID:31   \r\n{B},ERR:INVALID_NUMBER\t \r\n  {C},ID:31 \r\n", id="whitespace"
        ),
        pytest.param(f"{A} , ID:31\n{B},ERR:INVALID_NUMBER\n{C},ID:31\n", id="space-around-comma"),
        pytest.param(f"\ufeff{A},ID:31\r\n{B},ERR:INVALID_NUMBER\r\n{C},ID:31\r\n", id="utf8-bom"),
    ],
)
def test_multi_line_formats(body: str) -> None:
    numbers = [A, B, C]
    check(numbers, classify_reply(numbers, 200, body.encode("utf-8")), MULTI)


@pytest.mark.parametrize(
    ("body", "want"),
    [
        pytest.param(b"ID:88\r\n", accepted("88"), id="id-crlf"),
        pytest.param(b"ID:88\n", accepted("88"), id="id-lf"),
        pytest.param(b"  ID:88  \r\n\r\n", accepted("88"), id="id-whitespace-blank"),
        pytest.param(b"\xef\xbb\xbfID:88\r\n", accepted("88"), id="id-bom"),
        pytest.param(
            b"\xef\xbb\xbfERR:LOGIN_INVALID\r\n",
            Want(Outcome.LOGIN_INVALID, "LOGIN_INVALID"),
            id="err-bom",
        ),
        pytest.param(
            b"\r\nERR:NO_TEXT \r\n", Want(Outcome.REQUEST_INVALID, "NO_TEXT"), id="err-padded"
        ),
    ],
)
def test_single_line_formats(body: bytes, want: Want) -> None:
    check([A], classify_reply([A], 200, body), [want])


# --- numbers in the reply differ from those sent -----------------------------------------


@pytest.mark.parametrize(
    ("sent", "replied"),
    [
        pytest.param("07700900123", "447700900123", id="national-sent-international-replied"),
        pytest.param("07700900123", "+447700900123", id="national-sent-plus-replied"),
        pytest.param("+447700900123", "447700900123", id="plus-sent-digits-replied"),
        pytest.param("447700900123", "+447700900123", id="digits-sent-plus-replied"),
        pytest.param("00447700900123", "447700900123", id="00-sent-digits-replied"),
        pytest.param("447700900123", "00447700900123", id="digits-sent-00-replied"),
        pytest.param("07700900123", "00447700900123", id="national-sent-00-replied"),
    ],
)
def test_reply_numbers_normalised_differently(sent: str, replied: str) -> None:
    other = "447700900999"
    numbers = [sent, other]
    body = f"{other},ERR:INVALID_NUMBER\r\n{replied},ID:4242\r\n".encode()
    result = classify_reply(numbers, 200, body)
    check(numbers, result, [accepted("4242"), Want(Outcome.REJECTED, "INVALID_NUMBER")])
    assert result[0].reply_number == "447700900123"


def test_duplicates_removed_by_gateway_share_one_line() -> None:
    numbers = [A, B, A]
    body = f"{A},ID:55\r\n{B},ERR:INVALID_NUMBER\r\n".encode()
    check(
        numbers,
        classify_reply(numbers, 200, body),
        [accepted("55"), Want(Outcome.REJECTED, "INVALID_NUMBER"), accepted("55")],
    )


def test_national_and_international_forms_of_one_number_share_its_line() -> None:
    numbers = ["07700900123", B, "447700900123"]
    body = f"447700900123,ERR:INVALID_NUMBER\r\n{B},ID:56\r\n".encode()
    check(
        numbers,
        classify_reply(numbers, 200, body),
        [
            Want(Outcome.REJECTED, "INVALID_NUMBER"),
            accepted("56"),
            Want(Outcome.REJECTED, "INVALID_NUMBER"),
        ],
    )


@pytest.mark.parametrize(
    ("body", "want"),
    [
        pytest.param(f"{A},ERR:GATEWAY_ERROR\r\n{A},ID:8\r\n", accepted("8"), id="err-then-id"),
        pytest.param(f"{A},ID:8\r\n{A},ERR:INVALID_NUMBER\r\n", accepted("8"), id="id-then-err"),
        pytest.param(f"{A},ID:8\r\n+{A},ID:9\r\n", accepted("8"), id="two-ids-first-wins"),
        pytest.param(
            f"{A},ERR:NO_TEXT\r\n{A},ERR:INVALID_NUMBER\r\n",
            Want(Outcome.REQUEST_INVALID, "NO_TEXT"),
            id="two-errs-first-wins",
        ),
    ],
)
def test_a_number_answered_twice_keeps_an_accepted_id(body: str, want: Want) -> None:
    # The gateway removes duplicates, so this reply is malformed; an ID in it means
    # the gateway may have sent the message, and is never thrown away for an error.
    numbers = [A, B]
    check(
        numbers,
        classify_reply(numbers, 200, (body + f"{B},ID:8\r\n").encode()),
        [want, accepted("8")],
    )


# --- one line for many recipients --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "want"),
    [
        pytest.param(b"ID:" + LONG_ID.encode() + b"\r\n", accepted(LONG_ID), id="id"),
        pytest.param(
            b"ERR:INSUFFICIENT_CREDIT", Want(Outcome.NO_CREDIT, "INSUFFICIENT_CREDIT"), id="credit"
        ),
        pytest.param(
            b"ERR:GATEWAY_ERROR\r\n", Want(Outcome.TRANSIENT, "GATEWAY_ERROR"), id="transient"
        ),
        pytest.param(b"ERR:NO_TO", Want(Outcome.REQUEST_INVALID, "NO_TO"), id="no-to"),
        pytest.param(
            b"ERR:INVALID_NUMBER", Want(Outcome.REJECTED, "INVALID_NUMBER"), id="invalid-number"
        ),
    ],
)
def test_single_line_applies_to_every_recipient(body: bytes, want: Want) -> None:
    numbers = [f"4477009{i:05d}" for i in range(100)]
    check(numbers, classify_reply(numbers, 200, body), [want] * len(numbers))


# --- IDs and order ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "gateway_id",
    [
        pytest.param(LONG_ID, id="vendor-example"),
        pytest.param("18446744073709551616", id="2-pow-64"),
        pytest.param("123456789012345678901234567890123456789", id="39-digits"),
        pytest.param("000000000000000000042", id="leading-zeros"),
    ],
)
def test_gateway_ids_are_exact_strings(gateway_id: str) -> None:
    single = classify_reply([A], 200, f"ID:{gateway_id}".encode())
    multi = classify_reply([A, B], 200, f"{A},ID:{gateway_id}\r\n{B},ID:{gateway_id}".encode())
    for outcome in [*single, *multi]:
        assert outcome.gateway_message_id == gateway_id
        assert isinstance(outcome.gateway_message_id, str)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("x" * 70_000, id="longer-than-any-column"),
        pytest.param("ÿ€😀ĳ" * 40, id="non-ascii"),
        pytest.param("a\x01b\x07c\x7fd\x1be[0m", id="control-characters"),
        pytest.param("ID:ERR:42", id="grammar-inside"),
    ],
)
def test_ids_and_codes_are_verbatim_whatever_their_length_or_characters(value: str) -> None:
    numbers = [A, B]
    body = f"{A},ID:{value}\r\n{B},ERR:{value}\r\n".encode()
    check(
        numbers,
        classify_reply(numbers, 200, body),
        [accepted(value), Want(Outcome.REQUEST_INVALID, value)],
    )
    check([A], classify_reply([A], 200, f"ID:{value}".encode()), [accepted(value)])


def test_result_order_is_submission_order_not_reply_order() -> None:
    numbers = [A, B, C]
    body = f"{C},ERR:NO_TEXT\r\n{A},ERR:INVALID_NUMBER\r\n{B},ID:3\r\n".encode()
    check(
        numbers,
        classify_reply(numbers, 200, body),
        [
            Want(Outcome.REJECTED, "INVALID_NUMBER"),
            accepted("3"),
            Want(Outcome.REQUEST_INVALID, "NO_TEXT"),
        ],
    )


def test_extra_reply_lines_for_unsent_numbers_are_ignored() -> None:
    numbers = [A]
    body = f"{A},ID:7\r\n447700900999,ID:7\r\n".encode()
    check(numbers, classify_reply(numbers, 200, body), [accepted("7")])


@pytest.mark.parametrize(
    ("body", "b_want"),
    [
        pytest.param(f"{A},ID:7\r\n{B},ID:7\r\n", accepted("7"), id="cut-after-a-line"),
        # An ID cut short would point at another message: its line is not read.
        pytest.param(f"{A},ID:7\r\n{B},ID:7", None, id="cut-inside-an-id"),
        pytest.param(f"{A},ID:7\r\n{B},ERR:INVALID_NUM", None, id="cut-inside-a-code"),
    ],
)
def test_a_reply_read_only_in_part_keeps_its_complete_lines(body: str, b_want: Want | None) -> None:
    numbers = [A, B, C]
    unread = Want(Outcome.AMBIGUOUS, CODE_UNREADABLE_REPLY)
    check(
        numbers,
        classify_reply(numbers, 200, body.encode(), complete=False),
        # C's line may have been in what was not read: unknown, never resubmitted.
        [accepted("7"), b_want or unread, unread],
    )


def test_a_single_line_read_only_in_part_applies_to_nobody() -> None:
    numbers = [A, B]
    unread = Want(Outcome.AMBIGUOUS, CODE_UNREADABLE_REPLY)
    for body in (b"ID:7\r\n", b"ID:7"):
        check(numbers, classify_reply(numbers, 200, body, complete=False), [unread, unread])


def test_no_numbers_gives_no_outcomes() -> None:
    assert classify_reply([], 200, b"ID:1") == []
    assert classify_reply([], 503, b"") == []


@pytest.mark.parametrize(
    ("sent", "answered"),
    [
        pytest.param("12025550143", "8612025550143", id="us-number-tail-of-cn-number"),
        pytest.param("447700900123", "39447700900123", id="gb-number-tail-of-it-number"),
    ],
)
def test_missing_international_number_not_matched_by_suffix_of_another(
    sent: str, answered: str
) -> None:
    numbers = [sent, answered]
    result = classify_reply(numbers, 200, f"{answered},ID:77\r\n".encode())
    check(numbers, result, [Want(Outcome.AMBIGUOUS, CODE_MISSING_FROM_REPLY), accepted("77")])


# --- classify_code, Outcome --------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        ("GATEWAY_ERROR", Outcome.TRANSIENT),
        ("INTERNAL_ERROR", Outcome.TRANSIENT),
        ("INVALID_NUMBER", Outcome.REJECTED),
        ("LOGIN_INVALID", Outcome.LOGIN_INVALID),
        ("INSUFFICIENT_CREDIT", Outcome.NO_CREDIT),
        ("NO_TO", Outcome.REQUEST_INVALID),
        ("NO_TEXT", Outcome.REQUEST_INVALID),
        ("NO_USERNAME", Outcome.REQUEST_INVALID),
        ("NO_PASSWORD", Outcome.REQUEST_INVALID),
        ("INVALID_REQUEST", Outcome.REQUEST_INVALID),
        ("SOMETHING_NEW", Outcome.REQUEST_INVALID),
        ("gateway_error", Outcome.REQUEST_INVALID),
    ],
)
def test_classify_code(code: str, outcome: Outcome) -> None:
    assert classify_code(code) is outcome


@pytest.mark.parametrize(
    ("outcome", "pauses", "final_failure"),
    [
        (Outcome.ACCEPTED, False, False),
        (Outcome.TRANSIENT, False, False),
        (Outcome.REJECTED, False, True),
        (Outcome.LOGIN_INVALID, True, True),
        (Outcome.REQUEST_INVALID, False, True),
        (Outcome.NO_CREDIT, True, False),
        (Outcome.AMBIGUOUS, False, False),
    ],
)
def test_outcome_policy_flags(outcome: Outcome, pauses: bool, final_failure: bool) -> None:
    assert outcome.pauses_dispatch is pauses
    assert outcome.is_final_failure is final_failure


# --- build_send_form, redact_form --------------------------------------------------------


def test_build_send_form_defaults_put_no_optional_params() -> None:
    form = build_send_form(username="user", password="pw", numbers=[A, B], text="Hello")
    assert form == {"username": "user", "password": "pw", "to": f"{A},{B}", "text": "Hello"}


def test_build_send_form_explicit_defaults_put_no_optional_params() -> None:
    form = build_send_form(
        username="user",
        password="pw",
        numbers=[A],
        text="Hello",
        sender=None,
        maxconcat=1,
        message_type=TYPE_TEXT,
        usercontext=None,
    )
    assert set(form) == {"username", "password", "to", "text"}


def test_build_send_form_with_options() -> None:
    form = build_send_form(
        username="user",
        password="pw",
        numbers=[A],
        text="Hello",
        sender="Acme",
        maxconcat=3,
        message_type=TYPE_VOICE,
        usercontext="job-17",
    )
    assert form == {
        "username": "user",
        "password": "pw",
        "to": A,
        "text": "Hello",
        "from": "Acme",
        "maxconcat": "3",
        "type": "6",
        "usercontext": "job-17",
    }


def test_build_send_form_takes_exactly_100_numbers() -> None:
    numbers = [f"4477009{i:05d}" for i in range(MAX_RECIPIENTS_PER_SUBMISSION)]
    form = build_send_form(username="u", password="p", numbers=numbers, text="x")
    assert form["to"].split(",") == numbers


@pytest.mark.parametrize(
    ("count", "match"),
    [
        pytest.param(0, "at least one", id="zero"),
        pytest.param(101, "at most 100", id="101"),
        pytest.param(250, "at most 100", id="250"),
    ],
)
def test_build_send_form_refuses_counts(count: int, match: str) -> None:
    numbers = [f"4477009{i:05d}" for i in range(count)]
    with pytest.raises(ValueError, match=match):
        build_send_form(username="u", password="p", numbers=numbers, text="x")


def test_redact_form_masks_the_password_only() -> None:
    form = build_send_form(username="user", password="s3cr3t-pw", numbers=[A], text="Hi")
    redacted = redact_form(form)
    assert redacted["password"] == REDACTED
    assert "s3cr3t-pw" not in repr(redacted)
    assert {k: v for k, v in redacted.items() if k != "password"} == {
        "username": "user",
        "to": A,
        "text": "Hi",
    }
    assert form["password"] == "s3cr3t-pw"  # the original is not modified


# --- parse_balance -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "want"),
    [
        pytest.param(200, b"BALANCE:100", BalanceReply(100.0, None), id="integer"),
        pytest.param(200, b"BALANCE:12.5\r\n", BalanceReply(12.5, None), id="decimal-crlf"),
        pytest.param(200, b"BALANCE:0", BalanceReply(0.0, None), id="zero"),
        pytest.param(200, b"BALANCE:-3", BalanceReply(-3.0, None), id="negative"),
        pytest.param(200, b"\xef\xbb\xbfBALANCE:7\n", BalanceReply(7.0, None), id="bom"),
        pytest.param(200, b"ERR:LOGIN_INVALID", BalanceReply(None, "LOGIN_INVALID"), id="err"),
        pytest.param(
            200, b"ERR:SOMETHING_NEW\r\n", BalanceReply(None, "SOMETHING_NEW"), id="err-2"
        ),
        pytest.param(200, b"", BalanceReply(None, CODE_UNREADABLE_REPLY), id="empty"),
        pytest.param(200, b"<html/>", BalanceReply(None, CODE_UNREADABLE_REPLY), id="html"),
        pytest.param(
            200, b"BALANCE:lots", BalanceReply(None, CODE_UNREADABLE_REPLY), id="not-a-number"
        ),
        pytest.param(503, b"BALANCE:100", BalanceReply(None, "HTTP_503"), id="http-503"),
        pytest.param(500, b"", BalanceReply(None, "HTTP_500"), id="http-500"),
    ],
)
def test_parse_balance(status: int, body: bytes, want: BalanceReply) -> None:
    assert parse_balance(status, body) == want


# --- properties --------------------------------------------------------------------------

GRAMMAR_ISH_LINE = st.one_of(
    st.from_regex(r"\+?[0-9]{1,22},(ID|ERR):[A-Z0-9_]{0,25}", fullmatch=True),
    st.from_regex(r"(ID|ERR|BALANCE):[^\r\n]{0,25}", fullmatch=True),
    st.text(max_size=30),
)
GRAMMAR_ISH_BODY = st.builds(
    lambda lines, sep, bom: (("\ufeff" if bom else "") + sep.join(lines)).encode(
        "utf-8", "surrogatepass"
    ),
    st.lists(GRAMMAR_ISH_LINE, max_size=8),
    st.sampled_from(["\r\n", "\n", "\r", " "]),
    st.booleans(),
)
NUMBERS = st.lists(
    st.one_of(st.from_regex(r"\+?0{0,2}[0-9]{1,15}", fullmatch=True), st.text(max_size=16)),
    max_size=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    numbers=NUMBERS,
    status=st.one_of(st.integers(), st.sampled_from([200, 200, 200, 429, 500, 503, 302, 404])),
    body=st.one_of(st.binary(max_size=300), GRAMMAR_ISH_BODY),
)
def test_classify_reply_never_raises_and_maps_every_number(
    numbers: list[str], status: int, body: bytes
) -> None:
    result = classify_reply(numbers, status, body)
    assert len(result) == len(numbers)
    for submitted, outcome in zip(numbers, result, strict=True):
        assert outcome.number == submitted
        assert isinstance(outcome.outcome, Outcome)
        if outcome.outcome is Outcome.ACCEPTED:
            assert outcome.gateway_message_id
            assert outcome.error_code is None
        else:
            assert outcome.gateway_message_id is None
            assert outcome.error_code


KNOWN_CODES = {
    "GATEWAY_ERROR": Outcome.TRANSIENT,
    "INTERNAL_ERROR": Outcome.TRANSIENT,
    "INVALID_NUMBER": Outcome.REJECTED,
    "LOGIN_INVALID": Outcome.LOGIN_INVALID,
    "INSUFFICIENT_CREDIT": Outcome.NO_CREDIT,
    "INVALID_REQUEST": Outcome.REQUEST_INVALID,
    "NO_TO": Outcome.REQUEST_INVALID,
    "NO_TEXT": Outcome.REQUEST_INVALID,
}
CODES = st.one_of(
    st.sampled_from(sorted(KNOWN_CODES)),
    st.from_regex(r"[A-Z][A-Z_]{0,19}", fullmatch=True).filter(lambda c: c not in KNOWN_CODES),
)
# International numbers of one length: distinct ones cannot end with each other's digits.
INTERNATIONAL = st.from_regex(r"[1-9][0-9]{11}", fullmatch=True)


@settings(max_examples=250, deadline=None)
@given(
    numbers=st.lists(INTERNATIONAL, min_size=1, max_size=40, unique=True),
    gateway_id=st.from_regex(r"[0-9]{1,30}", fullmatch=True),
    newline=st.sampled_from(["\r\n", "\n"]),
    final_newline=st.booleans(),
    data=st.data(),
)
def test_well_formed_multi_line_reply_maps_every_recipient_once(
    numbers: list[str], gateway_id: str, newline: str, final_newline: bool, data: st.DataObject
) -> None:
    expected: dict[str, Want] = {}
    lines: list[str] = []
    for number in numbers:
        if not data.draw(st.booleans(), label=f"answered {number}"):
            continue
        replied = number if data.draw(st.booleans()) else "+" + number
        if data.draw(st.booleans(), label="accepted"):
            lines.append(f"{replied},ID:{gateway_id}")
            expected[number] = accepted(gateway_id)
        else:
            code = data.draw(CODES, label="code")
            lines.append(f"{replied},ERR:{code}")
            expected[number] = Want(KNOWN_CODES.get(code, Outcome.REQUEST_INVALID), code)
    lines = data.draw(st.permutations(lines), label="line order")
    body = newline.join(lines) + (newline if final_newline else "")
    sent = [n if data.draw(st.booleans()) else "+" + n for n in numbers]

    result = classify_reply(sent, 200, body.encode())

    assert [r.number for r in result] == sent
    for number, outcome in zip(numbers, result, strict=True):
        if number in expected:
            want = expected[number]
            assert (outcome.outcome, outcome.error_code, outcome.gateway_message_id) == (
                want.outcome,
                want.code,
                want.gateway_id,
            )
            assert outcome.reply_number == number
        else:
            assert outcome.outcome is Outcome.AMBIGUOUS
            assert outcome.gateway_message_id is None
            # An empty reply is unreadable as a whole; otherwise the number is missing.
            assert outcome.error_code == (
                CODE_MISSING_FROM_REPLY if lines else CODE_UNREADABLE_REPLY
            )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(numbers=st.lists(INTERNATIONAL, min_size=1, max_size=8, unique=True), data=st.data())
def test_every_accepted_id_in_any_reply_shape_reaches_its_recipient(
    numbers: list[str], data: st.DataObject
) -> None:
    # Mixed with lines that break the grammar, duplicates, bare lines and odd
    # characters, every recipient with an ID: line is accepted with its first ID.
    shape = data.draw(reply_shapes(numbers), label="reply")

    result = classify_reply(numbers, 200, shape.body)

    assert [r.number for r in result] == numbers
    for number, outcome in zip(numbers, result, strict=True):
        if number in shape.ids:
            assert outcome.outcome is Outcome.ACCEPTED
            assert outcome.gateway_message_id == shape.ids[number]
        else:
            assert outcome.outcome is not Outcome.ACCEPTED
            assert outcome.gateway_message_id is None
