"""The retry rules on their own (``dispatcher.domain.retries``): every row of the table
in docs/operating.md, "Retry"."""

from __future__ import annotations

import datetime as dt

import pytest

from dispatcher.domain.retries import HeldBack, RetryRules, permanent

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
EARLIER = NOW - dt.timedelta(hours=1)


def verdict(
    rules: RetryRules,
    status: str = "failed",
    code: str | None = None,
    changed_at: dt.datetime = EARLIER,
    expires_at: dt.datetime | None = None,
) -> HeldBack | None:
    return rules.verdict(
        status=status, error_code=code, changed_at=changed_at, expires_at=expires_at
    )


@pytest.mark.parametrize(
    "code",
    [
        "GATEWAY_ERROR",
        "INTERNAL_ERROR",
        "HTTP_429",
        "HTTP_503",
        "HTTP_408",
        "CONNECT_FAILED",
        "RETRY_AGE_EXCEEDED",
        None,
    ],
)
def test_transient_failures_go(code: str | None) -> None:
    assert not permanent(code)
    assert verdict(RetryRules(now=NOW), code=code) is None


@pytest.mark.parametrize(
    "code",
    [
        "INVALID_NUMBER",
        "INVALID_REQUEST",
        "NO_USERNAME",
        "NO_TO",
        "HTTP_400",
        "HTTP_302",
        "SOMETHING_NEW",
    ],
)
def test_permanent_failures_stay_unless_their_code_is_named(code: str) -> None:
    assert permanent(code)
    assert verdict(RetryRules(now=NOW), code=code) is HeldBack.PERMANENT
    assert verdict(RetryRules(now=NOW, named_code=code), code=code) is None
    other = "INVALID_NUMBER" if code != "INVALID_NUMBER" else "NO_TO"
    assert verdict(RetryRules(now=NOW, named_code=other), code=code) is HeldBack.PERMANENT


def test_login_invalid_goes_once_a_resume_followed_it_and_no_credentials_pause_is_on() -> None:
    code = "LOGIN_INVALID"
    assert verdict(RetryRules(now=NOW), code=code) is HeldBack.CREDENTIALS
    before = RetryRules(now=NOW, resumed_at=EARLIER - dt.timedelta(minutes=1))
    assert verdict(before, code=code) is HeldBack.CREDENTIALS
    after = RetryRules(now=NOW, resumed_at=EARLIER + dt.timedelta(minutes=1))
    assert verdict(after, code=code) is None
    paused_again = RetryRules(
        now=NOW, resumed_at=EARLIER + dt.timedelta(minutes=1), credentials_paused=True
    )
    assert verdict(paused_again, code=code) is HeldBack.CREDENTIALS
    assert verdict(RetryRules(now=NOW, named_code=code), code=code) is None


def test_unknown_goes_only_confirmed_and_whatever_its_code() -> None:
    assert verdict(RetryRules(now=NOW), "unknown", "NO_REPLY") is HeldBack.UNCONFIRMED
    assert verdict(RetryRules(now=NOW, confirm_unknown=True), "unknown", "NO_REPLY") is None


def test_an_ended_validity_holds_back_unless_a_new_one_is_given() -> None:
    ended, ahead = NOW - dt.timedelta(seconds=1), NOW + dt.timedelta(seconds=1)
    assert verdict(RetryRules(now=NOW), expires_at=ended) is HeldBack.EXPIRED
    assert verdict(RetryRules(now=NOW), expires_at=NOW) is HeldBack.EXPIRED
    assert verdict(RetryRules(now=NOW), expires_at=ahead) is None
    assert verdict(RetryRules(now=NOW, new_validity=True), expires_at=ended) is None
    confirmed = RetryRules(now=NOW, confirm_unknown=True)
    assert verdict(confirmed, "unknown", expires_at=ended) is HeldBack.EXPIRED


def test_every_reason_explains_itself() -> None:
    for reason in HeldBack:
        assert len(reason.explain()) > 20
