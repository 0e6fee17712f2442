"""API keys: created with a token shown once, stored as its SHA-256 only.

A token is 32 random bytes (URL-safe base64, prefixed ``sdk_`` so scanners and
people can tell what leaked). SHA-256 and not a slow password hash: the token is
random with 256 bits of entropy, so there is nothing to brute-force, and it is
checked on every request.

A key may use only the senders granted to it and the configured default sender
(``DISPATCHER_DEFAULT_SENDER``): a leaked application key cannot pose as another
brand. Granting, revoking and rescoping are operator actions (``update``),
audited with the key's scopes and senders before and after, and take effect on
the key's next request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from dispatcher.domain import redaction
from dispatcher.domain.message import check_sender
from dispatcher.domain.statuses import Scope
from dispatcher.domain.tenancy import EVERY_JOB, Viewer, own_jobs
from dispatcher.domain.times import utcnow
from dispatcher.errors import AuthenticationError, InvalidOptionError, NotFoundError
from dispatcher.persistence import store
from dispatcher.persistence.db import Database, IntegrityError
from dispatcher.persistence.models import ApiKey
from dispatcher.persistence.store.keys import all_keys, key_by_name, key_by_token_hash, revoke_key

# A label on every token, not a secret: it makes leaked tokens recognisable.
TOKEN_PREFIX = "sdk_"  # noqa: S105
# The width of api_keys.allowed_senders.
MAX_SENDERS_LENGTH = 1000
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_scopes(scopes: str | Iterable[str]) -> frozenset[Scope]:
    """Scopes from ``send,read,operate`` (or an iterable), or InvalidOptionError."""
    items = scopes.split(",") if isinstance(scopes, str) else list(scopes)
    result: set[Scope] = set()
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        try:
            result.add(Scope(item))
        except ValueError:
            choices = ", ".join(s.value for s in Scope)
            raise InvalidOptionError(f"unknown scope {item!r}; choose from {choices}") from None
    if not result:
        raise InvalidOptionError("a key needs at least one scope")
    return frozenset(result)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as it may be shown: never its token or hash."""

    id: int
    """Its row id: what the jobs it enqueues record as their owner (``jobs.owner_key_id``)."""
    name: str
    scopes: frozenset[Scope]
    created_at: str
    created_by: str
    revoked_at: str | None
    allowed_senders: tuple[str, ...] = ()
    """Senders granted to this key; it may use these and the default sender, no other."""

    @property
    def viewer(self) -> Viewer:
        """Which jobs its requests see and act on: every one with ``operate``, else its own."""
        return EVERY_JOB if Scope.OPERATE in self.scopes else own_jobs(self.id)

    def grants(self) -> dict[str, list[str]]:
        """What the key may do, as the audit trail records it."""
        return {
            "scopes": sorted(s.value for s in self.scopes),
            "allowed_senders": list(self.allowed_senders),
        }

    def as_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return {
            "name": self.name,
            "scopes": sorted(s.value for s in self.scopes),
            "created_at": self.created_at,
            "created_by": self.created_by,
            "revoked_at": self.revoked_at,
            "allowed_senders": list(self.allowed_senders),
        }


def _checked_senders(senders: Iterable[str]) -> tuple[str, ...]:
    """Senders each checked like a request's, blanks and repeats dropped."""
    result: list[str] = []
    for item in senders:
        sender = check_sender(item)
        if sender is not None and sender not in result:
            result.append(sender)
    return tuple(result)


def parse_senders(senders: Iterable[str] | None) -> tuple[str, ...]:
    """The senders granted to a new key, each checked like a request's; None: none."""
    if senders is None:
        return ()
    result = _checked_senders(senders)
    if not result:
        raise InvalidOptionError("--senders needs at least one sender")
    return result


def _senders_column(senders: tuple[str, ...]) -> str | None:
    # NULL is "no grants", as it reads for keys made before grants were required.
    if len(",".join(senders)) > MAX_SENDERS_LENGTH:
        raise InvalidOptionError(f"the senders take more than {MAX_SENDERS_LENGTH} characters")
    return ",".join(senders) or None


def _info(key: ApiKey) -> KeyInfo:
    return KeyInfo(
        id=key.id,
        name=key.name,
        scopes=key.scope_set,
        created_at=key.created_at.isoformat(),
        created_by=key.created_by,
        revoked_at=key.revoked_at.isoformat() if key.revoked_at else None,
        allowed_senders=tuple(s for s in (key.allowed_senders or "").split(",") if s),
    )


class KeyStore:
    """Create, list, revoke and check API keys."""

    def __init__(self, database: Database) -> None:
        self.db = database

    def create(
        self,
        name: str,
        scopes: str | Iterable[str],
        *,
        actor: str,
        senders: Iterable[str] | None = None,
    ) -> tuple[str, KeyInfo]:
        """A new key: returns its token (shown once, never stored) and its info.

        ``senders`` are granted to it: requests with the key may use those and the
        default sender only.
        """
        if not name or len(name) > 100 or not set(name) <= _NAME_CHARS:
            raise InvalidOptionError("a key name is 1 to 100 letters, digits, '-', '_' or '.'")
        scope_set = parse_scopes(scopes)
        allowed = parse_senders(senders)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(
            name=name,
            token_hash=hash_token(token),
            scopes=",".join(sorted(s.value for s in scope_set)),
            created_at=utcnow(),
            created_by=actor,
            allowed_senders=_senders_column(allowed),
        )
        try:
            with self.db.transaction() as session:
                session.add(row)
                session.flush()
                info = _info(row)
                store.record_action(
                    session,
                    actor=actor,
                    action="keys.create",
                    target=name,
                    detail=info.grants(),
                    affected=1,
                )
        except IntegrityError:
            raise InvalidOptionError(f"a key named {name!r} exists already") from None
        redaction.register_secret(token)
        return token, info

    def list(self) -> list[KeyInfo]:
        """Every key, newest first, revoked ones included."""
        with self.db.transaction() as session:
            return [_info(r) for r in all_keys(session)]

    def get(self, key_id: int) -> KeyInfo | None:
        """The key with this id, revoked or not; None if there is none (one lookup)."""
        with self.db.transaction() as session:
            key = session.get(ApiKey, key_id)
            return _info(key) if key is not None else None

    def revoke(self, name: str, *, actor: str) -> KeyInfo:
        """Revoke a key at once; requests with it fail from now on."""
        with self.db.transaction() as session:
            done = revoke_key(session, name, at=utcnow())
            key = key_by_name(session, name)
            if key is None:
                raise NotFoundError(f"no key named {name!r}")
            store.record_action(
                session,
                actor=actor,
                action="keys.revoke",
                target=name,
                detail={},
                affected=int(done),
            )
            return _info(key)

    def update(
        self,
        name: str,
        *,
        actor: str,
        scopes: str | Iterable[str] | None = None,
        grant: Iterable[str] = (),
        revoke: Iterable[str] = (),
    ) -> KeyInfo:
        """Rescope a live key (``scopes`` replaces its scopes) and grant or revoke senders.

        Takes effect on the key's next request (the API and the dashboard read the
        key on every one). Audited as ``keys.update`` with the scopes and senders
        before and after. Revoking a sender the key was not granted is refused, so a
        mistyped name never leaves the grant in place unnoticed.
        """
        new_scopes = parse_scopes(scopes) if scopes is not None else None
        granted, revoked = _checked_senders(grant), _checked_senders(revoke)
        if new_scopes is None and not granted and not revoked:
            raise InvalidOptionError("say what to change: a scope, a sender to grant or revoke")
        if both := [s for s in granted if s in revoked]:
            raise InvalidOptionError(f"sender {both[0]!r} is both granted and revoked")
        with self.db.transaction() as session:
            key = key_by_name(session, name, for_update=True)
            if key is None:
                raise NotFoundError(f"no key named {name!r}")
            if key.revoked_at is not None:
                raise InvalidOptionError(f"key {name!r} is revoked; create a new one")
            before = _info(key)
            if missing := [s for s in revoked if s not in before.allowed_senders]:
                has = ", ".join(before.allowed_senders) or "none"
                raise InvalidOptionError(
                    f"key {name!r} was not granted sender {missing[0]!r} (it has: {has})"
                )
            kept = [s for s in before.allowed_senders if s not in revoked]
            senders = (*kept, *(s for s in granted if s not in kept))
            key.allowed_senders = _senders_column(senders)
            if new_scopes is not None:
                key.scopes = ",".join(sorted(s.value for s in new_scopes))
            after = _info(key)
            store.record_action(
                session,
                actor=actor,
                action="keys.update",
                target=name,
                detail={"before": before.grants(), "after": after.grants()},
                affected=int(after != before),
            )
            return after

    def authenticate(self, token: str, *, scope: Scope | None = None) -> KeyInfo:
        """The key a token belongs to, if live and holding ``scope``; else AuthenticationError.

        The message never says which of unknown, revoked or out of scope applied
        to an unknown token, nor echoes the token.
        """
        if not token:
            raise AuthenticationError("missing API key")
        digest = hash_token(token)
        with self.db.transaction() as session:
            key = key_by_token_hash(session, digest)
            if key is None or not hmac.compare_digest(key.token_hash, digest):
                raise AuthenticationError("invalid API key")
            if key.revoked_at is not None:
                raise AuthenticationError("invalid API key")
            info = _info(key)
        if scope is not None and scope not in info.scopes:
            raise AuthenticationError(f"key {info.name!r} lacks the {scope.value!r} scope")
        return info
