"""The send request: every producer path builds this one value, checked once.

``send()``, ``dispatcher send``, ``POST /v1/jobs`` and the drop-in endpoint each
turn their own input into a ``SendRequest`` with ``SendRequest.build`` and hand it
to the enqueue service. The options a producer may give are listed once, in
``SendOptions``, so a new option is added in one place and every limit (the
recipient cap included) applies to every path alike (docs/design.md section 5).

What needs the outside world stays in the enqueue service: the default sender and
an API key's granted senders, the callback URL's address check (DNS), the numbers'
normalisation with the default region, and the idempotent replay.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TypedDict, Unpack

from dispatcher.domain.lanes import Priority, check_priority
from dispatcher.domain.message import (
    Kind,
    check_kind,
    check_send_at,
    check_sender,
    check_validity,
)
from dispatcher.domain.parts import TextInfo, check_maxconcat, check_text
from dispatcher.domain.storable import check_storable
from dispatcher.errors import InvalidOptionError, NoRecipientsError, TooManyRecipientsError

MAX_LABEL_LENGTH = 200
"""Longest reference or idempotency key."""


class SendOptions(TypedDict, total=False):
    """The options of a send request, as a producer gives them (all optional)."""

    sender: str | None
    maxconcat: int
    kind: str | Kind
    send_at: dt.datetime | None
    priority: str | Priority
    valid_for_s: float | None
    idempotency_key: str | None
    reference: str | None
    callback_url: str | None


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A send request whose every field has been checked; nothing written yet."""

    numbers: tuple[object, ...]
    """The numbers as given (a comma-separated string is split); normalised later."""
    text: str
    info: TextInfo
    """The text's encoding and part count."""
    sender: str | None
    """The sender asked for (checked), before the default and a key's grants apply."""
    maxconcat: int
    kind: Kind
    send_at: dt.datetime | None
    priority: Priority
    valid_for_s: float | None
    """The validity asked for; None: the configured default applies."""
    idempotency_key: str | None
    reference: str | None
    callback_url: str | None
    """As given; the enqueue service checks its address before anything is written."""

    @classmethod
    def build(
        cls,
        to: str | Iterable[object],
        text: str,
        *,
        max_recipients: int | None = None,
        **options: Unpack[SendOptions],
    ) -> SendRequest:
        """Check ``to``, ``text`` and the options; raise a ValidationError naming the
        first wrong one. ``max_recipients`` caps how many numbers one request names
        (``DISPATCHER_MAX_RECIPIENTS_PER_JOB``)."""
        maxconcat = check_maxconcat(options.get("maxconcat", 1))
        kind = check_kind(options.get("kind", Kind.TEXT))
        sender = check_sender(options.get("sender"))
        priority = check_priority(options.get("priority", Priority.NORMAL))
        send_at = check_send_at(options.get("send_at"))
        valid_for_s = check_validity(options.get("valid_for_s"))
        info = check_text(text, maxconcat)
        reference = check_label("reference", options.get("reference"))
        callback_url = options.get("callback_url")
        idempotency_key = check_label("idempotency_key", options.get("idempotency_key"))
        numbers = _numbers(to)
        if max_recipients is not None and len(numbers) > max_recipients:
            raise TooManyRecipientsError(
                f"{len(numbers)} numbers in one job; at most {max_recipients} "
                "(DISPATCHER_MAX_RECIPIENTS_PER_JOB): split the request"
            )
        return cls(
            numbers=numbers,
            text=text,
            info=info,
            sender=sender,
            maxconcat=maxconcat,
            kind=kind,
            send_at=send_at,
            priority=priority,
            valid_for_s=valid_for_s,
            idempotency_key=idempotency_key,
            reference=reference,
            callback_url=callback_url,
        )

    def with_callback_url(self, callback_url: str | None) -> SendRequest:
        """This request with its callback URL replaced by the checked one."""
        return replace(self, callback_url=callback_url)

    def content_hash(self) -> str:
        """A digest of what is sent, for idempotent replays: the same request again
        hashes the same, any change of content or option does not."""
        # Options added later join the hash only when set, so keys stored before
        # they existed still match their replays.
        later = {
            "send_at": self.send_at.isoformat() if self.send_at else None,
            "priority": str(self.priority) if self.priority is not Priority.NORMAL else None,
            "valid_for_s": self.valid_for_s,
        }
        parts: list[object] = [
            list(self.numbers),
            self.text,
            self.sender,
            self.maxconcat,
            str(self.kind),
            self.reference,
            self.callback_url,
            *({k: v} for k, v in later.items() if v is not None),
        ]
        canonical = json.dumps(parts, default=repr, ensure_ascii=False, separators=(",", ":"))
        # surrogatepass: a number with a lone surrogate is refused on its own (recorded
        # as failed), so the hash must not fail on it; valid text encodes as before.
        return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _numbers(to: object) -> tuple[object, ...]:
    if isinstance(to, str):
        return tuple(to.split(","))
    if to is None or not isinstance(to, Iterable):
        raise NoRecipientsError("to must be a number, comma-separated numbers, or a list")
    return tuple(to)


def check_label(name: str, value: object) -> str | None:
    """A reference or idempotency key: a non-empty printable string of bounded length."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidOptionError(f"{name} must be a string, not {type(value).__name__}")
    value = check_storable(value, name).strip()
    if not value:
        return None
    if len(value) > MAX_LABEL_LENGTH or not value.isprintable():
        raise InvalidOptionError(
            f"{name} must be printable and at most {MAX_LABEL_LENGTH} characters"
        )
    return value
