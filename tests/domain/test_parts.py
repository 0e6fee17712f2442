"""SMS parts: GSM 03.38 or UCS-2, 160/153 and 70/67, pairs never split."""

from __future__ import annotations

import math

import pytest

from dispatcher.domain.parts import (
    GSM_BASIC,
    GSM_EXTENSION,
    Encoding,
    analyse,
    check_maxconcat,
    check_text,
)
from dispatcher.errors import InvalidOptionError, InvalidTextError

GSM7 = Encoding.GSM7
UCS2 = Encoding.UCS2
CYR = "Ж"  # not in GSM 03.38: one UCS-2 unit
EMOJI = "\U0001f600"  # outside the BMP: a surrogate pair, two UCS-2 units


@pytest.mark.parametrize(
    ("text", "encoding", "units", "parts"),
    [
        # GSM 7-bit: 160 in one part, 153 per concatenated part
        pytest.param("a" * 160, GSM7, 160, 1, id="gsm-160"),
        pytest.param("a" * 161, GSM7, 161, 2, id="gsm-161"),
        pytest.param("a" * 306, GSM7, 306, 2, id="gsm-306"),
        pytest.param("a" * 307, GSM7, 307, 3, id="gsm-307"),
        pytest.param("a" * 459, GSM7, 459, 3, id="gsm-459"),
        pytest.param("a" * 460, GSM7, 460, 4, id="gsm-460"),
        pytest.param("", GSM7, 0, 1, id="empty-one-part"),
        pytest.param("@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ!¡§¿ÄÖÑÜäöñüà", GSM7, 42, 1, id="gsm-accents"),
        pytest.param("line one\r\nline two\n", GSM7, 19, 1, id="gsm-newlines"),
        # extension table characters take two septets
        pytest.param("a" * 159 + "€", GSM7, 161, 2, id="159-plus-euro"),
        pytest.param("a" * 158 + "€", GSM7, 160, 1, id="158-plus-euro"),
        pytest.param("€" * 80, GSM7, 160, 1, id="80-euro"),
        pytest.param("€" * 81, GSM7, 162, 2, id="81-euro"),
        pytest.param("a" * 159 + "^", GSM7, 161, 2, id="159-plus-caret"),
        pytest.param("a" * 159 + "{", GSM7, 161, 2, id="159-plus-brace"),
        pytest.param("^{}\\[~]|€\f", GSM7, 20, 1, id="whole-extension-table"),
        # anything outside GSM 03.38 switches the whole text to UCS-2
        pytest.param(CYR * 70, UCS2, 70, 1, id="ucs2-70"),
        pytest.param(CYR * 71, UCS2, 71, 2, id="ucs2-71"),
        pytest.param(CYR * 134, UCS2, 134, 2, id="ucs2-134"),
        pytest.param(CYR * 135, UCS2, 135, 3, id="ucs2-135"),
        pytest.param("a" * 69 + CYR, UCS2, 70, 1, id="one-non-gsm-69-plus-1"),
        pytest.param("a" * 70 + CYR, UCS2, 71, 2, id="one-non-gsm-70-plus-1"),
        pytest.param("€" * 69 + CYR, UCS2, 70, 1, id="euro-is-one-unit-in-ucs2"),
        pytest.param("a" * 69 + "á", UCS2, 70, 1, id="a-acute-not-gsm"),
        pytest.param("a" * 69 + "\t", UCS2, 70, 1, id="tab-not-gsm"),
        pytest.param("a" * 69 + "`", UCS2, 70, 1, id="backtick-not-gsm"),
        # emoji outside the BMP take two UCS-2 units
        pytest.param(EMOJI, UCS2, 2, 1, id="one-emoji"),
        pytest.param(EMOJI * 35, UCS2, 70, 1, id="35-emoji"),
        pytest.param(EMOJI * 36, UCS2, 72, 2, id="36-emoji"),
        pytest.param("a" * 69 + EMOJI, UCS2, 71, 2, id="69-plus-emoji"),
    ],
)
def test_analyse(text: str, encoding: Encoding, units: int, parts: int) -> None:
    info = analyse(text)
    assert (info.encoding, info.units, info.parts) == (encoding, units, parts)
    assert info.characters == len(text)


@pytest.mark.parametrize(
    ("text", "units", "parts"),
    [
        # 152 + the escape pair would be 154 > 153: the pair starts part 2, which then
        # overflows by one, so 306 units take 3 parts where ceil(306 / 153) is 2.
        pytest.param("a" * 152 + "€" + "a" * 152, 306, 3, id="gsm-escape-pair-at-boundary"),
        pytest.param("a" * 152 + "{" + "a" * 152, 306, 3, id="gsm-brace-at-boundary"),
        # 151 + the pair is exactly 153: nothing moves.
        pytest.param("a" * 151 + "€" + "a" * 153, 306, 2, id="gsm-escape-pair-fits"),
        pytest.param(CYR * 66 + EMOJI + CYR * 66, 134, 3, id="ucs2-surrogate-pair-at-boundary"),
        pytest.param(CYR * 65 + EMOJI + CYR * 67, 134, 2, id="ucs2-surrogate-pair-fits"),
    ],
)
def test_pairs_never_split_across_parts(text: str, units: int, parts: int) -> None:
    info = analyse(text)
    assert info.units == units
    assert info.parts == parts


def test_pair_at_boundary_differs_from_naive_division() -> None:
    info = analyse("a" * 152 + "€" + "a" * 152)
    assert info.parts == math.ceil(info.units / 153) + 1


def test_alphabet_tables() -> None:
    assert len(GSM_BASIC) == 128
    assert len(GSM_EXTENSION) == 10
    assert not GSM_BASIC & GSM_EXTENSION


def test_check_text_returns_info() -> None:
    info = check_text("a" * 161, 2)
    assert (info.encoding, info.units, info.parts) == (GSM7, 161, 2)


@pytest.mark.parametrize("text", ["", " ", "\r\n\t  "], ids=["empty", "space", "whitespace"])
def test_check_text_refuses_empty(text: str) -> None:
    with pytest.raises(InvalidTextError, match="empty"):
        check_text(text, 1)


@pytest.mark.parametrize(
    "text", [None, b"hello", 42, ["hello"]], ids=["none", "bytes", "int", "list"]
)
def test_check_text_refuses_non_str(text: object) -> None:
    with pytest.raises(InvalidTextError, match="must be a string"):
        check_text(text, 1)


def test_check_text_refuses_nul() -> None:
    with pytest.raises(InvalidTextError, match="NUL"):
        check_text("hello\x00world", 1)


@pytest.mark.parametrize(
    ("text", "maxconcat", "parts"),
    [
        pytest.param("a" * 161, 1, 2, id="gsm-161-max-1"),
        pytest.param("a" * 307, 2, 3, id="gsm-307-max-2"),
        pytest.param(CYR * 135, 2, 3, id="ucs2-135-max-2"),
        pytest.param(EMOJI * 36, 1, 2, id="emoji-36-max-1"),
    ],
)
def test_check_text_refuses_too_many_parts(text: str, maxconcat: int, parts: int) -> None:
    with pytest.raises(InvalidTextError) as info:
        check_text(text, maxconcat)
    message = str(info.value)
    assert f"{parts} parts" in message
    assert f"maxconcat is {maxconcat}" in message


@pytest.mark.parametrize("maxconcat", [1, 2, 10, 255])
def test_check_maxconcat_accepts(maxconcat: int) -> None:
    assert check_maxconcat(maxconcat) == maxconcat


@pytest.mark.parametrize(
    ("maxconcat", "match"),
    [
        pytest.param(0, "between 1 and 255", id="zero"),
        pytest.param(-1, "between 1 and 255", id="negative"),
        pytest.param(256, "between 1 and 255", id="256"),
        pytest.param(True, "integer", id="true"),
        pytest.param(False, "integer", id="false"),
        pytest.param("2", "integer", id="string"),
        pytest.param(2.0, "integer", id="float"),
        pytest.param(None, "integer", id="none"),
    ],
)
def test_check_maxconcat_refuses(maxconcat: object, match: str) -> None:
    with pytest.raises(InvalidOptionError, match=match):
        check_maxconcat(maxconcat)
