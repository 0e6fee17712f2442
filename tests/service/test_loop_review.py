"""Found by a review of the dispatch loop (bac205c), fixed since: windows where a job
that sent no wake-up, or whose wake-up arrived, was left to the sweeper although the
loop promised a claim.

- a wake-up (``nudge``) that arrives while the loop's last look before sleeping has
  failed (the database away for a moment) is swallowed by the failure pause, and
  the loop then sleeps with the job due;
- a warm stop while the lanes are marked awake: producers that saw the mark sent no
  wake-up, and the stopping loop neither claims nor wakes anyone for them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dispatcher.celery_app import awake_key
from dispatcher.domain.lanes import QUEUE_DISPATCH, Priority
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.service.claim import Claim
from support.loops import redis_service, sent_within
from support.numbers import number
from support.polling import wait_until
from support.settings import make_service

pytestmark = pytest.mark.usefixtures("clean_env")


def test_a_wake_up_during_a_failed_last_look_is_not_swallowed(
    database: Database,
    simulator: GatewaySimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Linger 0: the loop's first look is marked, its second is the last look.
    service = make_service(database, simulator, tmp_path, dispatch_linger_s=0.0)
    # The loop's own Dispatch: its claims are what the database refuses here.
    dispatch = service._dispatch
    real = dispatch.claim_many
    calls = 0
    failed = threading.Event()

    def flaky(*, worker: str, limit: int) -> list[Claim]:
        # The last look meets the database away for a moment (one failed claim).
        nonlocal calls
        calls += 1
        if calls == 2:
            failed.set()
            raise ConnectionError("database away for a moment")
        return real(worker=worker, limit=limit)

    monkeypatch.setattr(dispatch, "claim_many", flaky)
    loop = service.start_loop()
    try:
        assert failed.wait(10.0)
        # The database is back: a producer commits (the loop's mark is cleared, so it
        # sends its wake-up) and the dispatch task nudges the loop, inside the loop's
        # CLAIM_FAILURE_PAUSE_S.
        job_id = service.enqueue(number(1), "woken during the pause").job_id
        loop.nudge()
        assert sent_within(service.db, job_id, 5.0), (
            "the wake-up was consumed by the failure pause and the loop went to sleep "
            f"(asleep={loop.asleep.is_set()}): the job waits for the sweeper"
        )
    finally:
        loop.stop()
        assert loop.join(30.0)
        service.close()


@pytest.mark.services
def test_a_warm_stop_leaves_no_job_that_saw_the_awake_mark_without_a_claim_or_wake_up(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path, broker_url: str
) -> None:
    # A long poll (and linger) so the stop lands between two looks of a lingering loop.
    with redis_service(
        pg_db, simulator, tmp_path, broker_url, dispatch_linger_s=30.0, dispatch_poll_s=2.0
    ) as stack:
        service, queue = stack.service, stack.queue
        key = awake_key(Priority.NORMAL)
        loop = service.start_loop()
        try:
            wait_until(lambda: queue.exists(key) == 1, timeout_s=5.0)
            time.sleep(0.3)  # the marked look has run; the next is a poll away
            job_id = service.enqueue(number(1), "saw the mark").job_id
            assert queue.llen(QUEUE_DISPATCH) == 0, "the producer saw the mark: no wake-up"
            loop.stop()  # warm shutdown (worker_shutting_down)
            assert loop.join(30.0)
            assert queue.exists(key) == 0
            claimed = sent_within(pg_db, job_id, 1.0)
            woken = queue.llen(QUEUE_DISPATCH) > 0
            assert claimed or woken, (
                "a commit that saw the mark got neither a claim nor a wake-up: it waits "
                "for another worker's sweeper"
            )
        finally:
            loop.stop()
