"""The ``api_keys`` rows: looked up by id, name or token hash, never by the token itself."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dispatcher.persistence.models import ApiKey


def all_keys(session: Session) -> Sequence[ApiKey]:
    """Every key, newest first, revoked ones included."""
    return session.execute(select(ApiKey).order_by(ApiKey.id.desc())).scalars().all()


def key_by_name(session: Session, name: str, *, for_update: bool = False) -> ApiKey | None:
    """The key named ``name``; locked for the transaction with ``for_update``."""
    query = select(ApiKey).where(ApiKey.name == name)
    if for_update:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def key_by_token_hash(session: Session, digest: str) -> ApiKey | None:
    """The key whose stored hash is ``digest`` (the unique index answers it)."""
    return session.execute(select(ApiKey).where(ApiKey.token_hash == digest)).scalar_one_or_none()


def revoke_key(session: Session, name: str, *, at: dt.datetime) -> bool:
    """Mark the live key named ``name`` revoked; False when none was live."""
    done = session.execute(
        update(ApiKey)
        .where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
        .values(revoked_at=at)
        .execution_options(synchronize_session=False)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]
