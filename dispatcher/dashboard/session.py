"""Dashboard sessions: a signed cookie that says who logged in and how.

The cookie holds what kind of login it was (the operator password, or an API key
and that key's id), a display name, a CSRF token and an expiry, signed with
HMAC-SHA256 under ``DISPATCHER_SESSION_SECRET``. It never holds the token or
password that proved it: a leaked cookie is worth one session, not a credential.
A password login holds a keyed digest of the password instead (``proof``), so
changing the operator password ends the sessions the old one opened.
Every visitor gets a session, anonymous until login, so the login form carries a
CSRF token too; logging in issues a fresh one (no session fixation).

Sessions are stateless, so logout clears the cookie but cannot recall a copy
stolen earlier; a key's sessions end as soon as the key is revoked or loses the
operate scope, because each request looks the key up by its id, and a password's
as soon as the password changes (see ``routes``).
No name is special: a key named ``operator`` is still a key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Literal

from fastapi import Request, Response

from dispatcher.config import Settings

log = logging.getLogger(__name__)

COOKIE_NAME = "dispatcher_session"
OPERATOR = "operator"
"""Who the audit names after a password login."""
# Kinds of login, not credentials.
PASSWORD = "password"  # noqa: S105
KEY = "key"
"""The kinds of login: the operator password, or an API key with the operate scope."""
ANONYMOUS_MAX_AGE_S = 3600.0
"""How long the pre-login session (its CSRF token for the login form) lasts."""
_VERSION = 2


@dataclass(frozen=True, slots=True)
class Login:
    """Who a login proved: its kind, the name shown and audited, and a key's id."""

    kind: str
    who: str
    key_id: int | None = None
    proof: str | None = None
    """A password login's ``SessionCodec.proof`` of the password it proved."""


@dataclass(frozen=True, slots=True)
class Session:
    """One browser's session: its login (None before login) and its CSRF token."""

    login: Login | None
    csrf: str
    expires_at: float

    @property
    def who(self) -> str | None:
        """The name shown and audited; None before login."""
        return self.login.who if self.login is not None else None

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
        self.secure = settings.cookie_secure

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def encode(self, session: Session) -> str:
        """The cookie value of ``session``."""
        login = session.login
        body = json.dumps(
            {
                "v": _VERSION,
                "kind": login.kind if login else None,
                "who": login.who if login else None,
                "key": login.key_id if login else None,
                "proof": login.proof if login else None,
                "csrf": session.csrf,
                "exp": session.expires_at,
            },
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
        csrf, expires_at = data.get("csrf"), data.get("exp")
        if not isinstance(csrf, str) or not isinstance(expires_at, int | float):
            return None
        if expires_at <= now:
            return None
        login = _login(data.get("kind"), data.get("who"), data.get("key"), data.get("proof"))
        if login is False:
            return None
        return Session(login=login, csrf=csrf, expires_at=float(expires_at))

    def new(self, login: Login | None, *, now: float) -> Session:
        """A fresh session (and CSRF token) for ``login``; None: not logged in yet."""
        age_s = self.max_age_s if login is not None else ANONYMOUS_MAX_AGE_S
        return Session(login=login, csrf=secrets.token_urlsafe(24), expires_at=now + age_s)

    def proof(self, password: str) -> str:
        """What a password login's cookie holds of the password: a digest keyed by the
        session key, which tells whether the password is still the same and, without
        that key, nothing else."""
        mac = hmac.new(self._key, b"operator-password\0" + password.encode(), hashlib.sha256)
        return _b64(mac.digest())

    def _secure(self, request: Request) -> bool:
        return self.secure if self.secure is not None else request.url.scheme == "https"

    def write(self, response: Response, request: Request, session: Session, *, now: float) -> None:
        """Set the cookie on ``response``: HttpOnly, SameSite=Lax, Secure over https (or
        always, or never, as ``DISPATCHER_COOKIE_SECURE`` says)."""
        response.set_cookie(
            COOKIE_NAME,
            self.encode(session),
            max_age=max(int(session.expires_at - now), 1),
            path="/",
            httponly=True,
            samesite="lax",
            secure=self._secure(request),
        )

    def clear(self, response: Response, request: Request) -> None:
        """Remove the cookie."""
        response.delete_cookie(
            COOKIE_NAME,
            path="/",
            httponly=True,
            samesite="lax",
            secure=self._secure(request),
        )


def _login(
    kind: object, who: object, key_id: object, proof: object
) -> Login | Literal[False] | None:
    """The login a cookie's fields describe; None: anonymous; False: not well-formed."""
    if kind is None and who is None and key_id is None and proof is None:
        return None
    if not isinstance(who, str):
        return False
    if kind == PASSWORD and key_id is None and isinstance(proof, str):
        return Login(PASSWORD, who, proof=proof)
    if kind == KEY and proof is None and isinstance(key_id, int) and not isinstance(key_id, bool):
        return Login(KEY, who, key_id)
    return False
