"""The gateway's HTTP protocol as pure functions: build a request, classify a reply.

No I/O happens here. ``classify_reply`` takes the HTTP status and the raw body bytes
of one submission and returns exactly one ``RecipientOutcome`` per submitted number,
in submission order, following the outcome policy of docs/design.md section 2. It never
raises on any input, so it can be fuzzed.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from dispatcher.domain.message import TYPE_TEXT

SEND_PATH = "/sendmsg.aspx"
BALANCE_PATH = "/getbalance.aspx"
MAX_RECIPIENTS_PER_SUBMISSION = 100
REDACTED = "***"


TRANSIENT_CODES = frozenset({"GATEWAY_ERROR", "INTERNAL_ERROR"})
# 408: the server gave up waiting for our request before it was complete.
TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 503})
REQUEST_ERROR_CODES = frozenset({"INVALID_REQUEST"})  # plus every NO_<PARAM>

# Pseudo error codes for outcomes the gateway did not name itself.
CODE_MISSING_FROM_REPLY = "MISSING_FROM_REPLY"
CODE_UNREADABLE_REPLY = "UNREADABLE_REPLY"


class Outcome(enum.StrEnum):
    """What one recipient's submission came to, per the outcome policy."""

    ACCEPTED = "accepted"
    """The gateway took it and gave a message ID: recipient `sent`."""
    TRANSIENT = "transient"
    """Nothing was sent and a later try may work: retry with backoff."""
    REJECTED = "rejected"
    """This recipient cannot be routed (INVALID_NUMBER): `failed`, never retried."""
    LOGIN_INVALID = "login_invalid"
    """Credentials refused: `failed`, and dispatch pauses."""
    REQUEST_INVALID = "request_invalid"
    """Our request was wrong (NO_*, INVALID_REQUEST, unknown code): `failed`, alert."""
    NO_CREDIT = "no_credit"
    """Account empty: nothing fails; dispatch pauses and the work waits."""
    AMBIGUOUS = "ambiguous"
    """The gateway may have sent it: `unknown`, never resubmitted automatically."""

    @property
    def pauses_dispatch(self) -> bool:
        """True for outcomes that mean every other submission would fail the same way."""
        return self in (Outcome.LOGIN_INVALID, Outcome.NO_CREDIT)

    @property
    def is_final_failure(self) -> bool:
        """True for outcomes that fail the recipient at once."""
        return self in (Outcome.REJECTED, Outcome.LOGIN_INVALID, Outcome.REQUEST_INVALID)


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    """One submitted recipient's classified outcome."""

    number: str
    outcome: Outcome
    gateway_message_id: str | None = None
    error_code: str | None = None
    reply_number: str | None = None


def classify_code(code: str) -> Outcome:
    """Map an ``ERR:<CODE>`` code to its outcome; unknown codes are request errors."""
    if code in TRANSIENT_CODES:
        return Outcome.TRANSIENT
    if code == "INVALID_NUMBER":
        return Outcome.REJECTED
    if code == "LOGIN_INVALID":
        return Outcome.LOGIN_INVALID
    if code == "INSUFFICIENT_CREDIT":
        return Outcome.NO_CREDIT
    return Outcome.REQUEST_INVALID


def build_send_form(
    *,
    username: str,
    password: str,
    numbers: Sequence[str],
    text: str,
    sender: str | None = None,
    maxconcat: int = 1,
    message_type: int = TYPE_TEXT,
    usercontext: str | None = None,
) -> dict[str, str]:
    """The POST form of one ``sendmsg.aspx`` submission."""
    if not numbers:
        raise ValueError("a submission needs at least one number")
    if len(numbers) > MAX_RECIPIENTS_PER_SUBMISSION:
        raise ValueError(
            f"a submission takes at most {MAX_RECIPIENTS_PER_SUBMISSION} numbers, "
            f"got {len(numbers)}"
        )
    form = {
        "username": username,
        "password": password,
        "to": ",".join(numbers),
        "text": text,
    }
    if sender:
        form["from"] = sender
    if maxconcat != 1:
        form["maxconcat"] = str(maxconcat)
    if message_type != TYPE_TEXT:
        form["type"] = str(message_type)
    if usercontext:
        form["usercontext"] = usercontext
    return form


def redact_form(form: Mapping[str, str]) -> dict[str, str]:
    """A copy of a request form that is safe to log or store: the password masked."""
    return {k: (REDACTED if k == "password" else v) for k, v in form.items()}


_LINE = re.compile(
    r"""^(?:(?P<number>\+?[0-9]{1,20})\s*,\s*)?
        (?:ID:(?P<id>[^\s,]+)|ERR:(?P<code>[^\s,]+))$""",
    re.VERBOSE,
)
_BALANCE = re.compile(r"^BALANCE:\s*(?P<n>-?[0-9]+(?:\.[0-9]+)?)$")
_ERR = re.compile(r"^ERR:(?P<code>[^\s,]+)$")


class _Line(NamedTuple):
    # A tuple, not a frozen dataclass: a reply has a line per recipient, and a frozen
    # dataclass's __init__ cost a third of parsing one.
    number: str | None
    message_id: str | None
    code: str | None


def decode_body(body: bytes) -> str:
    """Decode a reply body for parsing or storage; never raises.

    NUL becomes U+FFFD like any other unreadable byte: PostgreSQL text cannot hold
    it, and a reply that cannot be stored must not stall the recording of an attempt.
    """
    return body.decode("utf-8", errors="replace").removeprefix("\ufeff").replace("\x00", "\ufffd")


@dataclass(frozen=True, slots=True)
class _Reply:
    lines: list[_Line]
    """The lines that follow the grammar, in reply order."""
    unreadable: int
    """Non-blank lines that do not."""


def _reply_number(raw: str) -> str:
    # As the gateway writes numbers: international digits. A ``+`` or ``00``
    # international prefix is dropped so every spelling meets the same recipient.
    digits = raw.lstrip("+")
    return digits[2:] if digits.startswith("00") and len(digits) > 2 else digits


def _parse_lines(text: str, *, complete: bool = True) -> _Reply:
    """Every non-blank line parsed; one outside the grammar is counted, not fatal.

    ``complete=False``: the reply went on past ``text``. Its last line, unless it
    ended, is not read (an ID cut short would name another message), and what was
    not read counts as one unreadable line: it may have been anyone's.
    """
    parsed: list[_Line] = []
    unreadable = 0
    raw_lines = text.splitlines(keepends=True)
    if not complete:
        unreadable += 1
        if raw_lines and raw_lines[-1] == raw_lines[-1].splitlines()[0]:
            raw_lines.pop()
    for raw in raw_lines:
        line = raw.strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            unreadable += 1
            continue
        number = match["number"]
        parsed.append(
            _Line(
                number=_reply_number(number) if number else None,
                message_id=match["id"],
                code=match["code"],
            )
        )
    return _Reply(parsed, unreadable)


def _line_outcome(number: str, line: _Line) -> RecipientOutcome:
    if line.message_id is not None:
        return RecipientOutcome(
            number, Outcome.ACCEPTED, gateway_message_id=line.message_id, reply_number=line.number
        )
    code = line.code or CODE_UNREADABLE_REPLY
    return RecipientOutcome(number, classify_code(code), error_code=code, reply_number=line.number)


def _all(numbers: Sequence[str], outcome: Outcome, code: str | None) -> list[RecipientOutcome]:
    return [RecipientOutcome(n, outcome, error_code=code) for n in numbers]


def _digits(number: str) -> str:
    # Numbers arrive as E.164 almost always: the same result without a generator
    # per character (a fifth of a dispatch thread's CPU at 100 recipients a batch).
    if number.isdigit():
        return number
    if number[:1] == "+" and number[1:].isdigit():
        return number[1:]
    return "".join(ch for ch in number if ch.isdigit())


def _match_key_candidates(digits: str) -> list[str]:
    """Ways the gateway may have rewritten a number we sent, most exact first.

    We send international digits, but a caller may have sent national ones; the
    gateway replies in international format (``07700900123`` becomes
    ``447700900123``). The trailing national significant digits identify a number
    across both forms.
    """
    candidates = [digits]
    if digits.startswith("00"):
        candidates.append(digits[2:])
    if digits.startswith("0"):
        candidates.append(digits.lstrip("0"))
    return candidates


def _assign(
    numbers: Sequence[str], lines: list[_Line], *, unmatched_code: str
) -> list[RecipientOutcome]:
    by_number: dict[str, _Line] = {}
    for line in lines:
        if line.number is None:
            continue
        seen = by_number.get(line.number)
        # The gateway removes duplicates, so a second line for a number is a malformed
        # reply, not a second outcome: the first line wins, except that an ``ID:``
        # beats an ``ERR:``. The gateway may have sent it, and an accepted ID that
        # arrived is kept rather than a failure an operator might retry.
        if seen is None or (seen.message_id is None and line.message_id is not None):
            by_number[line.number] = line
    reply_numbers = list(by_number)
    outcomes: list[RecipientOutcome] = []
    for number in numbers:
        digits = _digits(number)
        found = by_number.get(digits)  # As sent, nearly always: the first candidate.
        if found is None:
            for candidate in _match_key_candidates(digits):
                if candidate in by_number:
                    found = by_number[candidate]
                    break
        national = number.lstrip().startswith("0") and not number.lstrip().startswith("00")
        if found is None and national and len(digits) >= 7:
            # National form sent, international form replied: match on the tail,
            # but only when exactly one reply number ends that way. A number sent in
            # international form must match exactly, or a missing recipient could
            # borrow the line of another whose number ends in its digits.
            tail = digits.lstrip("0")
            ends = [r for r in reply_numbers if r.endswith(tail)]
            if len(ends) == 1:
                found = by_number[ends[0]]
        if found is None:
            outcomes.append(RecipientOutcome(number, Outcome.AMBIGUOUS, error_code=unmatched_code))
        else:
            outcomes.append(_line_outcome(number, found))
    return outcomes


def classify_reply(
    numbers: Sequence[str], http_status: int, body: bytes, *, complete: bool = True
) -> list[RecipientOutcome]:
    """Classify one submission's reply into one outcome per submitted number.

    ``numbers`` are the numbers as submitted, in order; the result has the same
    length and order. Duplicated numbers each get the outcome of their one reply line.
    Codes and IDs are returned verbatim, whatever their length or characters; fitting
    them to the database is the recorder's business. ``complete=False``: ``body`` is
    only the start of the reply (it was longer than we read); the recipients of its
    complete lines take their outcomes, the others are unknown.
    """
    if http_status in TRANSIENT_HTTP_STATUSES:
        return _all(numbers, Outcome.TRANSIENT, f"HTTP_{http_status}")
    if http_status >= 500:
        # The gateway failed somewhere after reading the request: it may have sent.
        return _all(numbers, Outcome.AMBIGUOUS, f"HTTP_{http_status}")
    if http_status != 200:
        # A redirect we do not follow, or a 4xx: our request did not reach the send
        # logic, and the same request would get the same answer.
        return _all(numbers, Outcome.REQUEST_INVALID, f"HTTP_{http_status}")

    reply = _parse_lines(decode_body(body), complete=complete)
    lines = reply.lines
    if not lines:
        return _all(numbers, Outcome.AMBIGUOUS, CODE_UNREADABLE_REPLY)
    if len(lines) == 1 and lines[0].number is None and not reply.unreadable:
        # The single-line form: one recipient, or the whole submission's fate.
        return [_line_outcome(n, lines[0]) for n in numbers]
    # Each recipient takes its own line, so one line outside the grammar costs only
    # the recipients without a readable line of their own, never the accepted IDs
    # on the others. A bare line among others names nobody, and an unreadable line
    # may have been anyone's: a recipient without a line is then unreadable, not
    # merely missing; either way `unknown`, never resubmitted.
    doubtful = reply.unreadable > 0 or any(line.number is None for line in lines)
    return _assign(
        numbers,
        lines,
        unmatched_code=CODE_UNREADABLE_REPLY if doubtful else CODE_MISSING_FROM_REPLY,
    )


@dataclass(frozen=True, slots=True)
class BalanceReply:
    """A parsed ``getbalance.aspx`` reply: a balance, or an error code."""

    balance: float | None
    error_code: str | None


def parse_balance(http_status: int, body: bytes) -> BalanceReply:
    """Parse a balance reply; an unreadable one comes back as UNREADABLE_REPLY."""
    if http_status != 200:
        return BalanceReply(None, f"HTTP_{http_status}")
    text = decode_body(body).strip()
    if (match := _BALANCE.match(text)) is not None:
        return BalanceReply(float(match["n"]), None)
    if (match := _ERR.match(text)) is not None:
        return BalanceReply(None, match["code"])
    return BalanceReply(None, CODE_UNREADABLE_REPLY)
