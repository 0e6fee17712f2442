"""The composition root builds the parts from a settings object; imports build nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher import runtime, tasks
from dispatcher.celery_app import TASK_DISPATCH, TASK_HEARTBEAT, TASK_SWEEP, TASK_WEBHOOKS
from dispatcher.cli.demo import run_demo
from dispatcher.config import ENV_PREFIX, load_settings


@pytest.fixture
def fresh_runtime() -> Iterator[None]:
    runtime.reset()
    try:
        yield
    finally:
        runtime.reset()


def test_importing_the_celery_app_and_tasks_reads_no_environment(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    # Settings read at import would refuse this URL, and a file broker built at
    # import would make its folders under the data directory.
    env[ENV_PREFIX + "DATABASE_URL"] = "not a database url"
    env[ENV_PREFIX + "DATA_DIR"] = str(data_dir)
    env[ENV_PREFIX + "SETTINGS_FILE"] = os.devnull
    code = (
        "import dispatcher.celery_app as c, dispatcher.tasks, dispatcher.runtime\n"
        "assert not hasattr(c, 'app') and not hasattr(c, 'wake'), 'an app built at import'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert not data_dir.exists()


def test_the_root_builds_the_celery_app_from_the_settings_it_is_given(
    tmp_path: Path, fresh_runtime: None
) -> None:
    settings = load_settings(
        data_dir=tmp_path, database_url=None, broker_url="redis://127.0.0.1:6379/14"
    )
    runtime.use(settings)
    app = runtime.celery()
    assert runtime.settings() is settings
    assert app.conf.broker_url == "redis://127.0.0.1:6379/14"
    assert app is runtime.celery()
    # The tasks are shared: the app the root built has them without naming a module.
    assert tasks.dispatch.name == TASK_DISPATCH
    assert {TASK_DISPATCH, TASK_SWEEP, TASK_HEARTBEAT, TASK_WEBHOOKS} <= set(app.tasks)

    runtime.reset()
    assert runtime.settings() is not settings
    assert runtime.celery() is not app


def test_the_demo_leaves_the_process_environment_alone(
    tmp_path: Path, fresh_runtime: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.setenv(ENV_PREFIX + "SETTINGS_FILE", os.devnull)
    before = dict(os.environ)

    code = run_demo(recipients=5, data_dir=str(tmp_path / "demo"), timeout_s=90)

    assert code == 0
    assert dict(os.environ) == before
