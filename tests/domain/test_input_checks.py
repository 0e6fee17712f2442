"""The two checks every entry point shares: times into UTC, and text the database can hold.

Pure functions, so they are tested exhaustively here and fuzzed with hypothesis;
the entry points' own tests (send(), /v1, the drop-in, the dashboard, the CLI)
check that each one uses them.
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.domain.storable import check_storable, unstorable
from dispatcher.domain.times import parse_time, to_utc
from dispatcher.errors import InvalidOptionError, InvalidTextError

PLUS_ONE = dt.timezone(dt.timedelta(hours=1))
MINUS_LAST = dt.timezone(-dt.timedelta(hours=23, minutes=59))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-24", dt.datetime(2026, 11, 24, tzinfo=dt.UTC)),
        ("2026-11-24T09:30", dt.datetime(2026, 11, 24, 9, 30, tzinfo=dt.UTC)),
        ("2026-11-24T09:30:00Z", dt.datetime(2026, 11, 24, 9, 30, tzinfo=dt.UTC)),
        ("  2026-11-24T10:30:00+01:00 ", dt.datetime(2026, 11, 24, 9, 30, tzinfo=dt.UTC)),
        ("0001-01-01", dt.datetime(1, 1, 1, tzinfo=dt.UTC)),
        ("0001-01-01T01:00:00+01:00", dt.datetime(1, 1, 1, tzinfo=dt.UTC)),
        ("9999-12-31T23:59:59Z", dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)),
    ],
)
def test_times_are_read_into_utc(text: str, expected: dt.datetime) -> None:
    parsed = parse_time(text, "since")
    assert parsed == expected
    assert parsed.tzinfo is dt.UTC


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("0001-01-01T00:00:00+01:00", "since 0001-01-01T00:00:00+01:00 is out of range"),
        ("9999-12-31T23:59:59-23:59", "since 9999-12-31T23:59:59-23:59 is out of range"),
        ("yesterday", "since must be an ISO 8601 date or time"),
        ("2026-11-24T09:30:00+24:00", "ISO 8601"),
        ("2026-11-24\x00", "'2026-11-24\\x00'"),
        ("2026-11-24\ud800", "'2026-11-24\\ud800'"),
        ("2" * 10_000, "'" + "2" * 40 + "...'"),
        ("", "ISO 8601"),
    ],
)
def test_unreadable_or_out_of_range_times_are_one_clear_refusal(text: str, needle: str) -> None:
    with pytest.raises(InvalidOptionError) as info:
        parse_time(text, "since")
    message = str(info.value)
    assert needle in message
    assert "\n" not in message
    assert len(message) < 200


def test_a_time_without_an_offset_is_refused_where_the_zone_matters() -> None:
    with pytest.raises(InvalidOptionError, match="send_at must be timezone-aware"):
        parse_time("2030-01-01T09:00", "send_at", assume_utc=False)
    with pytest.raises(InvalidOptionError, match="send_at must be timezone-aware"):
        to_utc(dt.datetime(2030, 1, 1, 9), "send_at", assume_utc=False)
    with pytest.raises(InvalidOptionError, match="send_at must be a datetime, not str"):
        to_utc("2030-01-01T09:00Z", "send_at")


@given(
    st.datetimes(
        timezones=st.timezones()
        | st.builds(
            dt.timezone,
            st.timedeltas(
                min_value=-dt.timedelta(hours=23, minutes=59),
                max_value=dt.timedelta(hours=23, minutes=59),
            ),
        )
    )
)
def test_any_datetime_is_in_utc_or_refused(value: dt.datetime) -> None:
    """Whatever the offset, at the calendar's edges too: UTC, or InvalidOptionError."""
    try:
        utc = to_utc(value, "since")
    except InvalidOptionError as exc:
        message = str(exc)
    else:
        assert utc.tzinfo is dt.UTC
        offset = value.utcoffset()
        assert offset is not None
        # The definition, rather than ==, which is odd for times in a DST gap.
        assert utc.replace(tzinfo=None) == value.replace(tzinfo=None) - offset
        return
    assert "out of range" in message


@given(st.text())
def test_any_text_parses_or_is_refused(text: str) -> None:
    try:
        parsed = parse_time(text, "until")
    except InvalidOptionError as exc:
        message = str(exc)
    else:
        assert parsed.tzinfo is dt.UTC
        return
    assert message.startswith("until ")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("plain", None),
        ("emoji \U0001f600 and ł", None),
        ("line\nbreak\ttab", None),
        ("a\x00b", "contains a NUL character"),
        ("a\ud800b", "is not valid Unicode text"),
        ("\udcff", "is not valid Unicode text"),
    ],
)
def test_storable_text(value: str, reason: str | None) -> None:
    found = unstorable(value)
    if reason is None:
        assert found is None
        assert check_storable(value, "reference") is value
    else:
        assert found is not None
        assert found.startswith(reason)
        with pytest.raises(InvalidTextError, match=f"^text {reason}"):
            check_storable(value, "text", error=InvalidTextError)


@given(st.text(alphabet=st.characters(codec=None)))
def test_storable_means_encodable_without_nul(value: str) -> None:
    encodable = True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        encodable = False
    assert (unstorable(value) is None) == (encodable and "\x00" not in value)
