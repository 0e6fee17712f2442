"""Login throttling: failed logins slow down their account from their address.

A failure is counted against an *account* and the client's address together, and
after a few free ones each further failure doubles the wait before that pair may
try again, up to a cap. Nothing is a hard lockout of everyone:

- the account of a password attempt is ``operator``, so a guesser slows down the
  operator password from the guesser's own address only; an operator elsewhere
  (behind a proxy: set ``DISPATCHER_TRUSTED_PROXIES`` so addresses are told apart)
  logs in as before, and keys log in whatever happens to the password;
- an API key's token carries no name, so the account of a token attempt is a
  prefix of the token's SHA-256: a wrong token slows down only itself. Guessing
  tokens is hopeless anyway (256 random bits), and no guess, however many, can
  delay a real token, whose hash no guesser presents.

An IPv6 client is its /64, not its address: one host commonly holds a whole /64
(privacy addresses), and a fresh address per guess must not be a fresh start.

Password and token failures are kept apart, each bounded, so a flood of random
tokens cannot push a password guesser's record out. Kept in the process: with
several ``serve`` processes each slows the guesser on its own.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from dispatcher.service.keys import TOKEN_PREFIX

OPERATOR_ACCOUNT = "operator"
_KEY_ACCOUNT_PREFIX = "key:"
IPV6_CLIENT_PREFIX = 64
"""The IPv6 network counted as one client."""


def account_of(secret: str) -> str:
    """The account a login attempt is counted against: a token's hash prefix, or
    ``operator`` for anything that is not a token."""
    if secret.startswith(TOKEN_PREFIX):
        return _KEY_ACCOUNT_PREFIX + hashlib.sha256(secret.encode()).hexdigest()[:16]
    return OPERATOR_ACCOUNT


def client_of(address: str) -> str:
    """Whom a failure from ``address`` is counted against: an IPv4 address itself, an
    IPv6 address's /64."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address  # ``unknown``: no address to group
    if isinstance(parsed, ipaddress.IPv4Address):
        return address
    if parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    shift = 128 - IPV6_CLIENT_PREFIX
    return str(ipaddress.IPv6Network((int(parsed) >> shift << shift, IPV6_CLIENT_PREFIX)))


@dataclass(slots=True)
class _Failures:
    count: int
    last_at: float
    retry_at: float


class LoginThrottle:
    """Growing delays per (account, client address) after ``free_failures`` failures."""

    def __init__(
        self,
        *,
        free_failures: int = 5,
        first_delay_s: float = 2.0,
        max_delay_s: float = 900.0,
        forget_after_s: float = 3600.0,
        max_entries: int = 10_000,
    ) -> None:
        self.free_failures = free_failures
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.forget_after_s = forget_after_s
        self.max_entries = max_entries
        self._tables: dict[bool, OrderedDict[tuple[str, str], _Failures]] = {
            True: OrderedDict(),
            False: OrderedDict(),
        }
        self._lock = threading.Lock()

    def _table(self, account: str) -> OrderedDict[tuple[str, str], _Failures]:
        return self._tables[account.startswith(_KEY_ACCOUNT_PREFIX)]

    def _current(self, account: str, client: str, now: float) -> _Failures | None:
        # ``client`` is already ``client_of`` an address.
        table = self._table(account)
        record = table.get((account, client))
        if record is not None and now - record.last_at > self.forget_after_s:
            del table[(account, client)]
            return None
        return record

    def delay_s(self, failures: int) -> float:
        """The wait after ``failures`` failures in a row."""
        if failures <= self.free_failures:
            return 0.0
        doublings = min(failures - self.free_failures - 1, 32)
        return min(math.ldexp(self.first_delay_s, doublings), self.max_delay_s)

    def wait_s(self, account: str, client: str, *, now: float | None = None) -> float:
        """Seconds until ``account`` may be tried again from ``client``; 0 when it may now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            record = self._current(account, client_of(client), now)
            return max(record.retry_at - now, 0.0) if record is not None else 0.0

    def failed(self, account: str, client: str, *, now: float | None = None) -> float:
        """Count a failed login; the wait it imposes on the pair."""
        now = time.monotonic() if now is None else now
        client = client_of(client)
        with self._lock:
            table = self._table(account)
            record = self._current(account, client, now) or _Failures(0, now, now)
            record.count += 1
            record.last_at = now
            record.retry_at = now + self.delay_s(record.count)
            table[(account, client)] = record
            table.move_to_end((account, client))
            while len(table) > self.max_entries:
                # Least recently failed first: a flood of new pairs must not grow this
                # without bound.
                table.popitem(last=False)
            return record.retry_at - now

    def succeeded(self, account: str, client: str) -> None:
        """Forget the pair's failures."""
        with self._lock:
            self._table(account).pop((account, client_of(client)), None)
