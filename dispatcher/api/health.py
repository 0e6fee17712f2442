"""``GET /healthz``: can this process reach its database and its broker?

Each check runs in a thread under a time limit, so a server that blackholes
packets makes the answer ``timeout`` rather than hanging the probe. The answer
and the log name only the dependency and the kind of failure, never a URL: a
broker or database URL may carry a password.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import redis

from dispatcher.config import Settings
from dispatcher.persistence.db import Database

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 3.0
OK = "ok"


class HealthChecker:
    """Checks the database and the broker the service was configured with."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        redis_client: redis.Redis | None,
        *,
        timeout_s: float = CHECK_TIMEOUT_S,
    ) -> None:
        self.database = database
        self.broker_url = settings.effective_broker_url
        self.broker_folder = settings.broker_folder
        self.redis = redis_client
        self.timeout_s = timeout_s

    def _database(self) -> None:
        self.database.ping()

    def _broker(self) -> None:
        if self.redis is not None:
            self.redis.ping()
        elif self.broker_url.startswith("filesystem://"):
            _check_folder(self.broker_folder)
        else:
            from kombu import Connection

            with Connection(self.broker_url, connect_timeout=self.timeout_s) as connection:
                connection.ensure_connection(max_retries=1)

    async def _run(self, name: str, check: Callable[[], None]) -> str:
        try:
            await asyncio.wait_for(asyncio.to_thread(check), self.timeout_s)
        except TimeoutError:
            log.warning("health: %s did not answer within %g s", name, self.timeout_s)
            return "timeout"
        except Exception as exc:
            log.warning("health: %s unreachable (%s)", name, type(exc).__name__)
            return "unreachable"
        return OK

    async def check(self) -> dict[str, str]:
        """``{"database": ..., "broker": ...}``, each ``ok`` or what went wrong."""
        database, broker = await asyncio.gather(
            self._run("database", self._database), self._run("broker", self._broker)
        )
        return {"database": database, "broker": broker}


def _check_folder(folder: Path) -> None:
    # The folder appears with the first wake-up; making it early is what that would do.
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        raise FileNotFoundError("the broker folder is missing or read-only")
