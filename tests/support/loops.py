"""Driving a dispatch loop in the test process: a service that wakes through the real
Celery waker on Redis (so the loop's awake mark is real), and waiting for a job."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from dispatcher.celery_app import CeleryWaker, make_celery
from dispatcher.domain.lanes import QUEUE_DISPATCH
from dispatcher.gateway.client import GatewayClient
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.service.dispatcher import Dispatcher
from support.reads import wait_for_jobs
from support.settings import make_settings


@dataclass(frozen=True, slots=True)
class RedisLoopService:
    """A service whose wake-ups and awake marks go to Redis, and a client on it."""

    service: Dispatcher
    waker: CeleryWaker
    queue: redis.Redis


@contextmanager
def redis_service(
    database: Database,
    sim: GatewaySimulator,
    data_dir: Path,
    broker_url: str,
    **overrides: Any,
) -> Iterator[RedisLoopService]:
    """``make_settings`` on the Redis broker, with the Celery waker as a worker has it;
    the lane's wake-up queue is emptied on the way out."""
    settings = make_settings(database, sim, data_dir, broker_url=broker_url, **overrides)
    app = make_celery(settings)
    waker = CeleryWaker(app)
    service = Dispatcher(
        settings,
        database=database,
        waker=waker,
        client_factory=lambda: GatewayClient(settings.gateway_config()),
    )
    queue = redis.Redis.from_url(broker_url)
    try:
        yield RedisLoopService(service, waker, queue)
    finally:
        queue.delete(QUEUE_DISPATCH)
        queue.close()
        service.close()
        waker.close()
        app.close()


def sent_within(db: Database, job_id: str, timeout_s: float) -> bool:
    """Whether every recipient of ``job_id`` is final within ``timeout_s``."""
    try:
        wait_for_jobs(db, [job_id], timeout_s=timeout_s)
    except AssertionError:
        return False
    return True
