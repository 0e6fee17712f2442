"""The sweeper thread while the database is away: it keeps trying every round, and
its log says so once a minute per kind with the traceback, not twice a second (the
soak's PostgreSQL restarts wrote 114 sweep tracebacks in 30 minutes, docs/soak.md)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from dispatcher import runtime
from dispatcher.config import ENV_PREFIX
from dispatcher.service.wake import no_wake
from ops.soak.services import closed_port
from support.logs import has_traceback


@pytest.mark.usefixtures("clean_env")
def test_a_failing_sweep_rollup_and_heartbeat_are_each_told_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    port = closed_port()
    monkeypatch.setenv(
        ENV_PREFIX + "DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{port}/away"
    )
    monkeypatch.setenv(ENV_PREFIX + "DATA_DIR", str(tmp_path))
    monkeypatch.setenv(ENV_PREFIX + "ROLLUP_INTERVAL_S", "0.01")
    runtime.reset()
    runtime.service(waker=no_wake)
    beats = 0

    def tick() -> None:
        nonlocal beats
        beats += 1
        raise ConnectionError("the database is away")

    caplog.set_level(logging.DEBUG, logger="dispatcher.runtime")
    stop = threading.Event()
    thread = threading.Thread(
        target=runtime.sweep_forever, args=(0.01, stop), kwargs={"tick": tick}, daemon=True
    )
    try:
        thread.start()
        deadline = time.monotonic() + 30
        while beats < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=30)
        runtime.reset()

    assert beats >= 10, "the sweeper stopped trying"
    told = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sorted(r.getMessage().split(";")[0].split(" (")[0] for r in told) == [
        "heartbeat failed",
        "rollup failed",
        "sweep failed",
    ]
    assert all(map(has_traceback, told)), "the one line a minute keeps its traceback"
    assert "every 0.01 s" in next(r.getMessage() for r in told if "sweep" in r.getMessage())
    quiet = [r for r in caplog.records if r.levelno == logging.DEBUG and has_traceback(r)]
    assert len(quiet) >= 3 * (10 - 1) - 2
