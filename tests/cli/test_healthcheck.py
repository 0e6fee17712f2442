"""`dispatcher healthcheck --worker`: the compose worker's health check, from its own
heartbeats (README, "Worker health"): healthy only while alive and consuming."""

from __future__ import annotations

import datetime as dt
import json
import socket
from pathlib import Path

import pytest

from dispatcher.domain.times import utcnow
from dispatcher.persistence.db import Database
from dispatcher.persistence.store.heartbeats import upsert_heartbeat
from support.settings import DispatcherEnv
from support.workers import run_cli

pytestmark = pytest.mark.usefixtures("clean_env")


def beat(database: Database, *, seen_ago_s: float, consumed_ago_s: float | None) -> None:
    now = utcnow()
    with database.transaction() as session:
        upsert_heartbeat(
            session,
            {
                "name": "worker@here",
                "hostname": socket.gethostname(),
                "pid": 1,
                "queues": "dispatcher.dispatch",
                "started_at": now - dt.timedelta(minutes=5),
                "seen_at": now - dt.timedelta(seconds=seen_ago_s),
                "consumed_at": None
                if consumed_ago_s is None
                else now - dt.timedelta(seconds=consumed_ago_s),
                "batches": 0,
                "state": "running",
            },
        )


def test_healthy_only_while_alive_and_consuming(database: Database, tmp_path: Path) -> None:
    env = DispatcherEnv.on_database(database.url, tmp_path / "data", heartbeat_interval_s="10")
    nobody = run_cli(env, tmp_path, "healthcheck", "--worker")
    assert nobody.returncode == 1
    assert "no running worker" in nobody.stderr

    beat(database, seen_ago_s=1, consumed_ago_s=2)
    healthy = run_cli(env, tmp_path, "healthcheck", "--worker")
    assert healthy.returncode == 0, healthy.stderr
    assert healthy.stdout.startswith("healthy")

    beat(database, seen_ago_s=1, consumed_ago_s=600)  # runs, but the broker is silent
    stuck = run_cli(env, tmp_path, "healthcheck", "--worker")
    assert stuck.returncode == 1
    assert "has not consumed" in stuck.stderr

    beat(database, seen_ago_s=600, consumed_ago_s=600)
    assert run_cli(env, tmp_path, "healthcheck", "--worker").returncode == 1
    assert run_cli(env, tmp_path, "healthcheck").returncode == 2  # says what to check


def test_state_lists_each_lanes_workers_and_send_warns_for_a_lane_nobody_serves(
    database: Database, tmp_path: Path
) -> None:
    env = DispatcherEnv.on_database(database.url, tmp_path / "data", heartbeat_interval_s="10")
    sent = run_cli(env, tmp_path, "send", "--to", "07700900123", "--json", "hi")
    assert sent.returncode == 0, sent.stderr
    assert "warning: no live worker consumes the normal lane" in sent.stderr
    assert json.loads(sent.stdout)["id"]  # stdout is still only the JSON

    beat(database, seen_ago_s=1, consumed_ago_s=2)  # consumes the normal lane only
    state = run_cli(env, tmp_path, "state")
    assert state.returncode == 0, state.stderr
    assert "workers normal 1 alive, 1 consuming" in state.stdout
    assert "workers high   0 alive, 0 consuming  (nothing in this lane is sent)" in state.stdout
    as_json = json.loads(run_cli(env, tmp_path, "state", "--json").stdout)
    assert as_json["workers"]["normal"] == {"alive": 1, "consuming": 1}
    quiet = run_cli(env, tmp_path, "send", "--to", "07700900123", "hi")
    assert quiet.returncode == 0, quiet.stderr
    assert "warning" not in quiet.stderr
