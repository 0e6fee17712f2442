"""The chaos soak (docs/soak.md) runs in the test command, and it can fail.

A 60-second single-host soak with a fixed seed: the whole stack under load while
every kind of fault fires at least once, and every invariant must hold. Then the
same soak against a deliberately broken build (``broken_build/sitecustomize.py``:
a lost reply retried as if nothing was sent) must be told broken, with the double
sends named: a checker that cannot fail would prove nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ops.soak.faults import KINDS, schedule

ROOT = Path(__file__).resolve().parents[2]
SEED = 7
DURATION_S = 60.0
FAULT_GAP_S = 5.0

pytestmark = pytest.mark.services


@dataclass
class Soak:
    """A ``python -m ops.soak`` child process, its output read once it ends."""

    process: subprocess.Popen[str]
    output: Path

    def result(self) -> tuple[int, dict[str, Any], str]:
        """Wait for it; its exit status, its JSON and a report for failures."""
        stdout, stderr = self.process.communicate(timeout=600)
        report = f"stdout:\n{stdout}\nstderr (tail):\n{stderr[-3000:]}"
        assert self.output.exists(), report
        return self.process.returncode, json.loads(self.output.read_text()), report


def _start(workdir: Path, *args: str, env: dict[str, str] | None = None) -> Soak:
    output = workdir / "soak.json"
    command = [sys.executable, "-m", "ops.soak", "--workdir", str(workdir / "run")]
    process = subprocess.Popen(
        [*command, "--output", str(output), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Soak(process, output)


@pytest.fixture(scope="module")
def broken_build_soak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Soak]:
    """The broken build's soak, started with the module so that it runs beside the
    one-minute soak rather than after it (each has services of its own): a minute
    less in the test command."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent / "broken_build"))
    args = ["--duration", "20", "--seed", "3", "--kinds", "gateway_drop", "--fault-gap", "4"]
    soak = _start(tmp_path_factory.mktemp("broken"), *args, env=env)
    try:
        yield soak
    finally:
        if soak.process.poll() is None:
            # SIGINT, not SIGKILL: the soak's own cleanup stops the servers it started.
            soak.process.send_signal(signal.SIGINT)
            try:
                soak.process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                soak.process.kill()
                soak.process.communicate()


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("broken_build_soak")
def test_a_minute_of_random_faults_breaks_no_invariant(tmp_path: Path) -> None:
    planned = schedule(SEED, DURATION_S, FAULT_GAP_S)
    assert {p.kind for p in planned} == set(KINDS), "the CI seed must fire every kind"

    args = ["--duration", f"{DURATION_S:g}", "--seed", str(SEED), "--fault-gap", f"{FAULT_GAP_S:g}"]
    code, result, report = _start(tmp_path, *args).result()

    broken = [i for i in result["invariants"] if not i["holds"]]
    assert code == 0, report
    assert not broken, report
    assert result["holds"] is True
    assert {f["kind"] for f in result["faults"]} == set(KINDS), report
    assert not [f for f in result["faults"] if f["detail"].startswith("failed")], report
    # The load ran, all four producers were acknowledged, and it all drained.
    assert set(result["acknowledged_by_kind"]) == {"api", "scheduled", "dropin", "python"}
    assert result["figures"]["sent"] > 1000, report
    assert sum(result["by_status"].values()) >= result["figures"]["sent"]
    assert set(result["by_status"]) <= {"sent", "failed", "unknown"}, report


@pytest.mark.timeout(600)
def test_the_soak_tells_a_build_that_resends_lost_replies_broken(
    broken_build_soak: Soak,
) -> None:
    code, result, report = broken_build_soak.result()

    assert code == 1, report
    assert result["holds"] is False
    verdict = {i["name"]: i for i in result["invariants"]}
    assert verdict["accepted_once"]["broken"] > 0, report
    assert "accepted" in verdict["accepted_once"]["examples"][0]
    assert "BROKEN" in report
