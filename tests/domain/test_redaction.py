"""Secrets masked in log output and stored replies: message, %-args, exception text,
and any encoding an echo may carry; control characters escaped in log lines."""

from __future__ import annotations

import html
import io
import json
import logging
import secrets
from collections.abc import Callable, Iterator
from urllib.parse import quote, quote_plus, urlencode

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dispatcher.domain import redaction
from dispatcher.domain.redaction import (
    MASK,
    RedactingFilter,
    install,
    redact,
    register_secret,
    registered_secrets,
)
from support.echoes import CHAR_ENCODINGS, WHOLE_ENCODINGS, every_decoding


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


# --- any encoding an echo may carry ------------------------------------------------


passwords = st.text(min_size=4, max_size=16)
surroundings = st.text(max_size=24)


@st.composite
def echoes(draw: st.DrawFn, password: str) -> str:
    """``password`` as a gateway might echo it: whole, per character, or nested."""
    how = draw(st.sampled_from(["whole", "per-char", "nested"]))
    if how == "whole":
        return WHOLE_ENCODINGS[draw(st.sampled_from(sorted(WHOLE_ENCODINGS)))](password)
    if how == "per-char":
        names = sorted(CHAR_ENCODINGS)
        return "".join(CHAR_ENCODINGS[draw(st.sampled_from(names))](ch) for ch in password)
    inner, outer = draw(st.lists(st.sampled_from(sorted(WHOLE_ENCODINGS)), min_size=2, max_size=2))
    return WHOLE_ENCODINGS[outer](WHOLE_ENCODINGS[inner](password))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), password=passwords, before=surroundings, after=surroundings)
def test_a_password_is_masked_in_any_encoding_of_an_echo(
    data: st.DataObject, password: str, before: str, after: str
) -> None:
    echo = data.draw(echoes(password))
    reply = before + echo + after
    stored = redact(reply, [password])
    for decoded in every_decoding(stored):
        assert password not in decoded, (reply, stored, decoded)


FIELD_ECHOES: tuple[Callable[[str], str], ...] = (
    lambda v: f"ERR:INVALID_REQUEST username=acme&password={quote_plus(v, safe='')}&to=4477009",
    lambda v: f"<p>Request.Form: username=acme&amp;PassWord={html.escape(quote(v))}</p>",
    lambda v: f'{{"username": "acme", "password": {json.dumps(v)}}}',
    lambda v: f'<input type="password" name="password" value="{html.escape(v)}">',
)


@settings(max_examples=300, deadline=None)
@given(
    value=st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="\uffff"),
        min_size=1,
        max_size=24,
    ),
    template=st.sampled_from(FIELD_ECHOES),
    how=st.sampled_from(sorted(WHOLE_ENCODINGS)),
)
def test_any_password_field_is_masked_whatever_its_value(
    value: str, template: Callable[[str], str], how: str
) -> None:
    # Not our password: a value the echo names a password all the same.
    encode = WHOLE_ENCODINGS[how]
    assume(not any(value in d for d in every_decoding(encode(template("")))))
    stored = redact(encode(template(value)))
    for decoded in every_decoding(stored):
        # The mask itself is not a leak, whatever characters the value shares with it.
        assert value not in decoded.replace(MASK, "\uffff"), (stored, decoded)


def test_the_encodings_the_issue_names_are_masked() -> None:
    password = "s3cr/t pa&ss"
    register_secret(password)
    for echo in (
        "s3cr%2Ft%20pa%26ss",
        "s3cr%2ft%20pa%26ss",
        "s3cr%2Ft+pa%26ss",
        "s3cr&#47;t pa&amp;ss",
        "s3cr&#x2F;t pa&#X26;ss",
        "s3cr&sol;t&nbsp;pa&amp;ss".replace("&nbsp;", " "),
        "s3cr\\u002ft pa\\u0026ss",
        "s3cr\\/t pa&ss",
        "s3cr%5Cu002ft%20pa%26amp%3Bss",
    ):
        stored = redact(f"<p>bad request: {echo}</p>")
        assert stored == f"<p>bad request: {MASK}</p>", echo


# --- control characters ------------------------------------------------------------

FORGERIES = {
    "newline": "x\n2026-01-01 00:00:00 INFO forged: login by admin",
    "carriage return": "x\r2026-01-01 00:00:00 INFO forged",
    "escape sequence": "x\x1b[2J\x1b[1;31mforged",
    "next line (C1)": "x\x852026-01-01 INFO forged",
    "line separator": "x\u20282026-01-01 INFO forged",
    "bidi override": "x\u202edegrof",
    "nul and delete": "x\x00\x7f",
}


@pytest.mark.parametrize("value", list(FORGERIES.values()), ids=list(FORGERIES))
def test_control_characters_from_a_request_cannot_forge_a_log_line(
    capture: tuple[logging.Logger, io.StringIO], value: str
) -> None:
    log, out = capture
    log.warning("dashboard login failed from %s", value)
    log.warning(f"path {value} refused")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert all(line.isprintable() for line in lines), lines
    # Kept, escaped, on the line it belongs to.
    assert all("\\" in line for line in lines)
    assert lines[1].startswith("WARNING path x")
    assert lines[1].endswith(" refused")


def test_a_traceback_keeps_its_lines_but_not_their_control_characters(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = capture
    try:
        raise ValueError("number \x1b[2Jx\rforged")
    except ValueError:
        log.exception("refused")
    text = out.getvalue()
    assert "Traceback (most recent call last)" in text
    assert text.count("\n") > 3
    assert "\x1b" not in text
    assert "\r" not in text
    assert "ValueError: number \\x1b[2Jx\\rforged" in text


def test_sanitise_escapes_only_control_characters() -> None:
    assert redaction.sanitise("café +44 7700 900123 «ok»") == "café +44 7700 900123 «ok»"
    assert redaction.sanitise("a\nb\tc\x1bd\u2028e") == "a\\nb\\tc\\x1bd\\u2028e"


_INERT_ALPHABET = "abcXYZ019._-"


@settings(max_examples=300, deadline=None)
@given(
    head=st.text(alphabet=_INERT_ALPHABET, max_size=30),
    tail=st.text(alphabet=_INERT_ALPHABET, max_size=30),
    secret=st.text(alphabet=_INERT_ALPHABET + "%+&\\=:@\"' ", min_size=4, max_size=12),
    echoed=st.booleans(),
    other=st.sampled_from(["", "-", "password", "pass.wd"]),
)
def test_the_plain_text_shortcut_masks_exactly_what_the_full_search_does(
    head: str, tail: str, secret: str, echoed: bool, other: str
) -> None:
    # redact() skips the decodings for text of letters, digits and ._- alone (a
    # gateway's message IDs); the answer must be the full search's, secret or not.
    text = head + (secret if echoed else other) + tail
    needles = set(redaction.registered_secrets()) | redaction._forms(secret)
    assert redaction.redact(text, [secret]) == redaction._masked(text, needles)


def test_a_plain_id_holding_the_password_is_masked() -> None:
    assert redaction.redact("ab12SecretPw34", ["SecretPw"]) == "ab12***34"
    assert redaction.redact("ab12-34.x_y", ["SecretPw"]) == "ab12-34.x_y"
