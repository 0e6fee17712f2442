"""A value in every encoding a gateway's echo may carry, and every decoding of a text.

The decodings are the standard library's own (``unquote``, ``unquote_plus``,
``html.unescape``, ``json.loads``), independent of ``dispatcher.decodings``, so a
test that finds no secret in any of them does not take the redactor's word for it.
"""

from __future__ import annotations

import html
import html.entities
import json
import re
from collections.abc import Callable
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlencode


def _json_unescape(text: str) -> str | None:
    try:
        decoded = json.loads(f'"{text}"')
    except ValueError:
        return None
    return decoded if isinstance(decoded, str) else None


_DECODERS: tuple[Callable[[str], str | None], ...] = (
    unquote,
    unquote_plus,
    html.unescape,
    _json_unescape,
)


def every_decoding(text: str, depth: int = 2) -> set[str]:
    """``text`` and what the standard library decodes it to, ``depth`` decoders deep."""
    found = {text}
    layer = {text}
    for _ in range(depth):
        following = {d for t in layer for f in _DECODERS if (d := f(t)) is not None} - found
        found |= following
        layer = following
    return found


def _percent_all(text: str, *, upper: bool) -> str:
    return "".join(f"%{b:02X}" if upper else f"%{b:02x}" for b in text.encode())


def _json_all(text: str) -> str:
    units = text.encode("utf-16-be")
    return "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))


def _named(text: str) -> str:
    return "".join(
        f"&{html.entities.codepoint2name[ord(ch)]};"
        if ord(ch) in html.entities.codepoint2name
        else ch
        for ch in text
    )


WHOLE_ENCODINGS: dict[str, Callable[[str], str]] = {
    "plain": lambda s: s,
    "percent": lambda s: quote(s, safe=""),
    "percent-lower": lambda s: re.sub(
        "%[0-9A-F]{2}", lambda m: m.group().lower(), quote(s, safe="")
    ),
    "percent-every-byte": lambda s: _percent_all(s, upper=False),
    "plus": lambda s: quote_plus(s, safe=""),
    "form": lambda s: urlencode({"password": s})[len("password=") :],
    "html-escape": html.escape,
    "html-decimal": lambda s: "".join(f"&#{ord(ch)};" for ch in s),
    "html-hex": lambda s: "".join(f"&#x{ord(ch):X};" for ch in s),
    "html-named": _named,
    "json": lambda s: json.dumps(s)[1:-1],
    "json-ascii": lambda s: json.dumps(s, ensure_ascii=True)[1:-1].replace("/", "\\/"),
    "json-every-char": _json_all,
}

CHAR_ENCODINGS: dict[str, Callable[[str], str]] = {
    "plain": lambda ch: ch,
    "percent-upper": lambda ch: _percent_all(ch, upper=True),
    "percent-lower": lambda ch: _percent_all(ch, upper=False),
    "plus": lambda ch: "+" if ch == " " else quote_plus(ch, safe=""),
    "html-decimal": lambda ch: f"&#{ord(ch)};",
    "html-hex": lambda ch: f"&#x{ord(ch):x};",
    "html-named": _named,
    "json": _json_all,
    "json-slash": lambda ch: "\\/" if ch == "/" else ch,
}
