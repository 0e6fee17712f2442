"""Who is calling: bearer API keys, their scopes, and their rate limit.

``401`` (with ``WWW-Authenticate: Bearer``) when the token is missing, unknown
or revoked; ``403`` when the key is live but holds none of the route's scopes; ``429``
(with ``Retry-After``) when the key has used up its bucket. A token is never
logged nor echoed; once it has authenticated it is registered with the
redaction filter, so even a stray log line would show it masked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dispatcher.api.errors import ApiError
from dispatcher.api.ratelimit import RateLimiter, retry_after
from dispatcher.domain import redaction
from dispatcher.domain.statuses import Scope
from dispatcher.errors import AuthenticationError
from dispatcher.service.keys import KeyInfo, KeyStore

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key's token: `dispatcher keys create NAME --scope send,read`.",
)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_INVALID = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class GatewayLoginError(Exception):
    """The drop-in endpoint's credentials do not make a live key with the send scope."""


@dataclass(frozen=True, slots=True)
class Authenticator:
    """Checks a token against the keys and spends one of the key's rate tokens."""

    keys: KeyStore
    limiter: RateLimiter

    def key_for(self, token: str) -> KeyInfo:
        """The live key holding ``token``; AuthenticationError otherwise."""
        info = self.keys.authenticate(token)
        if token not in redaction.registered_secrets():
            redaction.register_secret(token)
        return info

    def spend(self, info: KeyInfo) -> None:
        """Take one request from the key's bucket; ApiError 429 when it is empty."""
        wait_s = self.limiter.acquire(info.name)
        if wait_s > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"key {info.name!r} is over its request rate; retry after {wait_s:.1f} s",
                headers={"Retry-After": retry_after(wait_s)},
                # The gateway's own answer to "not now": a transient code.
                gateway_code="GATEWAY_ERROR",
            )

    def bearer(self, token: str | None, *scopes: Scope) -> KeyInfo:
        """The key of a ``/v1`` request that needs one of ``scopes``, or ApiError
        401/403/429."""
        if not token:
            raise ApiError(
                401,
                "unauthorized",
                "an API key is required: Authorization: Bearer <token>",
                headers=_CHALLENGE,
            )
        try:
            info = self.key_for(token)
        except AuthenticationError:
            raise ApiError(
                401, "unauthorized", "the API key is unknown or revoked", headers=_INVALID
            ) from None
        if not info.scopes & set(scopes):
            wanted = " or ".join(repr(s.value) for s in scopes)
            raise ApiError(403, "forbidden", f"key {info.name!r} lacks the {wanted} scope")
        self.spend(info)
        return info

    def gateway_login(self, username: str, password: str, *, scope: Scope = Scope.SEND) -> KeyInfo:
        """The key of a drop-in request: ``username`` its name, ``password`` its token.

        Raises GatewayLoginError when the token is unknown or revoked, belongs to
        another key, or the key lacks ``scope`` (send, or balance for the balance):
        the gateway answers all of them with one code, LOGIN_INVALID.
        """
        try:
            info = self.key_for(password)
        except AuthenticationError:
            raise GatewayLoginError from None
        if info.name != username or scope not in info.scopes:
            raise GatewayLoginError
        return info


def authenticator(request: Request) -> Authenticator:
    """The app's Authenticator."""
    auth: Authenticator = request.app.state.authenticator
    return auth


def require(*scopes: Scope) -> Callable[..., KeyInfo]:
    """A dependency giving the calling key, which must hold one of ``scopes``."""

    def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> KeyInfo:
        token = credentials.credentials if credentials is not None else None
        return authenticator(request).bearer(token, *scopes)

    return dependency
