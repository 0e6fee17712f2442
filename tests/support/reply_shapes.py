"""Gateway reply shapes for property tests, and which ID each recipient must end with.

A shape is a reply body for a list of submitted numbers: the single-line form, or
lines per number (``ID:`` and ``ERR:``, numbers spelled as the gateway might,
duplicates, any order, CRLF, LF or CR, blank lines, a BOM) mixed with lines that
break the grammar (near misses and junk), bare lines and lines for numbers never
sent. IDs and codes are any characters a line can carry, of any length.

The model is deliberately small: a recipient with a well-formed ``ID:`` line must
end with the ID of its first one; the whole reply's single ``ID:`` line gives every
recipient its ID; nobody else is accepted.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import strategies as st

from dispatcher.gateway.client import Submission
from dispatcher.gateway.protocol import classify_reply, decode_body

KNOWN_CODES = [
    "GATEWAY_ERROR",
    "INTERNAL_ERROR",
    "INVALID_NUMBER",
    "LOGIN_INVALID",
    "INSUFFICIENT_CREDIT",
    "INVALID_REQUEST",
    "NO_TO",
    "NO_TEXT",
]

# What an ID or a code may hold: anything but whitespace and the comma that ends
# it, and NUL, which no database text takes (the reply decoder replaces it).
LINE_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters=",\x00").filter(
    lambda c: not c.isspace()
)
TOKENS = st.one_of(
    st.from_regex(r"[0-9]{1,40}", fullmatch=True),
    st.text(LINE_CHARS, min_size=1, max_size=24),
    # Longer than any bounded column (error codes 64, causes 500).
    st.builds(operator.mul, LINE_CHARS, st.integers(60, 1500)),
)
CODES = st.one_of(st.sampled_from(KNOWN_CODES), TOKENS)
INTERNATIONAL = st.from_regex(r"[1-9][0-9]{11}", fullmatch=True)
JUNK = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40).filter(
    lambda t: "ID:" not in t and "ERR:" not in t
)
NEAR_MISSES = [
    "{n},ID:",
    "{n},ERR:",
    "{n},ID:{t} {t}",
    "{n};ID:{t}",
    "{n},OK:{t}",
    "{n},ID:{t},{t}",
    "{n} ID:{t}",
]
SEPARATORS = st.sampled_from(["\r\n", "\n", "\r"])
PADDING = st.sampled_from(["", "", " ", "\t", "  "])


@dataclass(frozen=True)
class Shape:
    """A reply body and the gateway ID each submitted number must end with."""

    body: bytes
    ids: dict[str, str]
    """Submitted number to its ID; numbers absent must not be accepted."""


@dataclass(frozen=True)
class _Item:
    text: str
    number: str | None = None
    """The submitted number a well-formed numbered line is for."""
    message_id: str | None = None
    bare: bool = False
    """A well-formed line without a number."""


@st.composite
def _number_line(draw: st.DrawFn, number: str, *, submitted: bool) -> _Item:
    spelled = draw(st.sampled_from(["{n}", "+{n}", "00{n}"])).format(n=number)
    comma = draw(st.sampled_from([",", ",", " ,", ", ", " , ", "\t,"]))
    lead, trail = draw(PADDING), draw(PADDING)
    if draw(st.booleans()):
        token = draw(TOKENS)
        text = f"{lead}{spelled}{comma}ID:{token}{trail}"
        return _Item(text, number if submitted else None, token)
    code = draw(CODES)
    return _Item(f"{lead}{spelled}{comma}ERR:{code}{trail}", number if submitted else None)


@st.composite
def _bare_line(draw: st.DrawFn) -> _Item:
    if draw(st.booleans()):
        token = draw(TOKENS)
        return _Item(f"{draw(PADDING)}ID:{token}{draw(PADDING)}", message_id=token, bare=True)
    return _Item(f"{draw(PADDING)}ERR:{draw(CODES)}{draw(PADDING)}", bare=True)


def _join(draw: st.DrawFn, items: Sequence[_Item]) -> bytes:
    text = "\ufeff" if draw(st.booleans()) else ""
    for index, item in enumerate(items):
        if index:
            text += draw(SEPARATORS)
        text += item.text
    if draw(st.booleans()):
        text += draw(SEPARATORS)
    return text.encode("utf-8")


@st.composite
def reply_shapes(draw: st.DrawFn, numbers: Sequence[str]) -> Shape:
    """A reply to a submission of ``numbers`` (distinct international digits)."""
    if draw(st.integers(0, 4)) == 0:
        # The single-line form: the whole submission's fate, between blank lines.
        line = draw(_bare_line())
        blanks = [
            _Item(draw(st.sampled_from(["", " ", "\t"]))) for _ in range(draw(st.integers(0, 2)))
        ]
        body = _join(draw, [*blanks, line, *blanks])
        token = line.message_id
        return Shape(body, dict.fromkeys(numbers, token) if token is not None else {})

    items: list[_Item] = []
    for number in numbers:
        for _ in range(draw(st.integers(0, 3))):
            items.append(draw(_number_line(number, submitted=True)))
        if draw(st.integers(0, 4)) == 0:
            template = draw(st.sampled_from(NEAR_MISSES))
            items.append(_Item(template.format(n=number, t=draw(TOKENS))))
    extras = draw(st.lists(INTERNATIONAL.filter(lambda n: n not in numbers), max_size=2))
    items += [draw(_number_line(n, submitted=False)) for n in extras]
    items += [_Item(junk) for junk in draw(st.lists(JUNK, max_size=3))]
    items += draw(st.lists(_bare_line(), max_size=1))
    items += [_Item("") for _ in range(draw(st.integers(0, 2)))]
    items = draw(st.permutations(items))
    body = _join(draw, items)

    readable = [item for item in items if item.text.strip()]
    lines = [line for line in decode_body(body).splitlines() if line.strip()]
    if len(readable) == 1 and readable[0].bare and len(lines) == 1:
        token = readable[0].message_id
        return Shape(body, dict.fromkeys(numbers, token) if token is not None else {})
    ids: dict[str, str] = {}
    for item in items:
        if item.number is not None and item.message_id is not None:
            ids.setdefault(item.number, item.message_id)
    return Shape(body, ids)


def reply_submission(numbers: Sequence[str], body: bytes, http_status: int = 200) -> Submission:
    """The Submission the gateway client makes of this reply (its host and latency aside)."""
    return Submission(
        host="gateway.test:443",
        numbers=list(numbers),
        outcomes=classify_reply(numbers, http_status, body),
        http_status=http_status,
        raw_reply=decode_body(body),
        latency_ms=12.5,
    )
