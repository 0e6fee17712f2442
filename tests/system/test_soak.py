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
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ops.soak.faults import KINDS, schedule

ROOT = Path(__file__).resolve().parents[2]
SEED = 7
DURATION_S = 60.0
FAULT_GAP_S = 5.0

pytestmark = pytest.mark.services


def _soak(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], str]:
    output = tmp_path / "soak.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.soak",
            "--workdir",
            str(tmp_path / "run"),
            "--output",
            str(output),
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    report = f"stdout:\n{done.stdout}\nstderr (tail):\n{done.stderr[-3000:]}"
    assert output.exists(), report
    return done.returncode, json.loads(output.read_text()), report


@pytest.mark.timeout(600)
def test_a_minute_of_random_faults_breaks_no_invariant(tmp_path: Path) -> None:
    planned = schedule(SEED, DURATION_S, FAULT_GAP_S)
    assert {p.kind for p in planned} == set(KINDS), "the CI seed must fire every kind"

    code, result, report = _soak(
        tmp_path,
        "--duration",
        f"{DURATION_S:g}",
        "--seed",
        str(SEED),
        "--fault-gap",
        f"{FAULT_GAP_S:g}",
    )

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
def test_the_soak_tells_a_build_that_resends_lost_replies_broken(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent / "broken_build"))

    code, result, report = _soak(
        tmp_path,
        "--duration",
        "20",
        "--seed",
        "3",
        "--kinds",
        "gateway_drop",
        "--fault-gap",
        "4",
        env=env,
    )

    assert code == 1, report
    assert result["holds"] is False
    verdict = {i["name"]: i for i in result["invariants"]}
    assert verdict["accepted_once"]["broken"] > 0, report
    assert "accepted" in verdict["accepted_once"]["examples"][0]
    assert "BROKEN" in report
