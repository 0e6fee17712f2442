"""A message's options, checked before anything is written: kind and sender."""

from __future__ import annotations

import enum
import re

from dispatcher.errors import InvalidOptionError, InvalidSenderError
from dispatcher.gateway.protocol import TYPE_TEXT, TYPE_VOICE


class Kind(enum.StrEnum):
    """What the gateway delivers: a text message or a voice call reading it out."""

    TEXT = "text"
    VOICE = "voice"

    @property
    def gateway_type(self) -> int:
        """The gateway's ``type`` parameter for this kind."""
        return TYPE_VOICE if self is Kind.VOICE else TYPE_TEXT


_ALPHANUMERIC_SENDER = re.compile(r"^[A-Za-z0-9 ]{1,11}$")
_NUMERIC_SENDER = re.compile(r"^\+?[0-9]{1,15}$")


def check_kind(kind: object) -> Kind:
    """The Kind named by ``kind``, or InvalidOptionError listing the choices."""
    if isinstance(kind, Kind):
        return kind
    if isinstance(kind, str):
        try:
            return Kind(kind.strip().lower())
        except ValueError:
            pass
    choices = ", ".join(k.value for k in Kind)
    raise InvalidOptionError(f"kind must be one of {choices}, got {kind!r}")


def check_sender(sender: object) -> str | None:
    """The sender as given, or None, or InvalidSenderError.

    Networks accept an alphanumeric sender of up to 11 characters, or a number of
    up to 15 digits; anything else is rewritten or dropped somewhere on the way.
    """
    if sender is None:
        return None
    if not isinstance(sender, str):
        raise InvalidSenderError(f"sender must be a string, not {type(sender).__name__}")
    value = sender.strip()
    if not value:
        return None
    if value.lstrip("+").isdigit():
        if _NUMERIC_SENDER.match(value):
            return value.lstrip("+")
        raise InvalidSenderError(f"a numeric sender has at most 15 digits, got {sender!r}")
    if _ALPHANUMERIC_SENDER.match(value) and any(ch.isalpha() for ch in value):
        return value
    raise InvalidSenderError(
        f"sender must be up to 11 letters, digits or spaces, or up to 15 digits; got {sender!r}"
    )
