"""Secrets masked in log output: message, %-args, URL-encoded forms, exception text."""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Iterator
from urllib.parse import quote, urlencode

import pytest

from dispatcher import redaction
from dispatcher.redaction import (
    MASK,
    RedactingFilter,
    install,
    redact,
    register_secret,
    registered_secrets,
)


@pytest.fixture(autouse=True)
def no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no registered secret and leaves none behind."""
    monkeypatch.setattr(redaction, "_secrets", frozenset())


@pytest.fixture
def secret() -> str:
    value = "pw-" + secrets.token_urlsafe(18)
    register_secret(value)
    return value


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A private logger writing through a redacting handler into a StringIO."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"tests.redaction.{secrets.token_hex(8)}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    install(logger)
    yield logger, stream
    logger.removeHandler(handler)
    handler.close()


def test_secret_in_message(capture: tuple[logging.Logger, io.StringIO], secret: str) -> None:
    log, out = capture
    log.warning(f"login with password={secret} refused")
    assert out.getvalue() == f"WARNING login with password={MASK} refused\n"


def test_secret_in_percent_args(capture: tuple[logging.Logger, io.StringIO], secret: str) -> None:
    log, out = capture
    log.info("form %s to %s", {"password": secret}, "gw")
    assert secret not in out.getvalue()
    assert out.getvalue() == f"INFO form {{'password': '{MASK}'}} to gw\n"


def test_secret_in_dict_args(capture: tuple[logging.Logger, io.StringIO], secret: str) -> None:
    log, out = capture
    log.info("user=%(user)s password=%(password)s", {"user": "acme", "password": secret})
    assert out.getvalue() == f"INFO user=acme password={MASK}\n"


def test_url_encoded_secret_in_form_body(capture: tuple[logging.Logger, io.StringIO]) -> None:
    value = f"p&ss w0rd+{secrets.token_urlsafe(12)}"
    register_secret(value)
    body = urlencode({"username": "acme", "password": value, "to": "447700900123"})
    assert value not in body  # the form carries the encoded password, not the raw one
    log, out = capture
    log.info("POST body %s", body)
    log.info("GET query %s", f"password={quote(value, safe='')}")
    text = out.getvalue()
    assert f"password={MASK}&to=447700900123" in text
    assert f"GET query password={MASK}\n" in text
    for form in (value, quote(value, safe=""), urlencode({"p": value})[2:]):
        assert form not in text


def test_secret_in_exception_text(capture: tuple[logging.Logger, io.StringIO], secret: str) -> None:
    log, out = capture
    try:
        raise RuntimeError(f"gateway said no to password {secret}")
    except RuntimeError:
        log.exception("submission failed")
    text = out.getvalue()
    assert secret not in text
    assert "submission failed" in text
    assert "Traceback (most recent call last)" in text
    assert f"RuntimeError: gateway said no to password {MASK}" in text


def test_secret_in_chained_exception(
    capture: tuple[logging.Logger, io.StringIO], secret: str
) -> None:
    log, out = capture
    try:
        try:
            raise ValueError(secret)
        except ValueError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError:
        log.error("failed", exc_info=True)
    assert secret not in out.getvalue()
    assert f"ValueError: {MASK}" in out.getvalue()


def test_secret_in_stack_info(capture: tuple[logging.Logger, io.StringIO], secret: str) -> None:
    log, out = capture
    log.info("here %s", secret, stack_info=True)
    assert secret not in out.getvalue()
    assert "Stack (most recent call last)" in out.getvalue()


def test_text_without_secrets_is_untouched(
    capture: tuple[logging.Logger, io.StringIO], secret: str
) -> None:
    log, out = capture
    log.info("sent %d messages to %s", 3, "447700900123")
    assert out.getvalue() == "INFO sent 3 messages to 447700900123\n"


def test_every_handler_of_the_logger_redacts(secret: str) -> None:
    logger = logging.getLogger(f"tests.redaction.{secrets.token_hex(8)}")
    logger.propagate = False
    streams = [io.StringIO(), io.StringIO()]
    handlers = [logging.StreamHandler(s) for s in streams]
    for handler in handlers:
        logger.addHandler(handler)
    try:
        first = install(logger)
        assert install(logger) is first  # installing twice adds no second filter
        assert all(h.filters == [first] for h in handlers)
        logger.warning("password %s", secret)
        for stream in streams:
            assert stream.getvalue() == f"password {MASK}\n"
    finally:
        for handler in handlers:
            logger.removeHandler(handler)


def test_filter_lets_every_record_through(secret: str) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "pw %s", (secret,), None)
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == f"pw {MASK}"


def test_redact_masks_longest_first() -> None:
    short = "tok-" + secrets.token_hex(4)
    long = short + "-EXTRA-" + secrets.token_hex(4)
    register_secret(short)
    register_secret(long)
    assert redact(f"a {long} b {short} c") == f"a {MASK} b {MASK} c"
    assert "EXTRA" not in redact(long)


def test_redact_extra_values_without_registering() -> None:
    extra = "api-" + secrets.token_hex(8)
    assert redact(f"token {extra}", extra=[extra]) == f"token {MASK}"
    assert extra not in registered_secrets()
    assert redact(f"token {extra}") == f"token {extra}"


@pytest.mark.parametrize("value", ["", "a", "ab", "abc"], ids=["empty", "1", "2", "3"])
def test_short_secret_is_not_registered(value: str) -> None:
    register_secret(value)
    assert registered_secrets() == frozenset()
    assert redact("abc cab bca") == "abc cab bca"


def test_none_secret_is_ignored() -> None:
    register_secret(None)
    assert registered_secrets() == frozenset()


def test_four_char_secret_is_registered_with_encoded_forms() -> None:
    register_secret("a&b ")
    assert {"a&b ", "a%26b%20", "a%26b+"} <= registered_secrets()
    assert redact("x=a%26b+") == f"x={MASK}"
