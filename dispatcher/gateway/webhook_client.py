"""One webhook POST, at a vetted address, within a deadline, reading a bounded reply.

A receiver is someone else's server: it may stall, trickle, or answer without
end, and its name may resolve somewhere new since the URL was checked. So a try

- resolves the host once, vets every address (``addresses.vet``) and connects to
  one of them itself, keeping the URL's host for the Host header, TLS SNI and
  certificate verification (a connection class that only overrides where the
  socket goes); the address connected to is checked again;
- has one deadline for everything (connect, TLS handshake, sending, reading the
  status line and headers): when it passes, a watchdog shuts the socket down,
  which ends whatever call is blocked on it, however slowly bytes arrive;
- reads at most ``MAX_REPLY_BYTES`` of the reply from the socket, whatever it
  claims; the status line is what counts;
- never follows redirects, never uses a proxy from the environment.

``post`` never raises for the receiver's behaviour: it returns a ``WebhookReply``.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import threading
import time
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, BinaryIO

import urllib3
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3.connection import HTTPConnection, HTTPSConnection

from dispatcher.errors import UnsafeCallbackError
from dispatcher.gateway.addresses import (
    AddressPolicy,
    CallbackTarget,
    IPAddress,
    Resolver,
    parse_target,
    system_resolver,
    vet,
)

MAX_REPLY_BYTES = 4096
"""Most bytes read of a reply, status line and headers included."""

MAX_ERROR_LENGTH = 500


@dataclass(frozen=True, slots=True)
class WebhookReply:
    """How one try went: the HTTP status if one came, and an error unless it was 2xx."""

    status: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        """True when the receiver answered 2xx within the deadline."""
        return self.error is None


class WebhookClient:
    """Posts webhooks to vetted addresses; ``resolver`` is swappable for tests."""

    def __init__(
        self,
        *,
        deadline_s: float,
        policy: AddressPolicy,
        resolver: Resolver = system_resolver,
        ca_certs: str | None = None,
    ) -> None:
        self.deadline_s = deadline_s
        self.policy = policy
        self.resolver = resolver
        # The CAs the gateway client trusts (requests' bundle), not a private store.
        self.ca_certs = ca_certs or DEFAULT_CA_BUNDLE_PATH

    def check(self, url: str) -> None:
        """Raise UnsafeCallbackError unless ``url``'s host reaches only allowed addresses."""
        if not self.policy.allow_all:
            vet(parse_target(url), self.policy, self.resolver)

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> WebhookReply:
        """POST ``body`` to ``url`` within the deadline; never raises for the receiver."""
        cutoff = _Cutoff(self.deadline_s)
        try:
            target = parse_target(url)
            addresses = vet(target, self.policy, self.resolver)
        except UnsafeCallbackError as exc:
            cutoff.close()
            where = f" ({exc.address})" if exc.address else ""
            return WebhookReply(None, f"refused, not connected: {exc}{where}")
        connection = self._connection(target, addresses, cutoff)
        try:
            connection.connect()
            connection.request(
                "POST", urllib3.util.parse_url(url).request_uri, body=body, headers=headers
            )
            # http.client's own: urllib3's wrapper would log a warning for every
            # reply whose headers the cap cut short. The body is never read.
            status = http.client.HTTPConnection.getresponse(connection).status
            if cutoff.fired:
                # The cut reads as end of file, which http.client takes for the end
                # of the headers: a status parsed then came too late to count.
                raise TimeoutError
        except (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError) as exc:
            if cutoff.fired:
                return WebhookReply(None, f"no complete reply within {self.deadline_s:g} s")
            return WebhookReply(None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH])
        finally:
            # Under the cutoff's lock before the socket closes: the watchdog can no
            # longer touch a descriptor that the system may hand to someone else.
            cutoff.close()
            connection.close()
        return WebhookReply(status, None if 200 <= status < 300 else f"HTTP {status}")

    def _connection(
        self, target: CallbackTarget, addresses: list[IPAddress], cutoff: _Cutoff
    ) -> HTTPConnection:
        pin = _Pin(addresses, self.policy, cutoff)
        if target.scheme == "https":
            return _PinnedHTTPSConnection(
                target.host,
                target.port,
                pin=pin,
                timeout=self.deadline_s,
                ca_certs=self.ca_certs,
            )
        return _PinnedHTTPConnection(target.host, target.port, pin=pin, timeout=self.deadline_s)


class _Cutoff:
    """Shuts a try's sockets down when its deadline passes.

    ``shutdown`` on a duplicate of the descriptor ends a blocked ``recv``, ``send``,
    connect or TLS handshake in the thread doing the try, plain or TLS, without
    touching the TLS object that thread is using. One timer thread per try; the
    number of tries at once is bounded by the webhook threads.
    """

    def __init__(self, deadline_s: float) -> None:
        self.deadline = time.monotonic() + deadline_s
        self.fired = False
        self._lock = threading.Lock()
        self._closed = False
        self._handles: list[socket.socket] = []
        self._timer = threading.Timer(deadline_s, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        """Cut ``sock`` at the deadline (TimeoutError if it has passed)."""
        with self._lock:
            if self.fired or self._closed:
                raise TimeoutError("the try's deadline has passed")
            self._handles.append(sock.dup())

    def remaining_s(self) -> float:
        """Seconds left before the deadline."""
        return self.deadline - time.monotonic()

    def _fire(self) -> None:
        with self._lock:
            if self._closed:
                return
            self.fired = True
            for handle in self._handles:
                # Not connected yet, or already closed by the peer: nothing to cut.
                with contextlib.suppress(OSError):
                    handle.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop watching and release the duplicates; idempotent."""
        self._timer.cancel()
        with self._lock:
            self._closed = True
            for handle in self._handles:
                handle.close()
            self._handles.clear()


class _Pin:
    """Connects to one of the vetted addresses, under the cutoff, and checks the peer."""

    def __init__(self, addresses: list[IPAddress], policy: AddressPolicy, cutoff: _Cutoff) -> None:
        self.addresses = addresses
        self.policy = policy
        self.cutoff = cutoff

    def connect(self, port: int) -> socket.socket:
        last: OSError = TimeoutError("the try's deadline passed before a connection was made")
        for address in self.addresses:
            remaining_s = self.cutoff.remaining_s()
            if remaining_s <= 0:
                break
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                self.cutoff.watch(sock)
                sock.settimeout(remaining_s)
                sock.connect((str(address), port))
                self._check_peer(sock)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        raise last

    def _check_peer(self, sock: socket.socket) -> None:
        # The address actually connected to, whatever led there, must pass too.
        peer = str(sock.getpeername()[0])
        try:
            reason = self.policy.refusal(ip_address(peer))
        except ValueError:
            reason = "not an IP address"
        if reason is not None:
            raise ConnectionRefusedError(f"connected to {peer}, {reason}; closed unused")


class _CappedReader(io.RawIOBase):
    """The socket's bytes, up to a limit, then end of file."""

    def __init__(self, sock: socket.socket, limit: int) -> None:
        super().__init__()
        self._sock = sock
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:
            return 0
        received = self._sock.recv_into(memoryview(buffer)[: self._left])
        self._left -= received
        return received


class _CappedSocket:
    """What ``http.client.HTTPResponse`` needs of a socket: a reader that stops early."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def makefile(self, mode: str) -> BinaryIO:
        return io.BufferedReader(_CappedReader(self._sock, MAX_REPLY_BYTES))


class _CappedResponse(http.client.HTTPResponse):
    """Parses the status line and headers from at most ``MAX_REPLY_BYTES``; a reply
    cut short in its headers still yields its status (http.client ends headers at
    end of file)."""

    def __init__(
        self,
        sock: socket.socket,
        debuglevel: int = 0,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(_CappedSocket(sock), debuglevel, method, url)  # type: ignore[arg-type]


class _PinnedHTTPConnection(HTTPConnection):
    response_class = _CappedResponse

    def __init__(self, host: str, port: int, *, pin: _Pin, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, socket_options=None)
        self._pin = pin

    def _new_conn(self) -> socket.socket:
        return self._pin.connect(self.port)


class _PinnedHTTPSConnection(HTTPSConnection):
    response_class = _CappedResponse

    def __init__(self, host: str, port: int, *, pin: _Pin, timeout: float, ca_certs: str) -> None:
        super().__init__(host, port, timeout=timeout, socket_options=None, ca_certs=ca_certs)
        self._pin = pin

    def _new_conn(self) -> socket.socket:
        return self._pin.connect(self.port)
