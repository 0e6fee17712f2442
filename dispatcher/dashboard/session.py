"""Dashboard sessions: a signed cookie that says who logged in, and login throttling.

The cookie holds who (an API key's name, or ``operator``), a CSRF token and an
expiry, signed with HMAC-SHA256 under ``DISPATCHER_SESSION_SECRET``. It never
holds the token or password that proved it: a leaked cookie is worth one
session, not a credential. Every visitor gets a session, anonymous until login,
so the login form carries a CSRF token too; logging in issues a fresh one (no
session fixation).

Sessions are stateless, so logout clears the cookie but cannot recall a copy
stolen earlier; a key's sessions end as soon as the key is revoked, because each
request checks the key is still live (see ``routes``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

from fastapi import Request, Response

from dispatcher.config import Settings

log = logging.getLogger(__name__)

COOKIE_NAME = "dispatcher_session"
OPERATOR = "operator"
"""Who the audit names after a password login."""
ANONYMOUS_MAX_AGE_S = 3600.0
"""How long the pre-login session (its CSRF token for the login form) lasts."""
_VERSION = 1


@dataclass(frozen=True, slots=True)
class Session:
    """One browser's session: who logged in (None before login) and its CSRF token."""

    who: str | None
    csrf: str
    expires_at: float

    @property
    def actor(self) -> str:
        """Who the audit trail names for this session's actions."""
        return f"dashboard:{self.who}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionCodec:
    """Signs sessions into cookie values and checks them back."""

    def __init__(self, settings: Settings) -> None:
        if settings.session_secret is not None:
            key = settings.session_secret.get_secret_value().encode()
        else:
            key = secrets.token_bytes(32)
            log.warning(
                "DISPATCHER_SESSION_SECRET is not set: dashboard sessions use a random "
                "per-process key, so they end when this process restarts and do not span "
                "processes"
            )
        # Derived, so the configured value itself is never the HMAC key of anything else.
        self._key = hashlib.sha256(b"dispatcher-dashboard-session\0" + key).digest()
        self.max_age_s = settings.session_max_age_s

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def encode(self, session: Session) -> str:
        """The cookie value of ``session``."""
        body = json.dumps(
            {"v": _VERSION, "who": session.who, "csrf": session.csrf, "exp": session.expires_at},
            separators=(",", ":"),
        )
        payload = _b64(body.encode())
        return f"{payload}.{self._sign(payload)}"

    def decode(self, value: str | None, *, now: float) -> Session | None:
        """The session in a cookie value, or None if it is missing, forged or expired."""
        if not value or value.count(".") != 1:
            return None
        payload, signature = value.split(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            data = json.loads(_unb64(payload))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("v") != _VERSION:
            return None
        who, csrf, expires_at = data.get("who"), data.get("csrf"), data.get("exp")
        if not isinstance(csrf, str) or not isinstance(expires_at, int | float):
            return None
        if who is not None and not isinstance(who, str):
            return None
        if expires_at <= now:
            return None
        return Session(who=who, csrf=csrf, expires_at=float(expires_at))

    def new(self, who: str | None, *, now: float) -> Session:
        """A fresh session (and CSRF token) for ``who``; None: not logged in yet."""
        age_s = self.max_age_s if who is not None else ANONYMOUS_MAX_AGE_S
        return Session(who=who, csrf=secrets.token_urlsafe(24), expires_at=now + age_s)

    def write(self, response: Response, request: Request, session: Session, *, now: float) -> None:
        """Set the cookie on ``response``: HttpOnly, SameSite=Lax, Secure over https."""
        response.set_cookie(
            COOKIE_NAME,
            self.encode(session),
            max_age=max(int(session.expires_at - now), 1),
            path="/",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def clear(response: Response, request: Request) -> None:
        """Remove the cookie."""
        response.delete_cookie(
            COOKIE_NAME,
            path="/",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )


class LoginThrottle:
    """At most ``max_failures`` failed logins per client address in ``window_s``.

    Kept in the process: it slows a guesser down by orders of magnitude, which is
    what it is for; API key tokens have 256 bits and need no more. A strong
    operator password is still the operator's job.
    """

    def __init__(self, *, max_failures: int = 5, window_s: float = 300.0) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.setdefault(client, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def wait_s(self, client: str, *, now: float | None = None) -> float:
        """Seconds until ``client`` may try again; 0 when it may now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._recent(client, now)
            if len(times) < self.max_failures:
                return 0.0
            return times[0] + self.window_s - now

    def failed(self, client: str, *, now: float | None = None) -> None:
        """Count a failed login from ``client``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._recent(client, now).append(now)
            if len(self._failures) > 10_000:
                # A flood of addresses must not grow this without bound.
                self._failures = {k: v for k, v in self._failures.items() if v}

    def succeeded(self, client: str) -> None:
        """Forget ``client``'s failures."""
        with self._lock:
            self._failures.pop(client, None)
