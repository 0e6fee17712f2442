"""A message's options: kind and sender."""

from __future__ import annotations

import pytest

from dispatcher.domain.message import Kind, check_kind, check_sender
from dispatcher.errors import InvalidOptionError, InvalidSenderError


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        pytest.param("text", Kind.TEXT, id="text"),
        pytest.param("voice", Kind.VOICE, id="voice"),
        pytest.param("VOICE", Kind.VOICE, id="voice-upper"),
        pytest.param(" Text ", Kind.TEXT, id="text-padded"),
        pytest.param(Kind.VOICE, Kind.VOICE, id="enum"),
    ],
)
def test_check_kind_accepts(kind: object, expected: Kind) -> None:
    assert check_kind(kind) is expected


@pytest.mark.parametrize(
    "kind", [pytest.param(v, id=repr(v)) for v in ["fax", "", "sms", None, 1, 6, b"text"]]
)
def test_check_kind_refuses_listing_choices(kind: object) -> None:
    with pytest.raises(InvalidOptionError) as info:
        check_kind(kind)
    assert "text, voice" in str(info.value)


@pytest.mark.parametrize(("kind", "gateway_type"), [(Kind.TEXT, 1), (Kind.VOICE, 6)])
def test_gateway_type(kind: Kind, gateway_type: int) -> None:
    assert kind.gateway_type == gateway_type


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        pytest.param("ABCDEFGHIJK", "ABCDEFGHIJK", id="11-alphanumerics"),
        pytest.param("Acme Ltd 24", "Acme Ltd 24", id="11-with-spaces-and-digits"),
        pytest.param("A", "A", id="one-letter"),
        pytest.param("  Acme  ", "Acme", id="padded"),
        pytest.param("123456789012345", "123456789012345", id="15-digits"),
        pytest.param("447700900123", "447700900123", id="numeric"),
        pytest.param("+447700900123", "447700900123", id="plus-numeric"),
        pytest.param("+123456789012345", "123456789012345", id="plus-15-digits"),
        pytest.param(None, None, id="none"),
        pytest.param("", None, id="empty"),
        pytest.param("   ", None, id="blank"),
    ],
)
def test_check_sender_accepts(sender: object, expected: str | None) -> None:
    assert check_sender(sender) == expected


@pytest.mark.parametrize(
    ("sender", "match"),
    [
        pytest.param("ABCDEFGHIJKL", "11", id="12-alphanumerics"),
        pytest.param("1234567890123456", "15 digits", id="16-digits"),
        pytest.param("+1234567890123456", "15 digits", id="plus-16-digits"),
        pytest.param("Acme-Co", "11", id="hyphen"),
        pytest.param("Acme!", "11", id="bang"),
        pytest.param("Acme.co.uk", "11", id="dots"),
        pytest.param("Café", "11", id="non-ascii-letter"),
        pytest.param("123 456", "11", id="digits-and-space-no-letter"),
        pytest.param(12345, "must be a string", id="int"),
        pytest.param(b"Acme", "must be a string", id="bytes"),
    ],
)
def test_check_sender_refuses(sender: object, match: str) -> None:
    with pytest.raises(InvalidSenderError, match=match):
        check_sender(sender)
