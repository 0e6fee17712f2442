"""`dispatcher retry --dry-run` (issue 16, item 1): what would go, what stays and why,
each recipient with its job, code and age; nothing written."""

from __future__ import annotations

import json
from pathlib import Path

from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.service.dispatcher import Dispatcher
from support.numbers import number
from support.reads import recipients_of
from support.settings import DispatcherEnv

from .test_audit import _unknown_job, actions, cli
from .test_audit import cli_env as cli_env  # the fixture


def test_cli_retry_dry_run_lists_what_would_go_and_why_the_rest_stays(
    cli_env: tuple[DispatcherEnv, Dispatcher], tmp_path: Path, simulator: GatewaySimulator
) -> None:
    env, svc = cli_env
    simulator.configure(number_rules={number(1): "INVALID_NUMBER"})
    job = svc.enqueue([number(1), number(2)], "dry").job_id
    svc.dispatch_due(worker="w")
    unknown = _unknown_job(svc, simulator)

    dry = cli(
        env,
        tmp_path,
        "retry",
        "--since",
        "2020-01-01",
        "--status",
        "failed",
        "--status",
        "unknown",
        "--dry-run",
    )
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0] == "would queue 0 recipients again in 0 jobs"
    assert any(line.startswith("left 1 permanent: failed for good") for line in lines)
    assert any(line.startswith("left 1 unknown_unconfirmed: unknown:") for line in lines)
    # Each held-back recipient is listed with its job, code and age.
    assert any(job in line and "INVALID_NUMBER" in line and " ago" in line for line in lines)
    assert any(unknown in line and "unknown" in line for line in lines)
    assert actions(svc.db, "retry") == []
    assert {r.status for r in recipients_of(svc.db, job)} == {"failed", "sent"}

    as_json = cli(env, tmp_path, "retry", "--job", job, "--dry-run", "--json")
    assert as_json.returncode == 0, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert (answer["retried"], answer["dry_run"]) == (0, True)
    assert answer["held_back"]["permanent"]["count"] == 1

    named = cli(env, tmp_path, "retry", "--job", job, "--error-code", "INVALID_NUMBER")
    assert named.returncode == 0, named.stderr
    assert named.stdout.startswith("queued 1 recipients again in 1 jobs")
    bad = cli(env, tmp_path, "retry", "--job", job, "--valid-for", "0")
    assert bad.returncode == 2
    assert "--valid-for" in bad.stderr
