"""The core flow on the embedded defaults: no DATABASE_URL, no BROKER_URL, no server.

Only DISPATCHER_DATA_DIR is set: the database is a SQLite file in it and the broker
is kombu's filesystem transport in it. A real worker process does the sending.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from dispatcher.config import ENV_PREFIX
from dispatcher.domain.statuses import AttemptOutcome
from support.numbers import number
from support.pipeline import Pipeline
from support.reads import attempts_of, recipients_of, send_requests

DEMO_TIMEOUT_S = 180.0


def test_mixed_reply_job_completes_embedded(embedded_pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline = embedded_pipeline
    settings = pipeline.env.settings()
    assert settings.database_url is None
    assert settings.broker_url is None
    assert pipeline.db.url.startswith("sqlite:///")
    assert Path(pipeline.db.url.removeprefix("sqlite:///")).is_relative_to(tmp_path)
    pipeline.sim.configure(number_rules={number(3): "INVALID_NUMBER", number(4): "GATEWAY_ERROR*1"})
    [worker] = pipeline.start_workers()
    assert "filesystem://" in worker.log()

    result = pipeline.enqueue([number(1), number(2), number(3), number(4)], "Embedded")
    pipeline.wait_for(result.job_id, timeout_s=90)

    by_number = {r.number: r for r in recipients_of(pipeline.db, result.job_id)}
    assert {n: (r.status, r.attempts) for n, r in by_number.items()} == {
        number(1): ("sent", 1),
        number(2): ("sent", 1),
        number(3): ("failed", 1),
        number(4): ("sent", 2),
    }
    assert by_number[number(3)].error_code == "INVALID_NUMBER"
    for sent in (number(1), number(2), number(4)):
        message_id = by_number[sent].gateway_message_id
        assert isinstance(message_id, str)
        assert int(message_id) > 2**63 - 1
    attempts = attempts_of(pipeline.db, result.job_id)
    assert [(a.outcome, a.numbers) for a in attempts] == [
        (AttemptOutcome.PARTIAL, ",".join(number(i) for i in (1, 2, 3, 4))),
        (AttemptOutcome.ACCEPTED, number(4)),
    ]
    assert send_requests(pipeline.sim) == 2
    pipeline.check_invariants()


def test_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    env[ENV_PREFIX + "SETTINGS_FILE"] = os.devnull
    data_dir = tmp_path / "demo"

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dispatcher",
            "demo",
            "--recipients",
            "200",
            "--data-dir",
            str(data_dir),
            "--timeout-s",
            str(DEMO_TIMEOUT_S - 30),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )

    worker_log = data_dir / "worker.log"
    tail = worker_log.read_text(errors="replace")[-4000:] if worker_log.exists() else ""
    assert done.returncode == 0, (done.stdout, done.stderr, tail)
    assert "Traceback" not in done.stderr
    out = done.stdout
    for heading in ("recipients by status", "HTTP attempts", "gateway ledger", "throughput"):
        assert heading in out
    ledger = re.search(r"gateway ledger\s+(\d+) accepted, (\d+) accepted twice", out)
    sent = re.search(r"^\s+sent\s+(\d+)$", out, re.MULTILINE)
    assert ledger is not None, out
    assert sent is not None, out
    assert ledger.group(2) == "0"
    assert ledger.group(1) == sent.group(1)
    assert int(sent.group(1)) > 150  # of 200, a few refused or rejected on purpose
