"""Callback URLs cannot reach inside: every spelling of a non-public host is refused at
enqueue, and a name that later resolves inside is refused at delivery, never connected."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update

from dispatcher.api import create_app
from dispatcher.api.server import ServerThread
from dispatcher.domain.statuses import DeliveryStatus
from dispatcher.errors import InvalidOptionError, UnsafeCallbackError
from dispatcher.gateway.addresses import AddressPolicy, system_resolver, why_not_public
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.gateway.webhook_client import WebhookClient
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Job, WebhookAttempt, WebhookDelivery
from dispatcher.service.dispatcher import Dispatcher
from dispatcher.service.keys import KeyStore
from support.numbers import number
from support.settings import make_service, make_settings
from support.webhooks import SECRET, Receiver, deliveries, receiver, tries

pytestmark = pytest.mark.usefixtures("clean_env")

__all__ = ["receiver"]  # the fixture, shared with service/test_webhooks.py

PUBLIC = "93.184.215.14"  # a public address; nothing here ever connects to it
LOOPBACK_ONLY = (ipaddress.ip_network("127.0.0.0/8"),)

# Written spellings of inside addresses that need no resolver to tell (or that the
# system resolver reads as the C library does).
INSIDE = [
    "localhost",
    "LOCALHOST.",
    "api.localhost",
    "ⓛocalhost",  # IDNA folds it to localhost
    "127.0.0.1",
    "127.1",
    "2130706433",
    "017700000001",
    "0x7f000001",
    "0x7f.1",
    "0177.0.0.1",
    "127.0.0.1.",
    "\uff11\uff12\uff17.\uff10.\uff10.\uff11",  # full-width 127.0.0.1, folded by IDNA
    "%31%32%37.0.0.1",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::127.0.0.1]",
    "[64:ff9b::7f00:1]",
    "[2002:7f00:1::1]",
    "[64:ff9b::a9fe:a9fe]",
    "169.254.169.254",
    "[fe80::1]",
    "[fd00:ec2::254]",
    "[fc00::1]",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",
    "0.0.0.0",
    "0",
    "[::]",
    "224.0.0.1",
    "[ff02::1]",
    "255.255.255.255",
    "192.0.2.1",
    "198.18.0.1",
    "240.0.0.1",
]


def url(host: str, port: int = 8080) -> str:
    return f"http://{host}:{port}/hook"


def checker(resolver: Callable[[str], list[str]] = system_resolver) -> WebhookClient:
    return WebhookClient(deadline_s=2.0, policy=AddressPolicy(), resolver=resolver)


# --- the check itself, with the system resolver --------------------------------------


@pytest.mark.parametrize("host", INSIDE)
def test_every_spelling_of_an_inside_address_is_refused(host: str) -> None:
    with pytest.raises(UnsafeCallbackError, match="callback_url"):
        checker().check(url(host))


def test_the_system_resolver_reads_localhost_and_legacy_numbers_as_loopback() -> None:
    """The real resolver path: the C library reads these as 127.0.0.1, which is why
    they are resolved and every answer checked rather than parsed by hand."""
    assert {"127.0.0.1"} <= set(system_resolver("localhost")) <= {"127.0.0.1", "::1"}
    for spelling in ("127.1", "2130706433", "0x7f.1", "0177.0.0.1", "017700000001"):
        assert system_resolver(spelling) == ["127.0.0.1"], spelling
        with pytest.raises(UnsafeCallbackError, match="resolves to a loopback address"):
            checker().check(url(spelling))


@pytest.mark.parametrize(
    "host", [PUBLIC, "134744072", "0x8.0x8.0x8.0x8", "[2606:4700:4700::1111]", "[::ffff:8.8.8.8]"]
)
def test_public_addresses_pass_in_any_spelling(host: str) -> None:
    checker().check(url(host))


def test_a_name_passes_only_if_every_address_it_resolves_to_is_public() -> None:
    assert why_not_public(ipaddress.ip_address(PUBLIC)) is None
    checker(lambda _host: [PUBLIC]).check(url("hooks.example.net"))
    with pytest.raises(UnsafeCallbackError, match="resolves to a private address"):
        checker(lambda _host: [PUBLIC, "10.1.2.3"]).check(url("hooks.example.net"))
    with pytest.raises(UnsafeCallbackError, match="does not resolve"):
        checker().check(url("no-such-host.invalid"))


def test_the_allowlist_lets_chosen_networks_through_and_nothing_else() -> None:
    policy = AddressPolicy(allowed=LOOPBACK_ONLY)
    allowed = WebhookClient(deadline_s=2.0, policy=policy)
    allowed.check(url("127.0.0.1"))
    allowed.check(url("[::ffff:127.0.0.1]"))
    with pytest.raises(UnsafeCallbackError):
        allowed.check(url("10.0.0.1"))
    with pytest.raises(UnsafeCallbackError, match="not localhost"):
        allowed.check(url("localhost"))
    WebhookClient(deadline_s=2.0, policy=AddressPolicy(allow_all=True)).check(url("localhost"))


# --- generated spellings -------------------------------------------------------------

INSIDE_V4 = [
    ipaddress.IPv4Network(n)
    for n in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "0.0.0.0/8",
    )
]
PUBLIC_V4 = [ipaddress.IPv4Network(n) for n in ("8.0.0.0/8", "1.1.1.0/24", "93.184.0.0/16")]


def _addresses(networks: list[ipaddress.IPv4Network]) -> st.SearchStrategy[ipaddress.IPv4Address]:
    return st.sampled_from(networks).flatmap(
        lambda net: st.integers(int(net.network_address), int(net.broadcast_address)).map(
            ipaddress.IPv4Address
        )
    )


@st.composite
def _number(draw: st.DrawFn, value: int) -> str:
    """``value`` in decimal, octal or hex, as inet_aton reads each part."""
    base = draw(st.sampled_from(["dec", "oct", "hex", "HEX"]))
    if base == "oct":
        return "0" + format(value, "o")
    if base == "hex":
        return "0x" + format(value, "x")
    if base == "HEX":
        return "0X" + format(value, "X")
    return str(value)


@st.composite
def spellings(draw: st.DrawFn, address: ipaddress.IPv4Address) -> str:
    """One way of writing ``address`` in a URL's host that reaches it."""
    a, b, c, d = address.packed
    value = int(address)
    high, low = value >> 16, value & 0xFFFF
    form = draw(
        st.sampled_from(
            ["integer", "dotted", "three", "two", "mapped", "mapped-hex", "nat64", "6to4"]
        )
    )
    if form == "integer":
        host = draw(_number(value))
    elif form == "dotted":
        host = ".".join([draw(_number(part)) for part in (a, b, c, d)])
    elif form == "three":
        host = ".".join([draw(_number(a)), draw(_number(b)), draw(_number(c << 8 | d))])
    elif form == "two":
        host = ".".join([draw(_number(a)), draw(_number(value & 0xFFFFFF))])
    elif form == "mapped":
        return f"[::ffff:{address}]"
    elif form == "mapped-hex":
        return f"[::ffff:{high:x}:{low:x}]"
    elif form == "nat64":
        return f"[64:ff9b::{high:x}:{low:x}]"
    else:
        return f"[2002:{high:x}:{low:x}::1]"
    return host + draw(st.sampled_from(["", "."]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_generated_spellings_of_inside_addresses_are_all_refused(data: st.DataObject) -> None:
    address = data.draw(_addresses(INSIDE_V4), label="address")
    host = data.draw(spellings(address), label="host")
    with pytest.raises(UnsafeCallbackError, match="must reach a public address"):
        checker().check(url(host))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_same_spellings_of_public_addresses_pass(data: st.DataObject) -> None:
    """The control: the check reads the spellings, it does not refuse odd-looking hosts."""
    address = data.draw(_addresses(PUBLIC_V4), label="address")
    checker().check(url(data.draw(spellings(address), label="host")))


# --- at enqueue: send(), and 422 from the API ----------------------------------------


@pytest.fixture
def guarded(
    database: Database, simulator: GatewaySimulator, tmp_path: Path
) -> Iterator[Dispatcher]:
    """A Dispatcher with webhooks on and no network allowed but the public one."""
    svc = make_service(database, simulator, tmp_path, webhook_secret=SECRET, webhook_max_attempts=2)
    try:
        yield svc
    finally:
        svc.close()


def test_enqueue_refuses_inside_callbacks_before_writing(guarded: Dispatcher) -> None:
    for host in ("localhost", "2130706433", "[::ffff:7f00:1]", "169.254.169.254", "10.0.0.1"):
        with pytest.raises(InvalidOptionError, match="public address"):
            guarded.enqueue(number(1), "x", callback_url=url(host))
    with guarded.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


@pytest.mark.services
def test_the_api_answers_422_for_an_inside_callback(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    service = Dispatcher(make_settings(pg_db, simulator, tmp_path, webhook_secret=SECRET))
    token, _info = KeyStore(pg_db).create("hooks", "send,read", actor="test")
    try:
        with ServerThread(create_app(service)) as server:
            response = requests.post(
                server.base_url + "/v1/jobs",
                json={"to": number(1), "text": "hi", "callback_url": "http://0x7f.1:9/hook"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
    finally:
        service.close()
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_option"
    assert "resolves to a loopback address" in error["message"]
    assert "127.0.0.1" not in error["message"], "no resolved address is told to the producer"


# --- at delivery: resolved again, connected only to a vetted address -----------------


class Rebinding:
    """A resolver that answers ``first`` once, then ``later``: DNS rebinding."""

    def __init__(self, first: str, later: str) -> None:
        self.answers = [first]
        self.later = later
        self.asked: list[str] = []

    def __call__(self, host: str) -> list[str]:
        self.asked.append(host)
        return [self.answers.pop(0) if self.answers else self.later]


def test_a_name_that_rebinds_to_loopback_is_never_connected(
    guarded: Dispatcher, receiver: Receiver
) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    resolver = Rebinding(PUBLIC, "127.0.0.1")
    guarded.webhooks.client.resolver = resolver
    guarded.enqueue(number(1), "x", callback_url=f"http://rebind.example.net:{port}/hook")
    guarded.dispatch_due(worker="w")
    guarded.sweep()

    assert guarded.webhooks.deliver_due() == 1
    [delivery] = deliveries(guarded.db)
    assert delivery.status == DeliveryStatus.QUEUED, "refused like any failed try: retried"
    with guarded.db.transaction() as session:
        session.execute(update(WebhookDelivery).values(due_at=WebhookDelivery.created_at))
    assert guarded.webhooks.deliver_due() == 1

    assert receiver.received == [], "nothing reached the receiver on 127.0.0.1"
    attempts: list[WebhookAttempt] = tries(guarded.db)
    assert [a.http_status for a in attempts] == [None, None]
    for attempt in attempts:
        assert attempt.error is not None
        assert attempt.error.startswith("refused, not connected")
        assert "loopback address (127.0.0.1)" in attempt.error
    [delivery] = deliveries(guarded.db)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 2)
    assert resolver.asked == ["rebind.example.net"] * 3, "checked at enqueue, then each try"


def test_the_vetted_address_is_connected_with_the_urls_host_kept(
    guarded: Dispatcher, receiver: Receiver
) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    guarded.webhooks.client.policy = AddressPolicy(allowed=LOOPBACK_ONLY)
    guarded.webhooks.client.resolver = lambda _host: ["127.0.0.1"]
    guarded.enqueue(number(1), "x", callback_url=f"http://Hooks.Example.TEST.:{port}/h?x=1")
    guarded.dispatch_due(worker="w")
    guarded.sweep()
    guarded.webhooks.deliver_due()

    [(headers, _body)] = receiver.received
    assert headers["Host"] == f"hooks.example.test:{port}"
    assert [d.status for d in deliveries(guarded.db)] == [DeliveryStatus.DELIVERED]


def _read_request(tls: ssl.SSLSocket) -> None:
    """Read one whole request, headers and body: a server that closes with part of the
    request unread makes the kernel reset the connection, and the client may then
    lose the answer already sent (a flaky "closed without response")."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = tls.recv(65536)
        if not chunk:
            return
        body += chunk


def test_tls_goes_to_the_vetted_address_with_sni_and_verification_for_the_name(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("hooks.example.test").configure_cert(context)
    names: list[str | None] = []

    def note_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)

    context.sni_callback = note_sni
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    _read_request(tls)
                    tls.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            except (OSError, ssl.SSLError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = WebhookClient(
        deadline_s=5.0,
        policy=AddressPolicy(allowed=LOOPBACK_ONLY),
        resolver=lambda _host: ["127.0.0.1"],
        ca_certs=str(ca_file),
    )
    try:
        good = client.post(f"https://hooks.example.test:{port}/h", b"{}", {})
        wrong = client.post(f"https://other.example.test:{port}/h", b"{}", {})
    finally:
        listener.close()
        thread.join(timeout=5)
    assert (good.status, good.error) == (204, None)
    assert names[0] == "hooks.example.test"
    assert wrong.status is None
    assert wrong.error is not None
    assert "other.example.test" in wrong.error, "the certificate is checked against the name"
