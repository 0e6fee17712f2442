"""The pipeline's core flows with RabbitMQ as the broker (README "Production").

The ``pipeline`` fixture (``fixtures/pipelines.py``) takes its broker from the ``broker_url``
fixture; this module overrides that fixture with an AMQP URL, so the same
PostgreSQL, simulator and real ``dispatcher worker`` processes run on RabbitMQ.
The session gets a vhost of its own (created with ``rabbitmqctl``, deleted after),
or, without ``rabbitmqctl``, the default vhost, with the dispatch queue purged
before each test.

RabbitMQ is never skipped: when it does not answer, every test here fails saying
how to start it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import kombu
import pytest

from dispatcher.celery_app import CeleryWaker, make_celery
from dispatcher.domain.lanes import QUEUE_DISPATCH
from dispatcher.domain.statuses import AttemptOutcome, BatchStatus
from dispatcher.gateway.simulator import FIRST_MESSAGE_ID
from dispatcher.service.dispatcher import Dispatcher
from support.numbers import number
from support.pipeline import Pipeline
from support.polling import wait_until
from support.reads import attempts_of, batches_of, recipients_of, send_requests

pytestmark = pytest.mark.services

RABBITMQ_HOST = os.environ.get("DISPATCHER_TEST_RABBIT_HOST", "127.0.0.1")
RABBITMQ_PORT = int(os.environ.get("DISPATCHER_TEST_RABBIT_PORT", "5672"))
RABBITMQ_USER = os.environ.get("DISPATCHER_TEST_RABBIT_USER", "guest")
RABBITMQ_PASSWORD = os.environ.get("DISPATCHER_TEST_RABBIT_PASSWORD", "guest")
RABBITMQCTL_TIMEOUT_S = 60


def amqp_url(vhost: str) -> str:
    """The broker URL of ``vhost`` on the test server ("/" is written as "//")."""
    path = "/" if vhost == "/" else quote(vhost, safe="")
    return f"amqp://{RABBITMQ_USER}:{RABBITMQ_PASSWORD}@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{path}"


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``rabbitmqctl ARGS``; the caller checks the exit code."""
    return subprocess.run(
        ["rabbitmqctl", *args],
        capture_output=True,
        text=True,
        timeout=RABBITMQCTL_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[str]:
    """A vhost for this session on the local RabbitMQ; fails (never skips) without one."""
    connection: Any = kombu.Connection(amqp_url("/"), connect_timeout=5)
    problem = None
    try:
        connection.ensure_connection(max_retries=1)
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
    finally:
        connection.release()
    if problem is not None:
        pytest.fail(
            f"RabbitMQ at {RABBITMQ_HOST}:{RABBITMQ_PORT} does not answer ({problem}). "
            "These tests need it: start it with `rabbitmq-server -detached` "
            "(or scripts/services).",
            pytrace=False,
        )

    vhost = f"dispatcher-test-{os.getpid()}-{secrets.token_hex(4)}"
    created = shutil.which("rabbitmqctl") is not None and rabbitmqctl("add_vhost", vhost)
    if not created or created.returncode != 0:
        # No rabbitmqctl, or not allowed to use it: share the default vhost (the
        # dispatch queue is purged before each test).
        yield "/"
        return
    try:
        granted = rabbitmqctl("set_permissions", "-p", vhost, RABBITMQ_USER, ".*", ".*", ".*")
        assert granted.returncode == 0, f"rabbitmqctl set_permissions: {granted.stderr}"
        yield vhost
    finally:
        rabbitmqctl("delete_vhost", vhost)


def _channel_call(url: str, method: str, *args: Any, **kwargs: Any) -> Any:
    connection: Any = kombu.Connection(url, connect_timeout=5)
    try:
        channel = connection.channel()
        try:
            return getattr(channel, method)(*args, **kwargs)
        finally:
            channel.close()
    finally:
        connection.release()


def wakeups_waiting(url: str) -> int:
    """Wake-ups ready in the dispatch queue (0 when the queue does not exist)."""
    try:
        _, count, _ = _channel_call(url, "queue_declare", QUEUE_DISPATCH, passive=True)
    except kombu.Connection(url).channel_errors:
        return 0
    return int(count)


def purge_wakeups(url: str) -> int:
    """Drop every wake-up waiting in the dispatch queue, as a broker losing them would."""
    return int(_channel_call(url, "queue_purge", QUEUE_DISPATCH) or 0)


# The pipeline's own tests of these flows, collected again here so they run with this
# module's broker_url: the same assertions on RabbitMQ, with no second copy to drift.
from .test_pipeline import (  # noqa: E402
    test_duplicate_wakeups_and_racing_workers_make_one_call_per_batch,  # noqa: F401
    test_mixed_reply_retries_only_the_transient_recipient,  # noqa: F401
)


@pytest.fixture
def broker_url(rabbitmq_vhost: str) -> str:
    """Overrides the shared fixture's Redis broker: the session's RabbitMQ vhost, emptied."""
    url = amqp_url(rabbitmq_vhost)
    # Purged, not deleted: a producer in this process remembers having declared the
    # queue (kombu caches declarations on its pooled connections, which outlive a
    # Celery app), so it would not declare it again, and its wake-ups would be
    # dropped as unroutable.
    if wakeups_waiting(url):
        purge_wakeups(url)
    return url


def test_multi_recipient_job_is_sent_with_ids_stored(pipeline: Pipeline) -> None:
    [worker] = pipeline.start_workers()
    assert pipeline.env.settings().effective_broker_url.startswith("amqp://")
    assert "transport:   amqp://" in worker.log()  # the worker really is on RabbitMQ
    numbers = [number(1), number(2), number(3)]

    result = pipeline.enqueue(["+44 7700 900001", "07700 900002", "00447700900003"], "Hello")
    pipeline.wait_for(result.job_id)

    rows = recipients_of(pipeline.db, result.job_id)
    assert [(r.number, r.status, r.attempts) for r in rows] == [(n, "sent", 1) for n in numbers]
    assert {r.gateway_message_id for r in rows} == {str(FIRST_MESSAGE_ID)}
    pipeline.check_invariants()

    done = pipeline.cli("status", result.job_id, "--json")
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert (view["id"], view["status"]) == (result.job_id, "completed")
    assert [(r["number"], r["gateway_message_id"]) for r in view["recipients"]] == [
        (n, str(FIRST_MESSAGE_ID)) for n in numbers
    ]


def test_a_lost_wakeup_is_recovered_by_the_sweeper(pipeline: Pipeline, broker_url: str) -> None:
    result = pipeline.enqueue([number(1), number(2)], "Nobody woke me")
    # The broker loses the wake-up while no worker runs.
    assert wakeups_waiting(broker_url) == 1
    assert purge_wakeups(broker_url) == 1
    assert wakeups_waiting(broker_url) == 0
    pipeline.start_workers()

    pipeline.wait_for(result.job_id, timeout_s=30)

    assert {r.status for r in recipients_of(pipeline.db, result.job_id)} == {"sent"}
    assert send_requests(pipeline.sim) == 1
    pipeline.check_invariants()


def test_a_worker_killed_mid_call_leaves_unknown_and_the_rest_completes(
    pipeline: Pipeline, broker_url: str
) -> None:
    pipeline.sim.configure(latency_ms=1500)
    # Short gateway timeouts so the sweeper may call the batch abandoned after 17 s.
    workers = pipeline.start_workers(
        2, GATEWAY_CONNECT_TIMEOUT_S="1", GATEWAY_READ_TIMEOUT_S="2", SUBMITTING_TIMEOUT_S="17"
    )

    killed = pipeline.enqueue([number(1), number(2)], "Killed mid-call")
    wait_until(lambda: pipeline.sim.stats()["in_flight"] == 1, 10, message="the call")
    [attempt] = attempts_of(pipeline.db, killed.job_id)
    assert attempt.worker
    pid = int(attempt.worker.split(":")[1])
    [victim] = [w for w in workers if w.process.pid == pid]
    victim.process.kill()
    victim.process.wait(timeout=10)
    killed_at = time.monotonic()

    # The rest goes on: the survivor sends new work at once (and the killed worker's
    # unacknowledged wake-up, redelivered by RabbitMQ, claims nothing).
    pipeline.sim.configure(latency_ms=0)
    rest = pipeline.enqueue([number(3), number(4), number(5)], "After the kill")
    pipeline.wait_for(rest.job_id, timeout_s=10)
    assert [r.status for r in recipients_of(pipeline.db, killed.job_id)] == ["submitting"] * 2
    assert time.monotonic() - killed_at < 17

    pipeline.wait_for(killed.job_id, timeout_s=45)

    rows = recipients_of(pipeline.db, killed.job_id)
    assert [(r.status, r.error_code, r.attempts) for r in rows] == [
        ("unknown", "WORKER_LOST", 1)
    ] * 2
    [abandoned] = attempts_of(pipeline.db, killed.job_id)
    assert abandoned.outcome == AttemptOutcome.ABANDONED
    [batch] = batches_of(pipeline.db, killed.job_id)
    assert batch.status == BatchStatus.DONE
    assert batch.claimed_at is not None
    assert abandoned.finished_at is not None
    assert abandoned.finished_at - batch.claimed_at >= dt.timedelta(seconds=17)
    sent = recipients_of(pipeline.db, rest.job_id)
    assert [(r.status, r.attempts) for r in sent] == [("sent", 1)] * 3
    # Several sweeps later: one call per batch, the killed one never re-submitted.
    time.sleep(1.5)
    assert send_requests(pipeline.sim) == 2
    ledger = {e["number"]: e["message_id"] for e in pipeline.sim.ledger()}
    assert {r.number: r.gateway_message_id for r in sent}.items() <= ledger.items()
    assert set(ledger) - {r.number for r in sent} in (set(), {number(1), number(2)})
    assert wakeups_waiting(broker_url) == 0
    assert all(w.process.poll() is None for w in workers if w is not victim)


def test_producers_on_amqp_wake_for_every_job(pipeline: Pipeline, broker_url: str) -> None:
    """On AMQP the producer does not count waiting wake-ups (that would take a
    connection of its own per job): every job sends its own, and all are sent."""
    settings = pipeline.env.settings()
    app = make_celery(settings)
    waker = CeleryWaker(app)
    producer = Dispatcher(settings, database=pipeline.db, waker=waker)
    try:
        assert waker.waiting() is None
        jobs = [producer.enqueue(number(i), f"each its own, {i}").job_id for i in range(1, 6)]
        assert wakeups_waiting(broker_url) == 5
        assert waker.pending() == 5, "the sweeper still counts them"
        pipeline.start_workers()
        pipeline.wait_for(*jobs, timeout_s=60)
    finally:
        producer.close()
        waker.close()
        app.close()
    assert send_requests(pipeline.sim) == 5
    pipeline.check_invariants()
