"""`dispatcher balance` (docs/design.md section 5's CLI): the gateway's answer, kept as
the last balance `dispatcher state` shows; a refusal is one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dispatcher.config import ENV_PREFIX
from dispatcher.gateway.simulator import GatewaySimulator
from fixtures.pipelines import gateway_vars
from support.settings import DispatcherEnv
from support.workers import run_cli


def test_balance_asks_the_gateway_and_state_shows_it(
    simulator: GatewaySimulator, tmp_path: Path
) -> None:
    simulator.configure(credit=1234)
    env = DispatcherEnv(
        gateway_vars(simulator)
        | {
            ENV_PREFIX + "DATA_DIR": str(tmp_path / "data"),
            ENV_PREFIX + "SETTINGS_FILE": os.devnull,
        }
    )
    done = run_cli(env, tmp_path, "balance", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"balance": 1234}
    state = run_cli(env, tmp_path, "state")
    assert "last balance 1234" in state.stdout

    wrong = env.with_vars(gateway_password="not-the-password")
    refused = run_cli(wrong, tmp_path, "balance")
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert "LOGIN_INVALID" in lines[0]
    assert "not-the-password" not in refused.stderr
