"""The dashboard scale benchmark runs end to end in its quick mode, so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "ops" / "bench" / "dashboard_scale.py"


@pytest.mark.services
def test_quick_dashboard_benchmark(services: None, tmp_path: Path) -> None:
    output = tmp_path / "dashboard_scale.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--quiet-plans", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    report = json.loads(output.read_text())
    assert report["rows"]["recipients"] == 20_000
    assert report["rows"]["status_events"] > report["rows"]["recipients"]
    expected = {
        "overview",
        "search_number",
        "search_job_id",
        "search_gateway_id",
        "job_page",
        "page_overview",
        "page_search",
        "page_job",
    }
    assert expected <= set(report["operations"])
    for name, figures in report["operations"].items():
        assert 0 < figures["p50_ms"] <= figures["p95_ms"] <= figures["max_ms"], name
        assert figures["plans"], f"{name} ran no SELECT to explain"
        assert all("Execution Time" in plan["plan"] for plan in figures["plans"]), name
    assert "overview" in result.stdout
