"""Recipient numbers: normalise to international digits, dedupe, chunk.

Only what ``phonenumbers.is_possible_number`` refuses is refused here. Validity is
the gateway's call (its ``INVALID_NUMBER``): ``is_valid_number`` rejects real
ranges such as the 07700 900xxx drama range and any range newer than the
library's data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import phonenumbers

from dispatcher.errors import InvalidNumberError

T = TypeVar("T")

_REASONS = {
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
    phonenumbers.ValidationResult.TOO_SHORT: "too short",
    phonenumbers.ValidationResult.TOO_LONG: "too long",
    phonenumbers.ValidationResult.INVALID_LENGTH: "impossible length for its country",
}


def normalise(raw: object, default_region: str = "GB") -> str:
    """International digits (``447700900123``) for a number in any common format.

    Raises InvalidNumberError with the reason when the input cannot be a number.
    """
    if not isinstance(raw, str):
        raise InvalidNumberError(repr(raw), f"must be a string, not {type(raw).__name__}")
    text = raw.strip()
    if not text:
        raise InvalidNumberError(raw, "empty")
    if text.startswith("00"):
        # phonenumbers reads 00 as an international prefix only for some regions.
        text = "+" + text[2:]
    fast = _fast_international(text)
    if fast is not None:
        return fast
    return _parse(raw, text, default_region)


_E164 = re.compile(r"\+[1-9]\d{6,14}")


def _fast_international(text: str) -> str | None:
    """International digits for ``+<digits>`` that phonenumbers would take as they are;
    None when it might not (then the full parse decides, reasons and all).

    ``phonenumbers.parse`` spends most of its time on formats a bulk list's E.164
    numbers do not have. For those it finds the country code as the shortest known
    prefix and keeps the rest unless it starts with the country's national prefix
    (or a leading zero, or a prefix it rewrites), so only numbers with none of
    these take this path, and only if the same possibility check passes.
    """
    if not _E164.fullmatch(text):
        return None
    digits = text[1:]
    for size in (1, 2, 3):
        country_code = int(digits[:size])
        if country_code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return None
    national = digits[size:]
    region = phonenumbers.region_code_for_country_code(country_code)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region, None)
    if metadata is None or national.startswith("0") or metadata.national_prefix_transform_rule:
        return None
    strip = metadata.national_prefix_for_parsing
    if strip and re.match(strip, national):
        return None
    number = phonenumbers.PhoneNumber(country_code=country_code, national_number=int(national))
    if phonenumbers.is_possible_number_with_reason(number) != _POSSIBLE:
        return None
    return digits


_POSSIBLE = phonenumbers.ValidationResult.IS_POSSIBLE


def _parse(raw: str, text: str, default_region: str) -> str:
    """``normalise`` by phonenumbers' full parse."""
    try:
        parsed = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumberError(raw, str(exc.args[0] if exc.args else exc).rstrip(".")) from None
    if parsed.extension:
        raise InvalidNumberError(raw, "extensions cannot receive SMS")
    result = phonenumbers.is_possible_number_with_reason(parsed)
    if result not in (
        phonenumbers.ValidationResult.IS_POSSIBLE,
        phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
    ):
        raise InvalidNumberError(raw, _REASONS.get(result, "not a possible phone number"))
    if result == phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY:
        raise InvalidNumberError(raw, "a local number without its area code")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164).lstrip("+")


@dataclass(frozen=True, slots=True)
class Refused:
    """A number refused at enqueue, with the input as given and why."""

    raw: str
    reason: str


@dataclass(slots=True)
class RecipientList:
    """The outcome of preparing a job's recipients."""

    accepted: list[str] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    duplicates: int = 0


def prepare(raw_numbers: Iterable[object], default_region: str = "GB") -> RecipientList:
    """Normalise every number, keep the first of each duplicate, collect refusals."""
    result = RecipientList()
    seen: set[str] = set()
    for raw in raw_numbers:
        try:
            number = normalise(raw, default_region)
        except InvalidNumberError as exc:
            shown = raw if isinstance(raw, str) and raw.isprintable() else repr(raw)
            # Kept for the audit as given, unless it holds control characters (a NUL
            # cannot even be stored in PostgreSQL text): then its repr.
            result.refused.append(Refused(shown, exc.reason))
            continue
        if number in seen:
            result.duplicates += 1
            continue
        seen.add(number)
        result.accepted.append(number)
    return result


def chunk(items: Sequence[T], size: int = 100) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``size`` items (the gateway takes 100 per request)."""
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    for start in range(0, len(items), size):
        yield items[start : start + size]
