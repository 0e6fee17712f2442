"""The pipeline benchmark runs end to end, so it cannot rot.

Tiny counts, real PostgreSQL, Redis, simulator and worker processes. Only that the
output is complete and consistent is checked (every recipient accepted in every
mode, at every latency), never how fast anything was: speed is for the benchmark.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.services
@pytest.mark.usefixtures("services")
def test_pipeline_benchmark_quick_is_complete(tmp_path: Path) -> None:
    output = tmp_path / "pipeline.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.bench.pipeline",
            "--quick",
            "--bulk-jobs",
            "2",
            "--bulk-recipients",
            "150",
            "--transactional-jobs",
            "20",
            "--baseline-sample",
            "12",
            "--sim-requests",
            "40",
            "--limit-threads",
            "2",
            "--worker-concurrency",
            "4",
            "8",
            "--workers",
            "1",
            "--producers",
            "1",
            "--output",
            str(output),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(output.read_text())
    assert output.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    runs = {(run["scenario"], run["latency_ms"]): run for run in figures["runs"]}
    assert set(runs) == {(s, lat) for s in ("bulk", "transactional") for lat in (0.0, 150.0)}
    expected = {"bulk": 300, "transactional": 20}
    for (scenario, _latency), run in runs.items():
        for mode in ("ours", "limit"):
            assert run[mode]["recipients"] == expected[scenario]
        assert run["baseline"]["recipients"] == 12
        for mode in ("ours", "baseline", "limit"):
            figures_ = run[mode]
            assert figures_["accepted"] == figures_["simulator_accepted"] == figures_["recipients"]
            assert figures_["recipients_per_s"] > 0
            assert figures_["p50_ms"] <= figures_["p99_ms"]
            assert figures_["peak_worker_rss_mb"] > 0
        assert run["simulator"]["complete"]
        # One HTTP attempt per batch of at most 100, none repeated.
        assert run["ours"]["attempts"] == {"bulk": 4, "transactional": 20}[scenario]
        assert run["ratios"]["ours_over_baseline"] is not None
        assert run["ratios"]["ours_over_limit"] is not None
    assert "| bulk | 0 ms | ours |" in done.stdout


@pytest.mark.services
@pytest.mark.usefixtures("services")
def test_steady_load_benchmark_quick_is_complete(tmp_path: Path) -> None:
    """The open-loop OTP benchmark runs: every scheduled job accepted, its latency
    figures ordered (completeness only; the figures are for the benchmark)."""
    output = tmp_path / "steady.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.bench.steady",
            "--quick",
            "--rate",
            "15",
            "--duration-s",
            "2",
            "--workers",
            "1",
            "--worker-concurrency",
            "4",
            "--producers",
            "2",
            "--output",
            str(output),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steady = json.loads(output.read_text())["steady"]
    assert steady["complete"], steady
    assert steady["sent"] == steady["jobs"] == 30
    assert 0 < steady["p50_ms"] <= steady["p99_ms"] <= steady["max_ms"]
    assert "p99" in done.stdout
