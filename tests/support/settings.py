"""A test's settings: DISPATCHER_* for child processes, and Settings for in-process use.

``DispatcherEnv`` is what worker processes, the CLI and producers of one test are
configured with; ``make_settings`` and ``make_service`` drive a Dispatcher in the
test process against a database and the simulator.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import ENV_PREFIX, Settings, load_settings
from dispatcher.gateway.client import GatewayClient
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.service.dispatcher import Dispatcher

# Long enough that nothing retries or expires by itself while a test looks.
BACKOFF_S = 30.0
SUBMITTING_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DispatcherEnv:
    """The DISPATCHER_* variables of one test: for worker processes, the CLI and producers."""

    variables: dict[str, str]

    @classmethod
    def on_database(cls, url: str, data_dir: Path, **extra: str) -> DispatcherEnv:
        """The CLI (or a producer) on the database at ``url``, no settings file from the
        machine; ``extra`` as in ``with_vars``."""
        base = cls(
            {
                ENV_PREFIX + "DATABASE_URL": url,
                ENV_PREFIX + "DATA_DIR": str(data_dir),
                ENV_PREFIX + "SETTINGS_FILE": os.devnull,
            }
        )
        return base.with_vars(**extra)

    def with_vars(self, **extra: str) -> DispatcherEnv:
        """A copy with some variables changed (names without the prefix, any case)."""
        changed = {ENV_PREFIX + name.upper(): value for name, value in extra.items()}
        return DispatcherEnv({**self.variables, **changed})

    def without(self, *names: str) -> DispatcherEnv:
        """A copy without some variables (names without the prefix, any case)."""
        dropped = {ENV_PREFIX + name.upper() for name in names}
        return DispatcherEnv({k: v for k, v in self.variables.items() if k not in dropped})

    def process_env(self) -> dict[str, str]:
        """The environment of a child process: ours minus stray DISPATCHER_*, plus these."""
        base = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
        return {**base, **self.variables}

    def settings(self) -> Settings:
        """The Settings a process started with ``process_env()`` would build."""
        overrides: dict[str, Any] = {
            name.removeprefix(ENV_PREFIX).lower(): value
            for name, value in self.variables.items()
            if name != ENV_PREFIX + "SETTINGS_FILE"
        }
        for name in ("database_url", "broker_url"):
            overrides.setdefault(name, None)
        return load_settings(**overrides)


def apply_env(env: DispatcherEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the test process's environment match the workers' (no stray DISPATCHER_*)."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.variables.items():
        monkeypatch.setenv(name, value)


def make_settings(
    database: Database, sim: GatewaySimulator, data_dir: Path, **overrides: Any
) -> Settings:
    """Settings for driving a Dispatcher in-process against ``database`` and ``sim``."""
    config = sim.config()
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database.url,
        "broker_url": None,
        "gateway_url": sim.base_url,
        "gateway_backup_url": "",
        "gateway_allow_http": True,
        "gateway_username": config.username,
        "gateway_password": config.password,
        "gateway_connect_timeout_s": 1,
        "gateway_read_timeout_s": 1,
        "submitting_timeout_s": SUBMITTING_TIMEOUT_S,
        "retry_backoff_s": BACKOFF_S,
        "retry_backoff_max_s": 2 * BACKOFF_S,
        "max_attempts": 3,
    }
    return load_settings(**(values | overrides))


def make_service(
    database: Database, sim: GatewaySimulator, data_dir: Path, **overrides: Any
) -> Dispatcher:
    """A Dispatcher driven in-process, with ``make_settings`` and some settings changed."""
    settings = make_settings(database, sim, data_dir, **overrides)
    return Dispatcher(
        settings,
        database=database,
        client_factory=lambda: GatewayClient(settings.gateway_config()),
    )
