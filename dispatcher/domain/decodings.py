"""Every way a text may have encoded what it echoes, undone, with a map back to the text.

A gateway, or a proxy or framework in front of it, may echo our request back in
an error page: percent-encoded (in either case, ``+`` for a space), HTML-escaped
(decimal or hex character references, named entities), JSON-escaped
(``\\u002f``, ``\\/``), or one inside another (a JSON string holding a form).
Enumerating the encodings of a secret misses the mixtures; instead
``candidates`` decodes the text itself in each scheme, and again in each scheme,
a few layers deep, and redaction searches every decoding. Each decoded character
remembers the span of the original text it came from, so a match found in any
decoding is masked where it stands in the original.

Each scheme decodes exactly as the standard library would (``unquote``,
``unquote_plus``, ``html.unescape``, ``json.loads`` of a string), so a value the
library can recover from a text is found here too.
"""

from __future__ import annotations

import codecs
import html
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Span = tuple[int, int]
Piece = tuple[str, int, int]
"""Decoded characters and the span, relative to a match, of the text they came from."""

MAX_DEPTH = 4
"""Layers of decoding: enough for ``+`` and percent and HTML and JSON in one echo."""
MAX_CANDIDATES = 64
"""Decodings kept at most, shallowest first, so a hostile reply costs bounded time."""


@dataclass(frozen=True, slots=True)
class Decoding:
    """A decoded text and, for each of its characters, its span in the original."""

    text: str
    origin: list[Span] | None
    """None for the text itself, whose every character is its own span."""

    def span(self, start: int, end: int) -> Span:
        """The span of the original text that ``text[start:end]`` (non-empty) came from."""
        if self.origin is None:
            return start, end
        return self.origin[start][0], self.origin[end - 1][1]

    def spans(self) -> list[Span]:
        """Each character's span of the original text."""
        if self.origin is None:
            return [(i, i + 1) for i in range(len(self.text))]
        return self.origin


def _substitute(
    source: Decoding, pattern: re.Pattern[str], decode: Callable[[str], list[Piece]]
) -> Decoding:
    """``source`` with each match of ``pattern`` replaced by its decoded pieces."""
    parts: list[str] = []
    origin: list[Span] = []
    source_origin = source.spans()
    at = 0
    for match in pattern.finditer(source.text):
        start = match.start()
        parts.append(source.text[at:start])
        origin.extend(source_origin[at:start])
        for chars, begin, end in decode(match.group()):
            parts.append(chars)
            span = (source_origin[start + begin][0], source_origin[start + end - 1][1])
            origin.extend([span] * len(chars))
        at = match.end()
    parts.append(source.text[at:])
    origin.extend(source_origin[at:])
    return Decoding("".join(parts), origin)


_PERCENT = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


def _percent(token: str) -> list[Piece]:
    # Bytes in, UTF-8 out with U+FFFD for what does not decode, as unquote() does;
    # fed a byte at a time, so each character is charged to the escapes it came from.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces: list[Piece] = []
    begin = 0
    for index in range(0, len(token), 3):
        chars = decoder.decode(bytes([int(token[index + 1 : index + 3], 16)]))
        if chars:
            pieces.append((chars, begin, index + 3))
            begin = index + 3
    tail = decoder.decode(b"", final=True)
    if tail:
        pieces.append((tail, begin, len(token)))
    return pieces


# html.unescape's own pattern, so each match decodes exactly as it would there.
_HTML = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")


def _html(token: str) -> list[Piece]:
    decoded = html.unescape(token)
    if decoded == token:
        return [(ch, i, i + 1) for i, ch in enumerate(token)]
    return [(decoded, 0, len(token))]


_JSON = re.compile(r"(?:\\u[0-9a-fA-F]{4})+|\\[\"\\/bfnrt]")
_JSON_SIMPLE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _json(token: str) -> list[Piece]:
    if not token.startswith("\\u"):
        return [(_JSON_SIMPLE.get(token[1], token[1]), 0, 2)]
    units = [int(token[i + 2 : i + 6], 16) for i in range(0, len(token), 6)]
    pieces: list[Piece] = []
    index = 0
    while index < len(units):
        unit = units[index]
        following = units[index + 1] if index + 1 < len(units) else None
        if 0xD800 <= unit < 0xDC00 and following is not None and 0xDC00 <= following < 0xE000:
            # A surrogate pair is one character, as json.loads reads it.
            code = 0x10000 + ((unit - 0xD800) << 10) + (following - 0xDC00)
            pieces.append((chr(code), index * 6, index * 6 + 12))
            index += 2
        else:
            pieces.append((chr(unit), index * 6, index * 6 + 6))
            index += 1
    return pieces


_PLUS = re.compile(r"\+")


def _plus(_token: str) -> list[Piece]:
    return [(" ", 0, 1)]


_SCHEMES: tuple[tuple[str, re.Pattern[str], Callable[[str], list[Piece]]], ...] = (
    ("%", _PERCENT, _percent),
    ("+", _PLUS, _plus),
    ("&", _HTML, _html),
    ("\\", _JSON, _json),
)


def candidates(text: str) -> Iterator[Decoding]:
    """``text`` itself, then its decodings in every scheme and order, shallowest first.

    Only decodings that change the text are kept, each distinct text once, at most
    ``MAX_CANDIDATES`` of them and ``MAX_DEPTH`` layers deep.
    """
    first = Decoding(text, None)
    yield first
    seen = {text}
    layer = [first]
    for _depth in range(MAX_DEPTH):
        following: list[Decoding] = []
        for source in layer:
            for trigger, pattern, decode in _SCHEMES:
                if trigger not in source.text:
                    continue
                decoded = _substitute(source, pattern, decode)
                if decoded.text in seen:
                    continue
                if len(seen) >= MAX_CANDIDATES:
                    return
                seen.add(decoded.text)
                following.append(decoded)
                yield decoded
        if not following:
            return
        layer = following
