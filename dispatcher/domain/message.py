"""A message's options, checked before anything is written: kind, sender, priority, timing."""

from __future__ import annotations

import datetime as dt
import enum
import math
import re
from collections.abc import Collection

from dispatcher.domain.times import to_utc
from dispatcher.errors import InvalidOptionError, InvalidSenderError, SenderNotAllowedError

# The gateway's ``type`` parameter: 1 a text message, 6 a voice call reading it out.
TYPE_TEXT = 1
TYPE_VOICE = 6

# A validity longer than this is a mistake in units, not a wish.
MAX_VALIDITY_S = 30 * 86400.0


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


def sender_for_key(
    sender: str | None, default: str | None, allowed: Collection[str] | None
) -> str | None:
    """The sender a request goes out with, or SenderNotAllowedError.

    ``sender`` is the checked sender asked for (None: none asked), ``default`` the
    configured default sender, ``allowed`` the senders granted to the API key
    asking (None: no key, any valid sender). A key may use its grants and the
    default, nothing else: a key without grants cannot pose as another brand. With
    none asked, the default is used, unless the key has grants and the default is
    not among them: then its first grant, as a key created for one brand expects.
    """
    if allowed is None:
        return sender if sender is not None else default
    if sender is None:
        if not allowed or default in allowed:
            return default
        return next(iter(allowed))
    if sender in allowed or sender == default:
        return sender
    usable = list(dict.fromkeys([*allowed, *([default] if default is not None else [])]))
    if usable:
        choices = f"it may use {', '.join(usable)}"
    else:
        choices = "it may use none but the gateway account's default (send no sender)"
    raise SenderNotAllowedError(
        f"sender {sender!r} is not granted to this key; {choices}; "
        "an operator grants senders with `dispatcher keys update NAME --grant-sender`"
    )


MAX_SCHEDULE_AHEAD = dt.timedelta(days=366)
"""How far ahead a job may be scheduled."""

SEND_AT_TOLERANCE = dt.timedelta(minutes=5)
"""How far in the past a ``send_at`` may be and still be sent (at once): room for
clock skew between a producer and the dispatcher, not for a time long gone, which
is a mistake (a wrong date or zone) that would send at once what was meant for later."""


def check_send_at(send_at: object) -> dt.datetime | None:
    """``send_at`` in UTC, or None; InvalidOptionError for a naive, non-datetime or
    out-of-range value. ``check_send_at_not_past`` is the other half.

    A time without a zone is refused rather than guessed: read as local time or
    as UTC, one of the two guesses sends an SMS hours early or late.
    """
    if send_at is None:
        return None
    utc = to_utc(send_at, "send_at", assume_utc=False)
    # A bound keeps the expiry arithmetic (send_at + validity) in range, and a send
    # time years ahead is a typo, not a plan.
    latest = dt.datetime.now(dt.UTC) + MAX_SCHEDULE_AHEAD
    if utc > latest:
        raise InvalidOptionError(
            f"send_at may be at most {MAX_SCHEDULE_AHEAD.days} days ahead, got {utc.isoformat()}"
        )
    return utc


def check_send_at_not_past(send_at: dt.datetime | None, now: dt.datetime) -> None:
    """InvalidOptionError when ``send_at`` (UTC) is more than ``SEND_AT_TOLERANCE``
    before ``now``."""
    if send_at is not None and send_at < now - SEND_AT_TOLERANCE:
        minutes = SEND_AT_TOLERANCE.total_seconds() / 60
        raise InvalidOptionError(
            f"send_at {send_at.isoformat()} is in the past (more than {minutes:g} minutes "
            "before now): leave it out to send at once"
        )


def check_validity(valid_for_s: object) -> float | None:
    """``valid_for_s`` as seconds, or None; InvalidOptionError when not a positive number."""
    if valid_for_s is None:
        return None
    if isinstance(valid_for_s, bool) or not isinstance(valid_for_s, int | float):
        raise InvalidOptionError(f"valid_for_s must be a number, not {type(valid_for_s).__name__}")
    value = float(valid_for_s)
    if not math.isfinite(value) or not 0 < value <= MAX_VALIDITY_S:
        raise InvalidOptionError(
            f"valid_for_s must be more than 0 and at most {MAX_VALIDITY_S:g} s, got {valid_for_s}"
        )
    return value
