"""Message text: GSM 03.38 or UCS-2, and how many SMS parts it takes.

A text in the GSM 7-bit default alphabet fits 160 septets in one SMS, or 153 per
part when concatenated; characters of the extension table (``^ { } [ ] ~ | € \\``
and form feed) take two septets each. Anything else goes as UCS-2: 70 UTF-16
code units in one SMS, 67 per part, with characters outside the Basic
Multilingual Plane (most emoji) taking two units. An escape pair or a surrogate
pair is never split across parts, so a part may hold one unit less than its size.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dispatcher.domain.storable import check_storable
from dispatcher.errors import InvalidOptionError, InvalidTextError

MAXCONCAT_MIN = 1
# Concatenated SMS number their parts in one byte, so 255 is the hard ceiling.
MAXCONCAT_MAX = 255

GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = frozenset("^{}\\[~]|€\f")


class Encoding(enum.StrEnum):
    """How the text travels over the air."""

    GSM7 = "GSM-7"
    UCS2 = "UCS-2"


_SINGLE = {Encoding.GSM7: 160, Encoding.UCS2: 70}
_PER_PART = {Encoding.GSM7: 153, Encoding.UCS2: 67}


@dataclass(frozen=True, slots=True)
class TextInfo:
    """A text's encoding, its length in encoding units, and its SMS part count."""

    encoding: Encoding
    units: int
    parts: int
    characters: int


def _unit_widths(text: str) -> tuple[Encoding, list[int]]:
    if all(ch in GSM_BASIC or ch in GSM_EXTENSION for ch in text):
        return Encoding.GSM7, [2 if ch in GSM_EXTENSION else 1 for ch in text]
    return Encoding.UCS2, [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def analyse(text: str) -> TextInfo:
    """Encoding, units and parts of a text (an empty text counts as one part)."""
    encoding, widths = _unit_widths(text)
    units = sum(widths)
    if units <= _SINGLE[encoding]:
        return TextInfo(encoding, units, 1, len(text))
    size = _PER_PART[encoding]
    parts, used = 1, 0
    for width in widths:
        if used + width > size:
            parts += 1
            used = 0
        used += width
    return TextInfo(encoding, units, parts, len(text))


def check_maxconcat(maxconcat: object) -> int:
    """maxconcat as an int in range, or InvalidOptionError."""
    if isinstance(maxconcat, bool) or not isinstance(maxconcat, int):
        raise InvalidOptionError(f"maxconcat must be an integer, not {type(maxconcat).__name__}")
    if not MAXCONCAT_MIN <= maxconcat <= MAXCONCAT_MAX:
        raise InvalidOptionError(
            f"maxconcat must be between {MAXCONCAT_MIN} and {MAXCONCAT_MAX}, got {maxconcat}"
        )
    return maxconcat


def check_text(text: object, maxconcat: int) -> TextInfo:
    """The text's TextInfo, or InvalidTextError when it is empty or too long."""
    if not isinstance(text, str):
        raise InvalidTextError(f"text must be a string, not {type(text).__name__}")
    if not text.strip():
        raise InvalidTextError("text is empty")
    check_storable(text, "text", error=InvalidTextError)
    info = analyse(text)
    if info.parts > maxconcat:
        raise InvalidTextError(
            f"text needs {info.parts} parts ({info.units} {info.encoding} units, "
            f"{info.characters} characters) but maxconcat is {maxconcat}; "
            f"raise maxconcat to {info.parts} or shorten the text"
        )
    return info
