"""A broker that is away while producers send: each job stays committed, and the log
says so once a minute, not once per job with a traceback each (found by the chaos
soak, docs/soak.md: a Redis restart under load wrote one 60-line traceback per job)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import pytest

from dispatcher.config import Settings
from dispatcher.domain.lanes import Priority
from dispatcher.persistence.db import Database
from dispatcher.service.wake import Wakes
from support.logs import has_traceback


class BrokerAway:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, count: int, lane: Priority = Priority.NORMAL) -> None:
        self.calls += 1
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


@pytest.mark.usefixtures("clean_env")
def test_wake_up_failures_warn_once_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    waker = BrokerAway()
    # wake() reaches only the waker, never the database.
    wakes = Wakes(Settings(data_dir=tmp_path), cast(Database, None), waker)
    caplog.set_level(logging.DEBUG, logger="dispatcher.service.wake")

    for _ in range(50):
        wakes.wake(1, Priority.HIGH)

    assert waker.calls == 50
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "ConnectionError" in warnings[0].getMessage()
    assert "sweeper" in warnings[0].getMessage()
    assert not has_traceback(warnings[0])
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and has_traceback(r)]
    assert len(debug) == 50
