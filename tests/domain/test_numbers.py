"""Recipient numbers: normalise, prepare (dedupe, refusals), chunk."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.domain import numbers as numbers_module
from dispatcher.domain.numbers import Refused, chunk, normalise, prepare
from dispatcher.errors import InvalidNumberError, ValidationError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("07700 900123", "447700900123", id="national-gb-test-range"),
        pytest.param("07700900123", "447700900123", id="national-gb-no-spaces"),
        pytest.param("+44 7700 900123", "447700900123", id="plus44-spaces"),
        pytest.param("+44 (0)7700 900123", "447700900123", id="plus44-trunk-zero"),
        pytest.param("0044 7700 900123", "447700900123", id="0044"),
        pytest.param("00447700900123", "447700900123", id="0044-no-spaces"),
        pytest.param("+447700900123", "447700900123", id="e164"),
        pytest.param("447700900123", "447700900123", id="already-international-digits"),
        pytest.param("  07700-900-123  ", "447700900123", id="dashes-and-padding"),
        pytest.param("020 7946 0000", "442079460000", id="london-landline"),
        pytest.param("+1 202 555 0143", "12025550143", id="us-plus1"),
        pytest.param("+1 (202) 555-0143", "12025550143", id="us-punctuated"),
        pytest.param("+33 6 12 34 56 78", "33612345678", id="france-mobile"),
    ],
)
def test_normalise_accepts(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


def test_test_range_number_is_accepted_though_not_valid() -> None:
    # Ofcom's drama range: phonenumbers calls it invalid; the gateway decides, not us.
    assert not phonenumbers.is_valid_number(phonenumbers.parse("07700900123", "GB"))
    assert normalise("07700 900123") == "447700900123"


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        pytest.param("202 555 0143", "US", "12025550143", id="us-national"),
        pytest.param("(202) 555-0143", "US", "12025550143", id="us-national-punctuated"),
        pytest.param("011 44 7700 900123", "US", "447700900123", id="us-international-prefix"),
        pytest.param("+44 7700 900123", "US", "447700900123", id="plus-ignores-region"),
        pytest.param("06 12 34 56 78", "FR", "33612345678", id="fr-national"),
        pytest.param("202 555 0143", "GB", "442025550143", id="same-digits-gb-region"),
    ],
)
def test_normalise_default_region(raw: str, region: str, expected: str) -> None:
    assert normalise(raw, region) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(447700900123, "must be a string, not int", id="int"),
        pytest.param(None, "must be a string, not NoneType", id="none"),
        pytest.param(b"07700900123", "must be a string, not bytes", id="bytes"),
        pytest.param("", "empty", id="empty"),
        pytest.param("   ", "empty", id="blank"),
        pytest.param("hello", "did not seem to be a phone number", id="letters"),
        pytest.param("12", "too short", id="too-short"),
        pytest.param("077009001234567890", "too long", id="too-long"),
        pytest.param("+4477009001234567", "too long", id="too-long-international"),
        pytest.param("07700 900123 ext. 12", "extension", id="extension-ext"),
        pytest.param("07700900123x5", "extension", id="extension-x"),
        pytest.param("+999 1234567", "plus-sign", id="unknown-country-code"),
    ],
)
def test_normalise_refuses_with_reason(raw: object, reason: str) -> None:
    with pytest.raises(InvalidNumberError) as info:
        normalise(raw)
    assert reason in info.value.reason
    assert reason in str(info.value)
    assert isinstance(info.value, ValidationError)
    assert isinstance(info.value, ValueError)


def test_prepare_dedupes_keeping_first_and_order() -> None:
    result = prepare(
        ["07700 900125", "+44 7700 900123", "07700900125", "0044 7700 900124", "447700900123"]
    )
    assert result.accepted == ["447700900125", "447700900123", "447700900124"]
    assert result.duplicates == 2
    assert result.refused == []


def test_prepare_collects_refusals_with_reasons() -> None:
    result = prepare(["hello", "07700 900123", "", 12345, "12", "07700900123 ext 9"])
    assert result.accepted == ["447700900123"]
    assert result.duplicates == 0
    assert [r.raw for r in result.refused] == ["hello", "", "12345", "12", "07700900123 ext 9"]
    assert result.refused[1] == Refused("", "empty")
    assert "string" in result.refused[2].reason
    assert result.refused[3] == Refused("12", "too short")
    assert "extension" in result.refused[4].reason
    assert all(r.reason for r in result.refused)


def test_prepare_default_region() -> None:
    result = prepare(["202 555 0143", "+1 202 555 0143"], default_region="US")
    assert result.accepted == ["12025550143"]
    assert result.duplicates == 1


def test_prepare_empty() -> None:
    result = prepare([])
    assert (result.accepted, result.refused, result.duplicates) == ([], [], 0)


@pytest.mark.parametrize(
    ("count", "sizes"),
    [
        pytest.param(250, [100, 100, 50], id="250"),
        pytest.param(100, [100], id="exact-100"),
        pytest.param(101, [100, 1], id="101"),
        pytest.param(1, [1], id="1"),
        pytest.param(0, [], id="0"),
    ],
)
def test_chunk_sizes(count: int, sizes: list[int]) -> None:
    items = [str(i) for i in range(count)]
    assert [len(c) for c in chunk(items)] == sizes


@pytest.mark.parametrize("size", [0, -1])
def test_chunk_size_below_one_raises(size: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(chunk(["a"], size))


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.integers(), max_size=350), size=st.integers(min_value=1, max_value=120))
def test_chunk_preserves_order_and_concatenation(items: list[int], size: int) -> None:
    chunks = [list(c) for c in chunk(items, size)]
    assert [x for c in chunks for x in c] == items
    assert all(1 <= len(c) <= size for c in chunks)
    assert all(len(c) == size for c in chunks[:-1])
    assert len(chunks) == -(-len(items) // size)


@pytest.mark.parametrize(
    "text",
    [
        "+447700900123",
        "+4407700900123",  # a national trunk zero after +44: the full parse strips it
        "+44180020123456",  # GB's other national prefix for parsing
        "+390612345678",  # Italy keeps its leading zero
        "+12025550143",
        "+112025550143",  # the US national prefix after +1
        "+5491123456789",  # Argentina rewrites mobile numbers
        "+79161234567",
        "+80012345678",  # non-geographic
        "+4477009",  # too short for the UK
        "+447700900123456",  # too long
    ],
)
def test_international_fast_path_agrees_with_full_parse(text: str) -> None:
    assert numbers_module._fast_international(text) in (None, _full(text))


@settings(max_examples=3000, deadline=None)
@given(st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True))
def test_international_fast_path_agrees_with_full_parse_anywhere(text: str) -> None:
    fast = numbers_module._fast_international(text)
    if fast is not None:
        assert fast == _full(text)


def test_international_fast_path_takes_plain_e164() -> None:
    # The point of it: a bulk list's E.164 numbers skip the full parse.
    assert numbers_module._fast_international("+447700900123") == "447700900123"
    assert numbers_module._fast_international("+33612345678") == "33612345678"


def _full(text: str) -> str | None:
    try:
        return numbers_module._parse(text, text, "GB")
    except InvalidNumberError:
        return None
