"""Dashboard logins and sessions on PostgreSQL over real HTTP: the throttle cannot lock
every operator out, the client's address comes through trusted proxies only, a key's
sessions end when it is revoked or rescoped whatever it is called, and the cookie's
Secure flag can be forced.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from dispatcher.api import create_app
from dispatcher.api.server import ServerThread
from dispatcher.dashboard.throttle import OPERATOR_ACCOUNT, LoginThrottle, account_of
from dispatcher.domain import proxies
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.service.dispatcher import Dispatcher
from dispatcher.service.keys import KeyStore
from support.reads import statements_starting
from support.settings import make_service

OPERATOR_PASSWORD = "correct horse battery staple 42"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
GUESSER = "203.0.113.9"
COLLEAGUE = "198.51.100.7"


class Browser:
    """One browser, behind the proxy at 127.0.0.1 that says it came from ``address``."""

    def __init__(self, base_url: str, address: str | None = None) -> None:
        headers = {"X-Forwarded-For": address} if address else {}
        self.client = httpx.Client(base_url=base_url, timeout=30.0, headers=headers)

    def login(self, secret: str, **headers: str) -> httpx.Response:
        """Log in with ``secret``; the login POST's answer (303 on success)."""
        page = self.client.get("/login")
        match = CSRF.search(page.text)
        assert match, page.text
        return self.client.post(
            "/login",
            data={"secret": secret, "csrf": match.group(1)},
            headers=headers,
            follow_redirects=False,
        )

    def status(self, path: str = "/") -> int:
        return self.client.get(path, follow_redirects=False).status_code


@dataclass
class App:
    """The app on a service of its own, and the browsers that visit it."""

    base_url: str
    keys: KeyStore
    browsers: list[Browser] = field(default_factory=list)

    def browser(self, address: str | None = None) -> Browser:
        """A new browser, behind the proxy that says it came from ``address``."""
        browser = Browser(self.base_url, address)
        self.browsers.append(browser)
        return browser


@pytest.fixture
def serve(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path
) -> Iterator[Callable[..., App]]:
    """Starts the app on PostgreSQL with some settings."""
    started: list[tuple[ServerThread, Dispatcher, App]] = []

    def start(**settings: Any) -> App:
        values = {
            "operator_password": OPERATOR_PASSWORD,
            "session_secret": "s" * 16 + secrets.token_hex(16),
            **settings,
        }
        service = make_service(pg_db, simulator, tmp_path, **values)
        server = ServerThread(create_app(service)).start()
        app = App(server.base_url, KeyStore(service.db))
        started.append((server, service, app))
        return app

    yield start
    for server, service, app in started:
        for browser in app.browsers:
            browser.client.close()
        server.stop()
        service.close()


# --- the throttle ------------------------------------------------------------------


def test_a_guesser_slows_only_the_operator_password_from_its_own_address(
    serve: Callable[..., App], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dispatcher.dashboard")
    app = serve(trusted_proxies="127.0.0.1")
    token, _ = app.keys.create("ops-alice", "operate", actor="test")
    guesser = app.browser(GUESSER)
    for i in range(6):
        assert guesser.login(f"guess-{i}").status_code == 401
    assert guesser.login(OPERATOR_PASSWORD).status_code == 429
    # The same proxy, another client: the password still works for a colleague...
    assert app.browser(COLLEAGUE).login(OPERATOR_PASSWORD).status_code == 303
    # ...and a key works even from the guesser's own address.
    assert app.browser(GUESSER).login(token).status_code == 303
    logged = [r.getMessage() for r in caplog.records if "dashboard login" in r.getMessage()]
    assert f"dashboard login failed from {GUESSER}" in logged
    assert f"dashboard login by operator (password) from {COLLEAGUE}" in logged


def test_forwarded_for_is_believed_only_from_trusted_proxies(
    serve: Callable[..., App],
) -> None:
    # The peer (127.0.0.1) is no trusted proxy: every spoofed header is the same client.
    app = serve(trusted_proxies="10.0.0.0/8")
    browser = app.browser()
    for i in range(6):
        spoofed = f"192.0.2.{i}"
        assert browser.login(f"guess-{i}", **{"X-Forwarded-For": spoofed}).status_code == 401
    answer = browser.login(OPERATOR_PASSWORD, **{"X-Forwarded-For": "192.0.2.200"})
    assert answer.status_code == 429

    # A trusted proxy: the address it appended counts, not what the client put before it.
    app = serve(trusted_proxies="127.0.0.1")
    browser = app.browser()
    for i in range(6):
        chain = f"192.0.2.{i}, {GUESSER}"
        assert browser.login(f"guess-{i}", **{"X-Forwarded-For": chain}).status_code == 401
    answer = browser.login(OPERATOR_PASSWORD, **{"X-Forwarded-For": f"192.0.2.99, {GUESSER}"})
    assert answer.status_code == 429


def test_a_guesser_cannot_escape_the_throttle_within_its_ipv6_network(
    serve: Callable[..., App],
) -> None:
    # One IPv6 host commonly holds a whole /64 (privacy addresses, SLAAC): a fresh
    # address per guess must not be a fresh start.
    app = serve(trusted_proxies="127.0.0.1")
    for i in range(6):
        guesser = app.browser(f"2001:db8:1:2::{i + 1:x}")
        assert guesser.login(f"guess-{i}").status_code == 401
    assert app.browser("2001:db8:1:2:ffff::9").login("guess-7").status_code == 429
    # Another network (a colleague's) is another client.
    assert app.browser("2001:db8:1:3::1").login(OPERATOR_PASSWORD).status_code == 303


def test_failures_double_the_wait_up_to_a_cap() -> None:
    throttle = LoginThrottle(free_failures=2, first_delay_s=1, max_delay_s=10)
    waits = [throttle.failed(OPERATOR_ACCOUNT, GUESSER, now=0.0) for _ in range(8)]
    assert waits == [0, 0, 1, 2, 4, 8, 10, 10]
    assert throttle.wait_s(OPERATOR_ACCOUNT, GUESSER, now=4.0) == 6
    assert throttle.wait_s(OPERATOR_ACCOUNT, COLLEAGUE, now=0.0) == 0
    assert throttle.wait_s(OPERATOR_ACCOUNT, GUESSER, now=10.0) == 0
    # Forgotten after an idle hour; forgotten at once after a success.
    assert throttle.failed(OPERATOR_ACCOUNT, GUESSER, now=10.0 + 3601) == 0
    throttle.succeeded(OPERATOR_ACCOUNT, GUESSER)
    assert throttle.wait_s(OPERATOR_ACCOUNT, GUESSER, now=10.0 + 3601) == 0


def test_wrong_tokens_never_delay_a_real_one() -> None:
    throttle = LoginThrottle(max_entries=100)
    real = "sdk_" + secrets.token_urlsafe(32)
    password_guess = throttle.failed(OPERATOR_ACCOUNT, GUESSER, now=0.0)
    for _ in range(500):
        wrong = account_of("sdk_" + secrets.token_urlsafe(32))
        for _ in range(6):
            throttle.failed(wrong, GUESSER, now=0.0)
    assert throttle.wait_s(account_of(real), GUESSER, now=0.0) == 0
    assert account_of(real).startswith("key:")
    assert account_of(OPERATOR_PASSWORD) == OPERATOR_ACCOUNT
    # A flood of tokens does not push the password guesser's record out.
    assert password_guess == 0
    for _ in range(5):
        throttle.failed(OPERATOR_ACCOUNT, GUESSER, now=0.0)
    assert throttle.wait_s(OPERATOR_ACCOUNT, GUESSER, now=0.0) > 0


@pytest.mark.parametrize(
    ("peer", "header", "trusted", "expected"),
    [
        ("127.0.0.1", [], "127.0.0.1", "127.0.0.1"),
        ("127.0.0.1", ["198.51.100.7"], "", "127.0.0.1"),
        ("127.0.0.1", ["198.51.100.7"], "127.0.0.1", "198.51.100.7"),
        ("10.0.0.5", ["6.6.6.6, 198.51.100.7, 10.0.0.9"], "10.0.0.0/8", "198.51.100.7"),
        ("10.0.0.5", ["6.6.6.6", "198.51.100.7:4711"], "10.0.0.0/8", "198.51.100.7"),
        ("10.0.0.5", ["[2001:db8::7]:443"], "10.0.0.0/8", "2001:db8::7"),
        ("::1", ["198.51.100.7"], "::1", "198.51.100.7"),
        ("::ffff:10.0.0.5", ["198.51.100.7"], "10.0.0.0/8", "198.51.100.7"),
        ("10.0.0.5", ["10.0.0.1, 10.0.0.2"], "10.0.0.0/8", "10.0.0.1"),
        ("10.0.0.5", ["198.51.100.7\r\nforged, not an address"], "10.0.0.0/8", "10.0.0.5"),
        (None, ["198.51.100.7"], "0.0.0.0/0", "unknown"),
    ],
)
def test_the_client_address_is_read_from_the_right(
    peer: str | None, header: list[str], trusted: str, expected: str
) -> None:
    networks = proxies.parse_networks(trusted.split(","))
    assert proxies.client_address(peer, header, networks) == expected


# --- sessions end with their key -----------------------------------------------------


def test_a_key_named_operator_is_revoked_like_any_other(
    serve: Callable[..., App],
) -> None:
    app = serve()
    token, _ = app.keys.create("operator", "operate", actor="test")
    browser = app.browser()
    assert browser.login(token).status_code == 303
    assert browser.status() == 200

    app.keys.revoke("operator", actor="test")
    assert browser.status() == 303
    # The login page offers a new login rather than bouncing back to the page.
    assert browser.status("/login") == 200


def test_rescoping_a_key_ends_its_sessions_at_the_next_request(
    serve: Callable[..., App], pg_db: Database
) -> None:
    app = serve()
    for i in range(20):
        app.keys.create(f"producer-{i}", "send", actor="test")
    token, info = app.keys.create("ops-bob", "operate", actor="test")
    browser = app.browser()
    assert browser.login(token).status_code == 303
    with statements_starting(pg_db, "SELECT") as selects:
        assert browser.status("/actions") == 200
    # The liveness check is one lookup by id, not a listing of every key.
    key_reads = [s for s in selects if "FROM api_keys" in s]
    assert len(key_reads) == 1, key_reads
    assert "api_keys.id =" in key_reads[0]

    with pg_db.transaction() as session:
        session.execute(
            text("UPDATE api_keys SET scopes = 'read,send' WHERE id = :id"), {"id": info.id}
        )
    assert browser.status("/actions") == 303


def test_changing_the_operator_password_ends_its_sessions(serve: Callable[..., App]) -> None:
    # A password that leaked is changed, and the server restarted with the same
    # session secret: the sessions it opened must end, as a revoked key's do.
    secret = "k" * 40
    before = serve(session_secret=secret)
    browser = before.browser()
    assert browser.login(OPERATOR_PASSWORD).status_code == 303
    cookies = browser.client.cookies

    for password, status in ((OPERATOR_PASSWORD, 200), ("a new passphrase, never leaked", 303)):
        after = serve(session_secret=secret, operator_password=password).browser()
        after.client.cookies = cookies
        assert after.status() == status, password


# --- the cookie ----------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "secure"), [(None, False), (True, True), (False, False)])
def test_the_cookie_secure_flag_can_be_forced_behind_a_tls_proxy(
    serve: Callable[..., App], setting: bool | None, secure: bool
) -> None:
    # Plain http here, as behind a proxy that terminates TLS. A browser would not send
    # a Secure cookie back over http, so only the header of the first answer is read.
    app = serve(cookie_secure=setting)
    answer = app.browser().client.get("/login")
    assert answer.status_code == 200
    flags = [part.strip().lower() for part in answer.headers["set-cookie"].split(";")]
    assert ("secure" in flags) is secure
