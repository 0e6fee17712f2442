"""The statuses' one table of allowed moves, and the store refusing any other."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher.domain.statuses import (
    FINAL_STATUSES,
    PENDING_STATUSES,
    RECIPIENT_TRANSITIONS,
    RETRYABLE_STATUSES,
    WAITING_STATUSES,
    RecipientStatus,
    can_transition,
    check_transitions,
)
from dispatcher.domain.times import utcnow
from dispatcher.persistence import migrate, store
from dispatcher.persistence.db import Database

S = RecipientStatus


def test_the_groups_partition_the_statuses() -> None:
    assert set(RecipientStatus) == FINAL_STATUSES | PENDING_STATUSES
    assert not FINAL_STATUSES & PENDING_STATUSES
    assert set(WAITING_STATUSES) < PENDING_STATUSES
    assert set(RETRYABLE_STATUSES) < FINAL_STATUSES
    assert set(RECIPIENT_TRANSITIONS) == set(RecipientStatus)


def test_only_an_operators_retry_or_a_late_reply_leaves_a_final_status() -> None:
    for status in FINAL_STATUSES - set(RETRYABLE_STATUSES):
        assert not RECIPIENT_TRANSITIONS[status], status
    for status in RETRYABLE_STATUSES:
        assert can_transition(status, S.QUEUED)
    assert not can_transition(S.SENT, S.QUEUED)
    assert not can_transition(S.FAILED, S.SENT)
    assert can_transition(S.UNKNOWN, S.SENT), "the real reply replaces the sweeper's guess"


def test_check_transitions_names_each_forbidden_origin() -> None:
    check_transitions(WAITING_STATUSES, S.SUBMITTING)
    with pytest.raises(ValueError, match="from cancelled, sent to queued"):
        check_transitions([S.FAILED, S.SENT, S.CANCELLED], S.QUEUED)


def test_the_store_refuses_a_forbidden_move_before_writing(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'moves.sqlite3'}")
    try:
        migrate.upgrade(db)
        with db.transaction() as session, pytest.raises(ValueError, match="from sent"):
            store.transition(
                session,
                ids=[1],
                from_statuses=[S.SENT],
                to_status=S.QUEUED,
                at=utcnow(),
                cause="a bug",
                actor="test",
            )
    finally:
        db.dispose()
