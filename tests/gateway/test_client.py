"""GatewayClient over real HTTP: outcomes, failover, timeouts, TLS and redaction.

The gateway is the project's simulator, on loopback. Where the simulator cannot
show something (what exactly goes on the wire, a server that closes idle
keep-alive connections, TLS), a small real server of our own built on
``http.server``, ``socket`` and ``ssl`` stands in for the gateway's transport.
Nothing of ``requests`` or of the dispatcher is mocked. No traffic leaves
loopback: the second host is 127.0.0.2 (loopback on Linux), so the two hosts of a
failover are told apart in ``hosts_tried``.

Every test also checks that the client's password appears in no submission error,
stored reply, repr, exception chain or log line (see ``assert_no_secret`` and the
autouse ``captured_logs`` fixture).
"""

from __future__ import annotations

import http.server
import io
import logging
import re
import select
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, quote_plus

import pytest
import requests

from dispatcher.domain import redaction
from dispatcher.domain.message import TYPE_VOICE
from dispatcher.errors import (
    AmbiguousGatewayError,
    GatewayConnectError,
    GatewayError,
    PermanentGatewayError,
    TransientGatewayError,
)
from dispatcher.gateway import client as client_module
from dispatcher.gateway.client import MAX_REPLY_BYTES, GatewayClient, Message, Submission
from dispatcher.gateway.config import GatewayConfig
from dispatcher.gateway.protocol import BALANCE_PATH, CODE_UNREADABLE_REPLY, SEND_PATH, Outcome
from dispatcher.gateway.simulator import (
    FIRST_MESSAGE_ID,
    UNLIMITED_BALANCE,
    GatewaySimulator,
    SimulatorConfig,
)

USERNAME = "client-user"
# Distinctive, and with characters that URL-encoding changes, so the encoded forms
# (the ones that travel in a form body) differ from the plain one.
PASSWORD = "Zq7+pw/s3cr3t&Kx~9"
WRONG_PASSWORD = "Wr0ng+pass/&word~X"
# A number rule's code must look like an error code; this one echoes as ERR:<password>.
CODE_LIKE_PASSWORD = "ECHOED_PW_7QZ3K"
SECRETS = (PASSWORD, WRONG_PASSWORD, CODE_LIKE_PASSWORD)

PRIMARY_HOST = "127.0.0.2"
BACKUP_HOST = "127.0.0.1"
PREFIX = "/smsgateway"
FIRST_ID = str(FIRST_MESSAGE_ID)

NUMBER_A = "447700900001"
NUMBER_B = "447700900002"
NUMBER_C = "447700900003"

CONNECT_TIMEOUT_S = 1.0
READ_TIMEOUT_S = 5.0


# ------------------------------------------------------------------ redaction checks


def secret_forms(secret: str) -> set[str]:
    """The secret as it may appear: plain, or URL-encoded as in a form body."""
    return {secret, quote(secret, safe=""), quote_plus(secret, safe="")}


def assert_no_secret(text: str | None, what: str, secrets: Sequence[str] = SECRETS) -> None:
    """Fail if any form of any of ``secrets`` appears in ``text``."""
    if text is None:
        return
    for secret in secrets:
        for form in secret_forms(secret):
            assert form not in text, f"the password leaks through {what}: {text!r}"


def exception_texts(exc: BaseException) -> str:
    """Everything an exception and its chain can print: traceback, str, repr, args."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current), *map(repr, current.args)]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def submit(client: GatewayClient, numbers: Sequence[str], message: Message) -> Submission:
    """``client.submit`` that also checks the record it returns holds no password."""
    submission = client.submit(numbers, message)
    assert_no_secret(submission.error, "Submission.error")
    assert_no_secret(submission.raw_reply, "Submission.raw_reply")
    return submission


def balance_error(client: GatewayClient) -> GatewayError:
    """The GatewayError ``client.balance()`` raises, checked for the password."""
    with pytest.raises(GatewayError) as info:
        client.balance()
    assert_no_secret(exception_texts(info.value), "a balance() exception or its chain")
    return info.value


def send(client: GatewayClient, *numbers: str, text: str = "hello") -> Submission:
    return submit(client, list(numbers) or [NUMBER_A], Message(text))


@dataclass
class CapturedLogs:
    """Log output of the ``dispatcher`` and ``urllib3`` loggers at DEBUG."""

    filtered: io.StringIO = field(default_factory=io.StringIO)
    raw: io.StringIO = field(default_factory=io.StringIO)


@pytest.fixture(autouse=True)
def isolated_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets the clients register here do not outlive the test."""
    monkeypatch.setattr(redaction, "_secrets", frozenset())


@pytest.fixture(autouse=True)
def captured_logs(isolated_secrets: None) -> Iterator[CapturedLogs]:
    """Capture the client's and urllib3's logs; at the end, no password may be in them.

    One handler carries the redacting filter, installed by ``redaction.install``.
    Another, ahead of it, sees the records unfiltered: the client should not
    depend on the filter to keep the password out of its own log lines.
    """
    logs = CapturedLogs()
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    filtered = logging.StreamHandler(logs.filtered)
    raw = logging.StreamHandler(logs.raw)
    for handler in (filtered, raw):
        handler.setFormatter(formatter)
        handler.setLevel(logging.DEBUG)
    loggers = [logging.getLogger("dispatcher"), logging.getLogger("urllib3")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.addHandler(filtered)
        redaction.install(logger)
        # Ahead of the filtered handler: the filter rewrites the record it passes.
        logger.handlers.insert(0, raw)
    try:
        yield logs
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(raw)
            logger.removeHandler(filtered)
            logger.setLevel(level)
        filtered.close()
        raw.close()
    assert_no_secret(logs.filtered.getvalue(), "log output behind the redacting filter")
    assert_no_secret(logs.raw.getvalue(), "the client's own log lines (before any filter)")


# ------------------------------------------------------------------ clients and hosts


class MakeClient(Protocol):
    def __call__(
        self,
        url: str,
        backup_url: str | None = None,
        *,
        username: str = USERNAME,
        password: str = PASSWORD,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        pool_idle_s: float = 2.0,
        ca_bundle: Path | None = None,
        session: requests.Session | None = None,
    ) -> GatewayClient: ...


def host_names(submission: Submission) -> list[str]:
    """The hosts tried, without their ports (the tests tell hosts apart by address)."""
    return [h.rsplit(":", 1)[0] for h in submission.hosts_tried]


@pytest.fixture
def make_client() -> Iterator[MakeClient]:
    """Builds GatewayClients; checks their reprs for the password and closes them."""
    made: list[GatewayClient] = []

    def make(
        url: str,
        backup_url: str | None = None,
        *,
        username: str = USERNAME,
        password: str = PASSWORD,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        pool_idle_s: float = 2.0,
        ca_bundle: Path | None = None,
        session: requests.Session | None = None,
    ) -> GatewayClient:
        config = GatewayConfig(
            url=url,
            backup_url=backup_url,
            username=username,
            password=password,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            pool_idle_s=pool_idle_s,
            ca_bundle=str(ca_bundle) if ca_bundle else None,
        )
        client = GatewayClient(config, session=session)
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            client.close()
    for client in made:
        assert_no_secret(repr(client), "repr(client)")
        assert_no_secret(repr(client.config), "repr(config)")
        assert_no_secret(str(client.config), "str(config)")


def start_simulator(host: str = BACKUP_HOST, **knobs: Any) -> GatewaySimulator:
    config = SimulatorConfig(username=USERNAME, password=PASSWORD, seed=1).with_changes(knobs)
    simulator = GatewaySimulator(config, host=host)
    simulator.start_in_thread()
    return simulator


@pytest.fixture
def sim() -> Iterator[GatewaySimulator]:
    """The gateway simulator on 127.0.0.1 (the backup host in failover tests)."""
    simulator = start_simulator(BACKUP_HOST)
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
def primary_sim() -> Iterator[GatewaySimulator]:
    """A second simulator, on 127.0.0.2 (the primary host in failover tests)."""
    simulator = start_simulator(PRIMARY_HOST)
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
def client(sim: GatewaySimulator, make_client: MakeClient) -> GatewayClient:
    """A client of the simulator alone, no backup host."""
    return make_client(sim.base_url)


def dead_url(host: str = PRIMARY_HOST, scheme: str = "http") -> str:
    """A base URL on a loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return f"{scheme}://{host}:{port}{PREFIX}"


def url_of(sock: socket.socket, scheme: str = "http") -> str:
    host, port = sock.getsockname()[:2]
    return f"{scheme}://{host}:{port}{PREFIX}"


def ledger_numbers(simulator: GatewaySimulator) -> list[str]:
    return [entry["number"] for entry in simulator.ledger()]


def outcomes_of(submission: Submission) -> list[Outcome]:
    return [o.outcome for o in submission.outcomes]


def codes_of(submission: Submission) -> list[str | None]:
    return [o.error_code for o in submission.outcomes]


# ------------------------------------------------------------------ our own small servers


@dataclass
class Recorded:
    """One request as a server of ours received it."""

    request_line: str
    path: str
    headers: dict[str, str]
    body: bytes


class FakeGateway(http.server.ThreadingHTTPServer):
    """A tiny keep-alive HTTP/1.1 gateway: records requests, answers fixed replies.

    ``reset_stale_after_s`` makes the race of a server closing an idle keep-alive
    connection just as the client reuses it deterministic: a request arriving on a
    connection idle longer than that is answered with a TCP reset and nothing else.
    """

    daemon_threads = False
    block_on_close = True

    def __init__(
        self,
        host: str = BACKUP_HOST,
        *,
        idle_timeout_s: float | None = None,
        reset_stale_after_s: float | None = None,
        send_reply: str = "ID:123",
        balance_reply: str = "BALANCE:7",
    ) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.reset_stale_after_s = reset_stale_after_s
        self.send_reply = send_reply
        self.balance_reply = balance_reply
        self.recorded: list[Recorded] = []
        self.connections = 0
        self.resets = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        super().__init__((host, 0), _FakeGatewayHandler)

    @property
    def base_url(self) -> str:
        return url_of(self.socket)


class _FakeGatewayHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5.0  # for reading a request once it has begun
    server: FakeGateway

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection:
            idle_since = time.monotonic()
            if not self._next_request_arrives():
                return
            stale_after_s = self.server.reset_stale_after_s
            if stale_after_s is not None and time.monotonic() - idle_since > stale_after_s:
                # Linger 0: close() sends RST, as a server tearing the connection down does.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                with self.server.lock:
                    self.server.resets += 1
                return
            self.handle_one_request()

    def _next_request_arrives(self) -> bool:
        """Wait for the next request on this connection.

        False when the server's idle timeout passes first (the connection is then
        closed), when the client closes it, or when the server is stopping.
        """
        idle_timeout_s = self.server.idle_timeout_s
        started = time.monotonic()
        while not self.server.stopping.is_set():
            if idle_timeout_s is not None and time.monotonic() - started > idle_timeout_s:
                return False
            readable, _, _ = select.select([self.connection], [], [], 0.02)
            if readable:
                return bool(self.connection.recv(1, socket.MSG_PEEK))
        return False

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.recorded.append(
                Recorded(self.requestline, self.path, dict(self.headers.items()), body)
            )
        page = self.path.rsplit("/", 1)[-1].lower()
        reply = self.server.balance_reply if page == "getbalance.aspx" else self.server.send_reply
        payload = reply.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving(server: FakeGateway) -> Iterator[None]:
    """Serve from a thread for the block; then stop, close and join everything."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextmanager
def listening_socket(host: str = PRIMARY_HOST, backlog: int = 8) -> Iterator[socket.socket]:
    """A socket that listens and never accepts: the kernel completes TCP handshakes."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        sock.listen(backlog)
        yield sock


# ------------------------------------------------------------------ TLS material


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A self-signed certificate for both loopback hosts, made by the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed (and `cryptography` is not a dependency)")
    folder = tmp_path_factory.mktemp("tls")
    files = TlsFiles(cert=folder / "cert.pem", key=folder / "key.pem")
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(files.key),
            "-out",
            str(files.cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,IP:127.0.0.2",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return files


def server_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    return context


class TlsGateway:
    """A one-connection TLS gateway on 127.0.0.2 for the tests that trust it.

    It reads one whole request, then either answers ``ID:123`` or, with
    ``corrupt_reply``, writes bytes that are no TLS record onto the TCP stream,
    so the client's TLS layer fails while waiting for the reply to a request
    that has already arrived.
    """

    def __init__(self, files: TlsFiles, *, corrupt_reply: bool) -> None:
        self._context = server_context(files)
        self._corrupt = corrupt_reply
        self.received: list[bytes] = []
        self._listener = socket.socket()
        self._listener.bind((PRIMARY_HOST, 0))
        self._listener.listen(8)
        self._listener.settimeout(10)
        self.base_url = url_of(self._listener, "https")
        self._thread = threading.Thread(target=self._serve_one)

    def __enter__(self) -> TlsGateway:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._thread.join(15)
        self._listener.close()

    def _serve_one(self) -> None:
        try:
            raw, _ = self._listener.accept()
        except OSError:
            return
        raw.settimeout(10)
        with raw, self._context.wrap_socket(raw, server_side=True) as conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(body) < length:
                body += conn.recv(65536)
            self.received.append(head + b"\r\n\r\n" + body)
            if self._corrupt:
                # Around the TLS layer, straight onto TCP: garbage where a record belongs.
                socket.socket.sendall(conn, b"\x17\x03\x03\x00\x20" + b"\x5a" * 32)
            else:
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: 6\r\nConnection: close\r\n\r\nID:123"
                )
            # Keep the connection until the client has read (or failed on) the reply.
            conn.settimeout(5)
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass


# ================================================================== success


def test_single_recipient_accepted_with_the_exact_gateway_id(
    sim: GatewaySimulator, client: GatewayClient
) -> None:
    sim.configure(latency_ms=30)

    submission = send(client, NUMBER_A, text="Hello")

    [outcome] = submission.outcomes
    assert outcome.outcome is Outcome.ACCEPTED
    assert outcome.number == NUMBER_A
    assert outcome.gateway_message_id == FIRST_ID
    assert isinstance(outcome.gateway_message_id, str)
    assert int(FIRST_ID) > 2**63  # would not survive a 64-bit integer column
    assert submission.gateway_message_id == FIRST_ID
    assert submission.host.rsplit(":", 1)[0] == BACKUP_HOST
    assert host_names(submission) == [BACKUP_HOST]
    assert submission.http_status == 200
    assert submission.raw_reply == f"ID:{FIRST_ID}"
    assert submission.error is None
    assert submission.numbers == [NUMBER_A]
    assert 30 <= submission.latency_ms < 5000
    [entry] = sim.ledger()
    assert (entry["number"], entry["message_id"], entry["text"]) == (NUMBER_A, FIRST_ID, "Hello")


def test_multi_recipient_accepted_each_with_the_submission_id(
    sim: GatewaySimulator, client: GatewayClient
) -> None:
    submission = submit(
        client,
        [NUMBER_A, "07700900002", NUMBER_C],
        Message("Hé €", sender="Acme", maxconcat=2, usercontext="ref-9"),
    )

    assert outcomes_of(submission) == [Outcome.ACCEPTED] * 3
    assert [o.gateway_message_id for o in submission.outcomes] == [FIRST_ID] * 3
    # The gateway replies in international form; the outcome keeps the number we sent.
    assert [o.number for o in submission.outcomes] == [NUMBER_A, "07700900002", NUMBER_C]
    assert [o.reply_number for o in submission.outcomes] == [NUMBER_A, NUMBER_B, NUMBER_C]
    assert submission.raw_reply == "".join(
        f"{n},ID:{FIRST_ID}\r\n" for n in (NUMBER_A, NUMBER_B, NUMBER_C)
    )
    assert submission.latency_ms > 0
    ledger = sim.ledger()
    assert [e["number"] for e in ledger] == [NUMBER_A, NUMBER_B, NUMBER_C]
    assert {(e["text"], e["sender"], e["usercontext"], e["maxconcat"]) for e in ledger} == {
        ("Hé €", "Acme", "ref-9", 2)
    }


def test_consecutive_submissions_keep_their_own_ids(
    sim: GatewaySimulator, client: GatewayClient
) -> None:
    first = send(client, NUMBER_A)
    second = send(client, NUMBER_B)

    assert first.gateway_message_id == FIRST_ID
    assert second.gateway_message_id == str(FIRST_MESSAGE_ID + 1)
    assert [e["message_id"] for e in sim.ledger()] == [FIRST_ID, str(FIRST_MESSAGE_ID + 1)]
    assert sim.stats()["requests_by_path"] == {SEND_PATH: 2}


def test_the_request_is_a_post_form_with_no_credentials_in_the_url(
    make_client: MakeClient,
) -> None:
    gateway = FakeGateway(send_reply="ID:18446744073709551617")
    with serving(gateway):
        client = make_client(gateway.base_url)
        submission = submit(
            client,
            [NUMBER_A, NUMBER_B],
            Message("Hé €", sender="Acme", maxconcat=3, message_type=TYPE_VOICE, usercontext="r1"),
        )
        balance = client.balance()

    assert submission.gateway_message_id == "18446744073709551617"
    assert balance == 7.0
    send_request, balance_request = gateway.recorded
    assert send_request.request_line == f"POST {PREFIX}{SEND_PATH} HTTP/1.1"
    assert balance_request.request_line == f"POST {PREFIX}{BALANCE_PATH} HTTP/1.1"
    for request in (send_request, balance_request):
        assert "?" not in request.path
        assert_no_secret(request.request_line, "the request line (a URL)")
        assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert request.headers["User-Agent"] == "sms-dispatcher"
    form = parse_qs(send_request.body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    assert form == {
        "username": [USERNAME],
        "password": [PASSWORD],
        "to": [f"{NUMBER_A},{NUMBER_B}"],
        "text": ["Hé €"],
        "from": ["Acme"],
        "maxconcat": ["3"],
        "type": ["6"],
        "usercontext": ["r1"],
    }
    balance_form = parse_qs(balance_request.body.decode("ascii"), strict_parsing=True)
    assert balance_form == {"username": [USERNAME], "password": [PASSWORD]}


# ================================================================== gateway error codes


def test_wrong_password_is_login_invalid(sim: GatewaySimulator, make_client: MakeClient) -> None:
    client = make_client(sim.base_url, password=WRONG_PASSWORD)

    submission = send(client, NUMBER_A, NUMBER_B)

    assert outcomes_of(submission) == [Outcome.LOGIN_INVALID] * 2
    assert codes_of(submission) == ["LOGIN_INVALID"] * 2
    assert submission.raw_reply == "ERR:LOGIN_INVALID"
    assert submission.http_status == 200
    assert submission.error is None
    assert sim.ledger() == []


def test_no_credit_is_insufficient_credit(sim: GatewaySimulator, client: GatewayClient) -> None:
    sim.configure(credit=0)

    submission = send(client, NUMBER_A)

    assert outcomes_of(submission) == [Outcome.NO_CREDIT]
    assert codes_of(submission) == ["INSUFFICIENT_CREDIT"]
    assert sim.ledger() == []


def test_invalid_number_rejects_only_that_recipient(
    sim: GatewaySimulator, client: GatewayClient
) -> None:
    sim.configure(number_rules={NUMBER_C: "INVALID_NUMBER"})

    alone = send(client, NUMBER_C)
    mixed = send(client, NUMBER_A, NUMBER_C)

    assert outcomes_of(alone) == [Outcome.REJECTED]
    assert codes_of(alone) == ["INVALID_NUMBER"]
    assert outcomes_of(mixed) == [Outcome.ACCEPTED, Outcome.REJECTED]
    assert codes_of(mixed) == [None, "INVALID_NUMBER"]
    assert mixed.outcomes[0].gateway_message_id == FIRST_ID
    assert ledger_numbers(sim) == [NUMBER_A]


@pytest.mark.parametrize("code", ["GATEWAY_ERROR", "INTERNAL_ERROR"])
def test_transient_codes_are_transient(
    sim: GatewaySimulator, client: GatewayClient, code: str
) -> None:
    sim.configure(transient_error_rate=1.0, transient_code=code)

    submission = send(client, NUMBER_A, NUMBER_B)

    assert outcomes_of(submission) == [Outcome.TRANSIENT] * 2
    assert codes_of(submission) == [code] * 2
    assert submission.raw_reply == f"ERR:{code}"
    assert sim.ledger() == []


def test_unknown_code_is_kept_verbatim_as_a_request_error(
    sim: GatewaySimulator, client: GatewayClient
) -> None:
    sim.configure(number_rules={NUMBER_B: "MADE_UP_CODE_42"})

    alone = send(client, NUMBER_B)
    mixed = send(client, NUMBER_A, NUMBER_B)

    assert outcomes_of(alone) == [Outcome.REQUEST_INVALID]
    assert codes_of(alone) == ["MADE_UP_CODE_42"]
    assert outcomes_of(mixed) == [Outcome.ACCEPTED, Outcome.REQUEST_INVALID]
    assert codes_of(mixed) == [None, "MADE_UP_CODE_42"]


@dataclass(frozen=True)
class BadRequest:
    """A request the client builds as asked that the gateway refuses as malformed."""

    code: str
    numbers: tuple[str, ...] = (NUMBER_A,)
    message: Message = field(default_factory=lambda: Message("hello"))
    username: str = USERNAME
    password: str = PASSWORD


@pytest.mark.parametrize(
    "case",
    [
        # The client sends every mandatory parameter, but sends it empty if given empty.
        BadRequest("NO_TEXT", message=Message("")),
        BadRequest("NO_TO", numbers=(" ",)),
        BadRequest("NO_USERNAME", username=""),
        BadRequest("NO_PASSWORD", password=""),
        BadRequest("INVALID_REQUEST", message=Message("hello", maxconcat=256)),
        BadRequest("INVALID_REQUEST", message=Message("hello", message_type=3)),
    ],
    ids=lambda case: f"{case.code}",
)
def test_malformed_requests_are_request_errors(
    sim: GatewaySimulator, make_client: MakeClient, case: BadRequest
) -> None:
    client = make_client(sim.base_url, username=case.username, password=case.password)

    submission = submit(client, list(case.numbers), case.message)

    assert outcomes_of(submission) == [Outcome.REQUEST_INVALID]
    assert codes_of(submission) == [case.code]
    assert submission.raw_reply == f"ERR:{case.code}"
    assert sim.ledger() == []


# ================================================================== HTTP and transport faults


@pytest.mark.parametrize("status", [503, 429])
def test_http_503_and_429_are_transient(
    sim: GatewaySimulator, client: GatewayClient, status: int
) -> None:
    sim.configure(http_error_rate=1.0, http_error_status=status, http_error_body="Busy")

    submission = send(client, NUMBER_A, NUMBER_B)

    assert outcomes_of(submission) == [Outcome.TRANSIENT] * 2
    assert codes_of(submission) == [f"HTTP_{status}"] * 2
    assert submission.http_status == status
    assert submission.raw_reply == "Busy"
    assert sim.ledger() == []


def test_http_500_with_an_html_page_is_ambiguous(
    sim: GatewaySimulator, client: GatewayClient
) -> None:
    page = "<html><body><h1>Server Error in '/' Application.</h1></body></html>"
    sim.configure(http_error_rate=1.0, http_error_status=500, http_error_body=page)

    submission = send(client, NUMBER_A)

    assert outcomes_of(submission) == [Outcome.AMBIGUOUS]
    assert codes_of(submission) == ["HTTP_500"]
    assert submission.http_status == 500
    assert submission.raw_reply == page


def test_garbage_reply_is_ambiguous_and_the_gateway_had_accepted(
    sim: GatewaySimulator, client: GatewayClient
) -> None:
    sim.configure(garbage_rate=1.0)

    submission = send(client, NUMBER_A, NUMBER_B)

    assert outcomes_of(submission) == [Outcome.AMBIGUOUS] * 2
    assert codes_of(submission) == ["UNREADABLE_REPLY"] * 2
    assert submission.http_status == 200
    assert submission.raw_reply is not None
    # The NUL that leads every garbage reply is stored as U+FFFD (PostgreSQL text has no NUL).
    assert submission.raw_reply.startswith("\ufffd")
    assert "\x00" not in submission.raw_reply
    assert ledger_numbers(sim) == [NUMBER_A, NUMBER_B]


def test_a_reply_cut_short_keeps_the_ids_of_its_whole_lines(
    sim: GatewaySimulator, client: GatewayClient
) -> None:
    # The simulator promises the whole body and sends half of it, ending after the
    # first line: that line's ID is the gateway's word; the other recipient's line
    # never came, so it may have been sent and is unknown.
    sim.configure(truncate_rate=1.0)

    submission = send(client, NUMBER_A, NUMBER_B)

    assert outcomes_of(submission) == [Outcome.ACCEPTED, Outcome.AMBIGUOUS]
    [first, _second] = sim.ledger()
    assert submission.outcomes[0].gateway_message_id == first["message_id"]
    assert submission.outcomes[1].gateway_message_id is None
    assert submission.http_status == 200
    assert submission.raw_reply == f"{NUMBER_A},ID:{first['message_id']}\r\n"
    assert submission.error is not None
    assert "incomplete reply" in submission.error
    assert ledger_numbers(sim) == [NUMBER_A, NUMBER_B]
    assert sim.stats()["outcomes"]["truncate"] == 1


def test_a_single_line_reply_cut_short_is_ambiguous(
    sim: GatewaySimulator, client: GatewayClient
) -> None:
    # Half of `ID:<id>` could be another message's ID: a line that did not end is
    # never read.
    sim.configure(truncate_rate=1.0)

    submission = send(client, NUMBER_A)

    assert outcomes_of(submission) == [Outcome.AMBIGUOUS]
    assert submission.outcomes[0].gateway_message_id is None
    assert submission.error is not None
    assert "incomplete reply" in submission.error
    assert ledger_numbers(sim) == [NUMBER_A]


def test_a_reply_over_the_size_cap_keeps_the_ids_of_its_lines_within_it(
    make_client: MakeClient,
) -> None:
    # 100 recipients with IDs of a few hundred characters pass the cap: the accepted
    # IDs read before it are the gateway's word, and must not all become `unknown`.
    long_id = "9" * (MAX_REPLY_BYTES // 2)
    gateway = FakeGateway(send_reply=f"{NUMBER_A},ID:{long_id}\r\n{NUMBER_B},ID:{long_id}\r\n")
    with serving(gateway):
        submission = send(make_client(gateway.base_url), NUMBER_A, NUMBER_B)

    assert outcomes_of(submission) == [Outcome.ACCEPTED, Outcome.AMBIGUOUS]
    assert submission.outcomes[0].gateway_message_id == long_id
    assert codes_of(submission) == [None, CODE_UNREADABLE_REPLY]
    assert submission.http_status == 200
    assert submission.raw_reply is not None
    assert submission.raw_reply.startswith(f"{NUMBER_A},ID:{long_id}\r\n{NUMBER_B},ID:999")
    assert len(submission.raw_reply) == MAX_REPLY_BYTES
    assert submission.error is not None
    assert f"{MAX_REPLY_BYTES} bytes" in submission.error


def test_drop_after_accept_is_ambiguous_though_the_gateway_accepted(
    sim: GatewaySimulator, client: GatewayClient
) -> None:
    sim.configure(drop_after_accept_rate=1.0)

    submission = send(client, NUMBER_A)

    assert outcomes_of(submission) == [Outcome.AMBIGUOUS]
    assert submission.http_status is None
    assert submission.raw_reply is None
    assert submission.error is not None
    assert "after the request was sent" in submission.error
    # Exactly the case that must never be resent: the gateway took it.
    [entry] = sim.ledger()
    assert entry["number"] == NUMBER_A
    assert sim.stats()["outcomes"]["drop_after_accept"] == 1


def test_reset_before_accept_is_ambiguous_because_we_cannot_know(
    sim: GatewaySimulator, client: GatewayClient
) -> None:
    sim.configure(reset_before_accept_rate=1.0)

    submission = send(client, NUMBER_A)

    assert outcomes_of(submission) == [Outcome.AMBIGUOUS]
    assert submission.error is not None
    assert sim.ledger() == []
    assert sim.stats()["outcomes"]["reset_before_accept"] == 1


def test_hang_past_the_read_timeout_is_ambiguous_no_reply(
    sim: GatewaySimulator, make_client: MakeClient
) -> None:
    sim.configure(hang_rate=1.0, hang_s=3.0)
    client = make_client(sim.base_url, read_timeout_s=0.5)

    started = time.monotonic()
    submission = send(client, NUMBER_A)
    elapsed_s = time.monotonic() - started

    assert outcomes_of(submission) == [Outcome.AMBIGUOUS]
    assert codes_of(submission) == ["NO_REPLY"]
    assert submission.error is not None
    assert "no reply" in submission.error
    assert 0.45 <= elapsed_s < 2.5
    assert submission.latency_ms >= 450
    assert ledger_numbers(sim) == [NUMBER_A]  # accepted, then hung


# ================================================================== failover


def test_primary_refusing_fails_over_to_the_backup(
    sim: GatewaySimulator, make_client: MakeClient, captured_logs: CapturedLogs
) -> None:
    client = make_client(dead_url(PRIMARY_HOST), sim.base_url)

    submission = send(client, NUMBER_A)

    assert outcomes_of(submission) == [Outcome.ACCEPTED]
    assert host_names(submission) == [PRIMARY_HOST, BACKUP_HOST]
    assert submission.host.rsplit(":", 1)[0] == BACKUP_HOST
    assert submission.error is None
    assert ledger_numbers(sim) == [NUMBER_A]
    assert re.search(
        rf"gateway {re.escape(PRIMARY_HOST)}:\d+ unreachable", captured_logs.filtered.getvalue()
    )


def test_a_refusing_primary_goes_second_for_a_while(
    sim: GatewaySimulator,
    make_client: MakeClient,
    captured_logs: CapturedLogs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A primary outage costs one connection attempt and one warning per hold, not
    one per submission (found by the soak, docs/soak.md); then the primary is asked
    first again."""
    monkeypatch.setattr(client_module, "FAILOVER_HOLD_S", 0.5)
    client = make_client(dead_url(PRIMARY_HOST), sim.base_url)

    first = send(client, NUMBER_A)
    held = [send(client, number) for number in (NUMBER_B, NUMBER_C)]

    assert host_names(first) == [PRIMARY_HOST, BACKUP_HOST]
    assert [host_names(s) for s in held] == [[BACKUP_HOST], [BACKUP_HOST]]
    assert ledger_numbers(sim) == [NUMBER_A, NUMBER_B, NUMBER_C]
    warned = re.findall(r"WARNING gateway \S+ unreachable", captured_logs.filtered.getvalue())
    assert len(warned) == 1

    time.sleep(0.6)
    after = send(client, NUMBER_A, text="again")
    assert host_names(after) == [PRIMARY_HOST, BACKUP_HOST]
    warned = re.findall(r"WARNING gateway \S+ unreachable", captured_logs.filtered.getvalue())
    assert len(warned) == 2


def test_without_a_backup_every_refusal_is_told(
    make_client: MakeClient, captured_logs: CapturedLogs
) -> None:
    """No backup to prefer: each refused submission is its own warning."""
    client = make_client(dead_url(PRIMARY_HOST))
    for _ in range(3):
        assert outcomes_of(send(client, NUMBER_A)) == [Outcome.TRANSIENT]
    warned = re.findall(r"WARNING gateway \S+ unreachable", captured_logs.filtered.getvalue())
    assert len(warned) == 3


def test_primary_refusing_fails_over_for_balance_too(
    sim: GatewaySimulator, make_client: MakeClient
) -> None:
    sim.configure(credit=42)
    client = make_client(dead_url(PRIMARY_HOST), sim.base_url)

    assert client.balance() == 42.0


def test_primary_connect_timeout_fails_over_to_the_backup(
    sim: GatewaySimulator, make_client: MakeClient
) -> None:
    with ExitStack() as stack, listening_socket(PRIMARY_HOST, backlog=0) as full:
        # A listener that never accepts, its queue filled: the kernel drops new SYNs.
        for _ in range(8):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(full.getsockname())
        time.sleep(0.05)
        with socket.socket() as probe:
            probe.settimeout(0.3)
            try:
                probe.connect(full.getsockname())
            except TimeoutError:
                pass
            else:
                pytest.skip("this kernel completes connections beyond a full accept queue")
        client = make_client(url_of(full), sim.base_url, connect_timeout_s=0.5)

        started = time.monotonic()
        submission = send(client, NUMBER_A)
        elapsed_s = time.monotonic() - started

    assert outcomes_of(submission) == [Outcome.ACCEPTED]
    assert host_names(submission) == [PRIMARY_HOST, BACKUP_HOST]
    assert submission.host.rsplit(":", 1)[0] == BACKUP_HOST
    assert 0.45 <= elapsed_s < 3
    assert ledger_numbers(sim) == [NUMBER_A]


def test_no_failover_once_the_primary_took_the_request(
    primary_sim: GatewaySimulator, sim: GatewaySimulator, make_client: MakeClient
) -> None:
    primary_sim.configure(drop_after_accept_rate=1.0)
    client = make_client(primary_sim.base_url, sim.base_url)

    submission = send(client, NUMBER_A)

    assert outcomes_of(submission) == [Outcome.AMBIGUOUS]
    assert host_names(submission) == [PRIMARY_HOST]
    assert submission.host.rsplit(":", 1)[0] == PRIMARY_HOST
    assert ledger_numbers(primary_sim) == [NUMBER_A]
    assert sim.ledger() == []
    assert sim.stats()["requests_total"] == 0


@pytest.mark.parametrize("fault", ["reset_before_accept_rate", "hang_rate"])
def test_no_failover_after_other_ambiguous_failures(
    primary_sim: GatewaySimulator, sim: GatewaySimulator, make_client: MakeClient, fault: str
) -> None:
    primary_sim.configure(**{fault: 1.0}, hang_s=3.0)
    client = make_client(primary_sim.base_url, sim.base_url, read_timeout_s=0.5)

    submission = send(client, NUMBER_A)

    assert outcomes_of(submission) == [Outcome.AMBIGUOUS]
    assert host_names(submission) == [PRIMARY_HOST]
    assert sim.stats()["requests_total"] == 0


def test_both_hosts_down_is_transient_cannot_connect(make_client: MakeClient) -> None:
    client = make_client(dead_url(PRIMARY_HOST), dead_url(BACKUP_HOST))

    submission = send(client, NUMBER_A, NUMBER_B)

    assert outcomes_of(submission) == [Outcome.TRANSIENT] * 2
    assert codes_of(submission) == ["CONNECT_FAILED"] * 2
    assert submission.error is not None
    assert "cannot connect" in submission.error
    assert host_names(submission) == [PRIMARY_HOST, BACKUP_HOST]
    assert submission.host.rsplit(":", 1)[0] == BACKUP_HOST
    assert submission.http_status is None
    assert submission.raw_reply is None


# ================================================================== balance


def test_balance_reports_the_credit(sim: GatewaySimulator, client: GatewayClient) -> None:
    assert client.balance() == float(UNLIMITED_BALANCE)
    sim.configure(credit=1234)
    assert client.balance() == 1234.0


def test_balance_with_a_wrong_password_is_permanent_login_invalid(
    sim: GatewaySimulator, make_client: MakeClient
) -> None:
    client = make_client(sim.base_url, password=WRONG_PASSWORD)

    error = balance_error(client)

    assert isinstance(error, PermanentGatewayError)
    assert error.code == "LOGIN_INVALID"
    assert (error.host or "").rsplit(":", 1)[0] == BACKUP_HOST


def test_balance_with_both_hosts_unreachable_is_a_connect_error(
    make_client: MakeClient,
) -> None:
    client = make_client(dead_url(PRIMARY_HOST), dead_url(BACKUP_HOST))

    error = balance_error(client)

    assert isinstance(error, GatewayConnectError)
    assert isinstance(error, TransientGatewayError)
    assert "cannot connect" in str(error)
    assert isinstance(error.__cause__, requests.ConnectionError)


@pytest.mark.parametrize(
    ("knobs", "expected"),
    [
        ({"http_error_rate": 1.0, "http_error_status": 503}, TransientGatewayError),
        ({"transient_error_rate": 1.0, "transient_code": "INTERNAL_ERROR"}, TransientGatewayError),
        ({"reset_before_accept_rate": 1.0}, AmbiguousGatewayError),
    ],
    ids=["http-503", "internal-error", "reset"],
)
def test_balance_faults_raise_by_kind(
    sim: GatewaySimulator,
    client: GatewayClient,
    knobs: dict[str, object],
    expected: type[GatewayError],
) -> None:
    sim.configure(faults_on_balance=True, **knobs)

    error = balance_error(client)

    assert type(error) is expected


# ================================================================== pooled connections


@pytest.mark.parametrize("pool_idle_s", [0.1, 60.0])
def test_a_server_closing_idle_keep_alive_connections_causes_no_ambiguity(
    make_client: MakeClient, pool_idle_s: float
) -> None:
    # Whether the client evicts the connection first (0.1) or finds it closed (60).
    gateway = FakeGateway(idle_timeout_s=0.3)
    with serving(gateway):
        client = make_client(gateway.base_url, pool_idle_s=pool_idle_s)
        submissions = []
        for _ in range(4):
            submissions.append(send(client, NUMBER_A))
            time.sleep(0.6)

    assert [outcomes_of(s) for s in submissions] == [[Outcome.ACCEPTED]] * 4
    assert len(gateway.recorded) == 4
    assert gateway.connections == 4  # the server did close each one when idle


def test_connections_idle_past_pool_idle_are_not_reused(make_client: MakeClient) -> None:
    # The server resets any request that arrives on a connection idle for more than
    # 0.3 s: the race with a server's idle close, made to happen every time.
    gateway = FakeGateway(reset_stale_after_s=0.3)
    with serving(gateway):
        client = make_client(gateway.base_url, pool_idle_s=0.1)
        submissions = []
        for _ in range(3):
            submissions.append(send(client, NUMBER_A))
            submissions.append(send(client, NUMBER_B))  # reuses the warm connection
            time.sleep(0.6)

    assert [outcomes_of(s) for s in submissions] == [[Outcome.ACCEPTED]] * 6
    assert gateway.resets == 0
    assert gateway.connections == 3


def test_the_stale_connection_race_is_real_without_eviction(make_client: MakeClient) -> None:
    # The control for the test above: with eviction out of reach, the same server
    # turns the reuse of an idle connection into an ambiguous outcome.
    gateway = FakeGateway(reset_stale_after_s=0.3)
    with serving(gateway):
        client = make_client(gateway.base_url, pool_idle_s=60.0)
        first = send(client, NUMBER_A)
        time.sleep(0.6)
        second = send(client, NUMBER_B)

    assert outcomes_of(first) == [Outcome.ACCEPTED]
    assert outcomes_of(second) == [Outcome.AMBIGUOUS]
    assert gateway.resets == 1


# ================================================================== TLS


def test_tls_certificate_is_verified(tls_files: TlsFiles, make_client: MakeClient) -> None:
    gateway = FakeGateway()
    gateway.socket = server_context(tls_files).wrap_socket(gateway.socket, server_side=True)
    with serving(gateway):
        client = make_client(url_of(gateway.socket, "https"))
        submission = send(client, NUMBER_A)
        error = balance_error(client)

    assert outcomes_of(submission) == [Outcome.TRANSIENT]
    assert codes_of(submission) == ["CONNECT_FAILED"]
    assert submission.error is not None
    assert "TLS" in submission.error
    assert isinstance(error, GatewayConnectError)
    assert "TLS" in str(error)
    assert isinstance(error.__cause__, requests.ConnectionError)  # SSLError today
    assert gateway.recorded == []


def test_tls_failure_fails_over_to_the_backup(
    tls_files: TlsFiles, sim: GatewaySimulator, make_client: MakeClient
) -> None:
    gateway = FakeGateway(PRIMARY_HOST)
    gateway.socket = server_context(tls_files).wrap_socket(gateway.socket, server_side=True)
    with serving(gateway):
        client = make_client(url_of(gateway.socket, "https"), sim.base_url)
        submission = send(client, NUMBER_A)

    assert outcomes_of(submission) == [Outcome.ACCEPTED]
    assert host_names(submission) == [PRIMARY_HOST, BACKUP_HOST]
    assert gateway.recorded == []
    assert ledger_numbers(sim) == [NUMBER_A]


def test_trusted_tls_gateway_accepts(tls_files: TlsFiles, make_client: MakeClient) -> None:
    # The control for the TLS bug below: the same harness, answering properly.
    with TlsGateway(tls_files, corrupt_reply=False) as gateway:
        client = make_client(gateway.base_url, ca_bundle=tls_files.cert)
        submission = send(client, NUMBER_A)

    assert outcomes_of(submission) == [Outcome.ACCEPTED]
    assert submission.gateway_message_id == "123"
    assert host_names(submission) == [PRIMARY_HOST]
    [request] = gateway.received
    assert request.startswith(f"POST {PREFIX}{SEND_PATH} HTTP/1.1".encode())


def test_tls_error_after_the_request_went_out_is_ambiguous_without_failover(
    tls_files: TlsFiles, sim: GatewaySimulator, make_client: MakeClient
) -> None:
    with TlsGateway(tls_files, corrupt_reply=True) as gateway:
        client = make_client(gateway.base_url, sim.base_url, ca_bundle=tls_files.cert)
        submission = send(client, NUMBER_A)

    [request] = gateway.received
    assert quote_plus(PASSWORD).encode() in request  # the primary got the whole request
    assert sim.ledger() == [], "failed over: the backup sent the same SMS a second time"
    assert host_names(submission) == [PRIMARY_HOST]
    assert outcomes_of(submission) == [Outcome.AMBIGUOUS]


def test_tls_handshake_timeout_is_a_connect_failure_and_fails_over(
    sim: GatewaySimulator, make_client: MakeClient
) -> None:
    # TCP connects (the kernel accepts into the backlog) but no TLS handshake ever comes.
    with listening_socket(PRIMARY_HOST) as silent:
        client = make_client(url_of(silent, "https"), sim.base_url, connect_timeout_s=0.5)
        submission = send(client, NUMBER_A)

    assert host_names(submission) == [PRIMARY_HOST, BACKUP_HOST]
    assert outcomes_of(submission) == [Outcome.ACCEPTED]
    assert ledger_numbers(sim) == [NUMBER_A]


# ================================================================== redaction


def test_reprs_mask_the_password(client: GatewayClient) -> None:
    assert PASSWORD not in repr(client)
    assert PASSWORD not in repr(client.config)
    assert "password='***'" in repr(client.config)


def test_an_error_page_echoing_the_password_is_masked_in_the_stored_reply(
    sim: GatewaySimulator, client: GatewayClient
) -> None:
    page = (
        f"<html>Bad request: password={PASSWORD} "
        f"body=username={USERNAME}&password={quote_plus(PASSWORD)} "
        f"q={quote(PASSWORD, safe='')}</html>"
    )
    sim.configure(http_error_rate=1.0, http_error_status=500, http_error_body=page)

    submission = send(client, NUMBER_A)

    assert outcomes_of(submission) == [Outcome.AMBIGUOUS]
    assert submission.raw_reply == (
        f"<html>Bad request: password=*** body=username={USERNAME}&password=*** q=***</html>"
    )


def test_a_reply_line_echoing_the_password_is_masked_in_the_stored_reply(
    make_client: MakeClient,
) -> None:
    simulator = start_simulator(
        BACKUP_HOST,
        password=CODE_LIKE_PASSWORD,
        number_rules={NUMBER_B: CODE_LIKE_PASSWORD},
    )
    try:
        client = make_client(simulator.base_url, password=CODE_LIKE_PASSWORD)
        alone = send(client, NUMBER_B)
        mixed = send(client, NUMBER_A, NUMBER_B)
    finally:
        simulator.stop()

    assert alone.raw_reply == "ERR:***"
    assert mixed.raw_reply == f"{NUMBER_A},ID:{FIRST_ID}\r\n{NUMBER_B},ERR:***\r\n"
    assert outcomes_of(mixed) == [Outcome.ACCEPTED, Outcome.REQUEST_INVALID]


def test_an_accepted_id_echoing_the_password_is_masked(make_client: MakeClient) -> None:
    # An accepted ID goes to a recipient row, the API answer of a producer key, the
    # export and the webhook: a gateway (or whoever answers in its name) echoing our
    # password inside one must not hand it to all of them.
    gateway = FakeGateway(
        send_reply=f"{NUMBER_A},ID:77{PASSWORD}\r\n"
        f"{NUMBER_B},ID:{quote(PASSWORD, safe='')}9\r\n"
        f"{NUMBER_C},ID:{FIRST_ID}\r\n"
    )
    with serving(gateway):
        submission = send(make_client(gateway.base_url), NUMBER_A, NUMBER_B, NUMBER_C)

    assert outcomes_of(submission) == [Outcome.ACCEPTED] * 3
    assert [o.gateway_message_id for o in submission.outcomes] == ["77***", "***9", FIRST_ID]
    assert submission.gateway_message_id == "77***"


def test_logs_are_captured_and_hold_no_password(
    sim: GatewaySimulator, make_client: MakeClient, captured_logs: CapturedLogs
) -> None:
    # The capture the other tests rely on does see the client's and urllib3's lines.
    client = make_client(dead_url(PRIMARY_HOST), sim.base_url)
    send(client, NUMBER_A)
    balance_error(make_client(sim.base_url, password=WRONG_PASSWORD))

    logged = captured_logs.filtered.getvalue()
    assert re.search(
        rf"dispatcher\.gateway\.client WARNING gateway {re.escape(PRIMARY_HOST)}:\d+ unreachable",
        logged,
    )
    assert f'"POST {PREFIX}{SEND_PATH} HTTP/1.1" 200' in logged
    assert f'"POST {PREFIX}{BALANCE_PATH} HTTP/1.1" 200' in logged
    assert_no_secret(logged, "log output")
