"""The gateway client: pooled HTTPS POSTs, failover, and translated exceptions.

Everything ``requests`` can raise is translated here, with ``raise ... from``, into
the ``dispatcher.errors.GatewayError`` tree, sorted by the one question that
matters for an SMS: could the gateway have received the request?

- the connection was never made (refused, DNS, connect timeout, TLS handshake):
  ``GatewayConnectError``; nothing was sent, so the backup host may be tried;
- the request went out and no complete reply came back (read timeout, reset,
  truncated body): ``AmbiguousGatewayError``; never retried here.

``submit`` does not raise for gateway conditions: it returns a ``Submission``
holding the host, HTTP status, raw reply (secrets masked), latency and one
classified outcome per recipient, so the caller can audit every attempt the same
way whatever happened.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool

from dispatcher.domain import redaction
from dispatcher.domain.message import TYPE_TEXT
from dispatcher.errors import (
    AmbiguousGatewayError,
    GatewayConnectError,
    GatewayError,
    IncompleteReplyError,
    PermanentGatewayError,
    TransientGatewayError,
)
from dispatcher.gateway import protocol
from dispatcher.gateway.config import GatewayConfig
from dispatcher.gateway.protocol import Outcome, RecipientOutcome

log = logging.getLogger(__name__)

ECHO_MASK_MIN_LENGTH = 8

USER_AGENT = "sms-dispatcher"
FAILOVER_HOLD_S = 30.0
"""After the primary refused a connection, try the backup first for this long. A
refused connection sent nothing, so the order changes who is asked, never what is
sent; the primary is asked first again once the hold is over."""
# Replies are a line per recipient; what comes past this many bytes is not read
# (the complete lines before it still count: see ``submit``).
MAX_REPLY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Message:
    """What one submission carries besides its numbers."""

    text: str
    sender: str | None = None
    maxconcat: int = 1
    message_type: int = TYPE_TEXT
    usercontext: str | None = None


@dataclass(slots=True)
class Submission:
    """The record of one HTTP submission, whatever came of it."""

    host: str
    numbers: list[str]
    outcomes: list[RecipientOutcome]
    http_status: int | None = None
    raw_reply: str | None = None
    latency_ms: float = 0.0
    error: str | None = None
    hosts_tried: list[str] = field(default_factory=list)

    @property
    def gateway_message_id(self) -> str | None:
        """The submission's message ID, when any recipient was accepted."""
        return next((o.gateway_message_id for o in self.outcomes if o.gateway_message_id), None)


READ_CHUNK_BYTES = 16 * 1024


def _read_capped(response: requests.Response, host: str) -> bytes:
    """The body, up to one byte past ``MAX_REPLY_BYTES`` so the caller sees it went on.

    Read in chunks to its end, so that a body cut short of its declared length (or a
    broken chunked encoding, or a read timeout) surfaces here, as IncompleteReplyError
    carrying what did arrive: its complete lines are the gateway's word (issue 13).
    """
    body = bytearray()
    try:
        while len(body) <= MAX_REPLY_BYTES:
            want = min(READ_CHUNK_BYTES, MAX_REPLY_BYTES + 1 - len(body))
            chunk = response.raw.read1(want, decode_content=True)
            if not chunk:
                break
            body += chunk
    except urllib3.exceptions.HTTPError as exc:
        raise IncompleteReplyError(
            f"incomplete reply from {host}",
            host=host,
            http_status=response.status_code,
            partial=bytes(body),
        ) from exc
    return bytes(body)


def _host_of(url: str) -> str:
    # host:port, so two gateways on one host name stay apart in the audit.
    return urllib3.util.parse_url(url).netloc or url


class TlsHandshakeError(urllib3.exceptions.NewConnectionError):
    """The TLS handshake failed: the connection never carried a byte of the request."""


class _GatewayHTTPSConnection(HTTPSConnection):
    """An HTTPS connection whose handshake failures read as connection failures.

    urllib3 reports a stalled handshake as a *read* timeout and a refused
    certificate as an SSLError indistinguishable from one raised while reading a
    reply. Both happen before the request is sent, and that difference decides
    between failing over (safe) and `unknown` (the SMS may have gone out), so the
    handshake's failures are marked here, where the phase is still known.
    """

    def connect(self) -> None:
        try:
            super().connect()
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError):
            raise
        except TimeoutError as exc:
            raise urllib3.exceptions.ConnectTimeoutError(
                self, f"TLS handshake with {self.host} timed out"
            ) from exc
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            raise TlsHandshakeError(
                self, f"TLS handshake with {self.host} failed: {type(exc).__name__}"
            ) from exc


class _GatewayHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _GatewayHTTPSConnection


def _caused_by_connect(exc: requests.ConnectionError) -> bool:
    """True when a ConnectionError happened before any byte of the request was sent."""
    reason: BaseException | None = exc.args[0] if exc.args else None
    if isinstance(reason, urllib3.exceptions.MaxRetryError):
        reason = reason.reason
    return isinstance(
        reason,
        urllib3.exceptions.NewConnectionError | urllib3.exceptions.NameResolutionError,
    )


def _is_handshake(exc: requests.ConnectionError) -> bool:
    reason: BaseException | None = exc.args[0] if exc.args else None
    if isinstance(reason, urllib3.exceptions.MaxRetryError):
        reason = reason.reason
    return isinstance(reason, TlsHandshakeError)


class GatewayClient:
    """A thread-safe client for one gateway account, with a primary and a backup host."""

    def __init__(self, config: GatewayConfig, *, session: requests.Session | None = None) -> None:
        self.config = config
        redaction.register_secret(config.password)
        self._session = session or requests.Session()
        self._session.headers["User-Agent"] = USER_AGENT
        self._session.trust_env = False
        # No urllib3 retries: a retried POST could send the SMS twice, and the
        # ambiguity must reach the outcome policy, not be hidden here.
        self._adapter = HTTPAdapter(
            pool_connections=2, pool_maxsize=config.pool_maxsize, max_retries=0
        )
        self._adapter.poolmanager.pool_classes_by_scheme = {
            **self._adapter.poolmanager.pool_classes_by_scheme,
            "https": _GatewayHTTPSConnectionPool,
        }
        self._verify: bool | str = config.ca_bundle or True
        self._session.mount("https://", self._adapter)
        self._session.mount("http://", self._adapter)
        self._lock = threading.Lock()
        self._last_used = time.monotonic()
        self._backup_first_until = 0.0

    def close(self) -> None:
        """Close pooled connections."""
        self._session.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GatewayClient({self.config!r})"

    @property
    def hosts(self) -> list[str]:
        """Base URLs in the order they are tried: the primary first, but the backup for
        ``FAILOVER_HOLD_S`` after the primary refused a connection."""
        hosts = [u for u in (self.config.url, self.config.backup_url) if u]
        if len(hosts) > 1 and time.monotonic() < self._backup_first_until:
            hosts.reverse()
        return hosts

    def _evict_idle_connections(self) -> None:
        # A server closes keep-alive connections it has not seen for a while; reusing
        # one races with that close and fails as a reset that looks exactly like
        # "request sent, reply lost", a spurious `unknown`. Dropping connections idle
        # longer than a few seconds removes the race for everything but a busy pool.
        now = time.monotonic()
        with self._lock:
            idle_s = now - self._last_used
            self._last_used = now
        if idle_s > self.config.pool_idle_s:
            self._adapter.poolmanager.clear()

    def _post(self, base_url: str, path: str, form: dict[str, str]) -> requests.Response:
        """POST once to one host; translate every transport failure."""
        host = _host_of(base_url)
        self._evict_idle_connections()
        try:
            response = self._session.post(
                base_url + path,
                data=form,
                timeout=(self.config.connect_timeout_s, self.config.read_timeout_s),
                allow_redirects=False,
                verify=self._verify,
                stream=True,
            )
            try:
                response._content = _read_capped(response, host)
            finally:
                response.close()
        except requests.exceptions.ConnectTimeout as exc:
            raise GatewayConnectError(f"connect timeout to {host}", host=host) from exc
        except requests.exceptions.SSLError as exc:
            # Handshake failures are TlsHandshakeError (a ConnectionError); an SSLError
            # here broke an established connection, after the request may have gone.
            raise AmbiguousGatewayError(
                f"TLS error from {host} after the request was sent", host=host
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            if _caused_by_connect(exc):
                what = "TLS handshake failed with" if _is_handshake(exc) else "cannot connect to"
                raise GatewayConnectError(f"{what} {host}", host=host) from exc
            raise AmbiguousGatewayError(
                f"connection to {host} broke after the request was sent", host=host
            ) from exc
        except requests.exceptions.ReadTimeout as exc:
            raise AmbiguousGatewayError(
                f"no reply from {host} within {self.config.read_timeout_s:g} s", host=host
            ) from exc
        except (
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
            urllib3.exceptions.HTTPError,
        ) as exc:
            raise AmbiguousGatewayError(f"incomplete reply from {host}", host=host) from exc
        except requests.exceptions.RequestException as exc:
            # Anything else requests raises happened while preparing or sending: the
            # request cannot be assumed unsent.
            raise AmbiguousGatewayError(
                f"request to {host} failed: {type(exc).__name__}", host=host
            ) from exc
        return response

    def _post_with_failover(
        self, path: str, form: dict[str, str]
    ) -> tuple[str, requests.Response | None, GatewayError | None, list[str], float]:
        tried: list[str] = []
        error: GatewayError | None = None
        started = time.perf_counter()
        for base_url in self.hosts:
            host = _host_of(base_url)
            tried.append(host)
            started = time.perf_counter()
            try:
                response = self._post(base_url, path, form)
            except GatewayConnectError as exc:
                # Nothing reached this host, so the next one may be tried safely.
                self._unreachable(base_url, host, exc)
                error = exc
                continue
            except GatewayError as exc:
                return host, None, exc, tried, (time.perf_counter() - started) * 1000
            return host, response, None, tried, (time.perf_counter() - started) * 1000
        assert error is not None
        return tried[-1], None, error, tried, (time.perf_counter() - started) * 1000

    def _unreachable(self, base_url: str, host: str, exc: GatewayConnectError) -> None:
        """Note a host that refused: a primary with a backup goes second for a while, so
        an outage of the primary costs one connection attempt and one warning per
        ``FAILOVER_HOLD_S``, not one per submission (docs/soak.md)."""
        if base_url != self.config.url or not self.config.backup_url:
            log.warning("gateway %s unreachable: %s", host, exc)
            return
        with self._lock:
            holding = time.monotonic() < self._backup_first_until
            self._backup_first_until = time.monotonic() + FAILOVER_HOLD_S
        if holding:
            log.debug("gateway %s unreachable: %s", host, exc)
        else:
            log.warning(
                "gateway %s unreachable: %s; the backup goes first for %g s",
                host,
                exc,
                FAILOVER_HOLD_S,
            )

    def submit(self, numbers: Sequence[str], message: Message) -> Submission:
        """Send one submission (at most 100 numbers) and classify what came back."""
        form = protocol.build_send_form(
            username=self.config.username,
            password=self.config.password,
            numbers=numbers,
            text=message.text,
            sender=message.sender,
            maxconcat=message.maxconcat,
            message_type=message.message_type,
            usercontext=message.usercontext,
        )
        host, response, error, tried, latency_ms = self._post_with_failover(
            protocol.SEND_PATH, form
        )
        numbers = list(numbers)
        if isinstance(error, IncompleteReplyError) and error.http_status == 200:
            # The reply broke off mid-body: the IDs on the lines that arrived whole are
            # the gateway's word; everyone else is unknown, as for a lost reply.
            return self._classified(
                host,
                numbers,
                message,
                http_status=error.http_status,
                body=error.partial[:MAX_REPLY_BYTES],
                note=f"{error}; only the lines that arrived whole were read",
                latency_ms=latency_ms,
                tried=tried,
            )
        if error is not None:
            outcome = (
                Outcome.TRANSIENT if isinstance(error, TransientGatewayError) else Outcome.AMBIGUOUS
            )
            code = "CONNECT_FAILED" if outcome is Outcome.TRANSIENT else "NO_REPLY"
            return Submission(
                host=host,
                numbers=numbers,
                outcomes=[RecipientOutcome(n, outcome, error_code=code) for n in numbers],
                latency_ms=latency_ms,
                error=redaction.redact(str(error), [self.config.password]),
                hosts_tried=tried,
            )
        assert response is not None
        # A reply past the cap is read up to it: the IDs on its complete lines are
        # the gateway's word, whatever came after (too much to hold, or to trust).
        over_cap = len(response.content) > MAX_REPLY_BYTES
        return self._classified(
            host,
            numbers,
            message,
            http_status=response.status_code,
            body=response.content[:MAX_REPLY_BYTES],
            note=f"reply from {host} exceeds {MAX_REPLY_BYTES} bytes; "
            "only the lines within them were read"
            if over_cap
            else None,
            latency_ms=latency_ms,
            tried=tried,
        )

    def _classified(
        self,
        host: str,
        numbers: list[str],
        message: Message,
        *,
        http_status: int,
        body: bytes,
        note: str | None,
        latency_ms: float,
        tried: list[str],
    ) -> Submission:
        """A submission from the reply read: the whole of it when ``note`` is None, else
        its beginning, with ``note`` saying why the rest is missing."""
        outcomes = _without_password(
            protocol.classify_reply(numbers, http_status, body, complete=note is None),
            self.config.password,
        )
        return Submission(
            host=host,
            numbers=numbers,
            outcomes=outcomes,
            http_status=http_status,
            raw_reply=redaction.redact(
                protocol.decode_body(body), [self.config.password, *_echo_risk(message.text)]
            ),
            latency_ms=latency_ms,
            error=note,
            hosts_tried=tried,
        )

    def balance(self) -> float:
        """The account's credit balance.

        Raises TransientGatewayError or AmbiguousGatewayError when no usable answer
        came (a balance check sends nothing, so both only mean "ask again later"),
        PermanentGatewayError with the code when the gateway refused the account.
        """
        form = {"username": self.config.username, "password": self.config.password}
        host, response, error, _, _ = self._post_with_failover(protocol.BALANCE_PATH, form)
        if error is not None:
            raise error
        assert response is not None
        reply = protocol.parse_balance(response.status_code, response.content)
        if reply.balance is not None:
            return reply.balance
        code = reply.error_code or protocol.CODE_UNREADABLE_REPLY
        if (
            code in protocol.TRANSIENT_CODES
            or code == protocol.CODE_UNREADABLE_REPLY
            or code.startswith(("HTTP_5", "HTTP_4"))
        ):
            raise TransientGatewayError(f"balance check on {host} failed: {code}", host=host)
        raise PermanentGatewayError(
            f"balance check on {host} refused: {code}", code=code, host=host
        )


def _without_password(
    outcomes: Sequence[RecipientOutcome], password: str
) -> list[RecipientOutcome]:
    """Codes and accepted IDs verbatim, except our password echoed in one.

    An ID is stored exactly, but it also goes to the producer's API answers, exports
    and webhooks: keeping one that holds our password exact would hand the password
    to every producer key, so the secret wins over exactness (the raw reply is
    masked the same way).
    """
    masked: dict[str, str] = {}  # A submission's codes repeat; its IDs seldom do.

    def mask(value: str | None) -> str | None:
        if not value:
            return value
        if value not in masked:
            masked[value] = redaction.redact(value, [password])
        return masked[value]

    kept: list[RecipientOutcome] = []
    for o in outcomes:
        code, message_id = mask(o.error_code), mask(o.gateway_message_id)
        # A new outcome only where a value changed: nearly never, and a copy of
        # every outcome of every reply is a dispatch thread's time spent for nothing.
        if code != o.error_code or message_id != o.gateway_message_id:
            o = replace(o, error_code=code, gateway_message_id=message_id)
        kept.append(o)
    return kept


def _echo_risk(text: str) -> list[str]:
    """The message text, to mask in a stored reply (an error page may echo the form,
    and the text can be a one-time code); not when it is so short or so numeric that
    masking it could cut into a gateway message ID."""
    if len(text) >= ECHO_MASK_MIN_LENGTH and not text.isdigit():
        return [text]
    return []
