"""The ``dispatcher`` command as a user runs it: child processes on the embedded defaults.

Every problem a user can fix is one ``error:`` line on stderr and a non-zero exit
(2 for bad input or configuration, 1 for a failed operation), never a traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from dispatcher.config import ENV_PREFIX
from dispatcher.persistence import migrate
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import OperatorAction
from support.settings import DispatcherEnv
from support.workers import run_cli

JOB_KEYS = {"id", "status", "recipients"}
RECIPIENT_KEYS = {"number", "status", "gateway_message_id", "error_code", "attempts"}

# A scheduled time a little ahead (send_at is at most 366 days ahead), fixed
# enough to assert on.
NEXT_YEAR = dt.date.today().year + 1


@pytest.fixture
def env(tmp_path: Path) -> DispatcherEnv:
    """Embedded defaults in a data dir of this test; no gateway settings."""
    return DispatcherEnv(
        {
            ENV_PREFIX + "DATA_DIR": str(tmp_path / "data"),
            ENV_PREFIX + "SETTINGS_FILE": os.devnull,
        }
    )


@pytest.fixture
def migrated_env(env: DispatcherEnv) -> DispatcherEnv:
    """``env`` with its SQLite database migrated."""
    database = Database(env.settings().effective_database_url)
    try:
        migrate.upgrade(database)
    finally:
        database.dispose()
    return env


def cli(env: DispatcherEnv, *args: str) -> subprocess.CompletedProcess[str]:
    data_dir = Path(env.variables[ENV_PREFIX + "DATA_DIR"])
    data_dir.mkdir(parents=True, exist_ok=True)
    return run_cli(env, data_dir.parent, *args)


def assert_one_error_line(
    done: subprocess.CompletedProcess[str], code: int | None, *needles: str
) -> None:
    """One ``error:`` line on stderr, nothing on stdout, and exit ``code`` (any but 0 if None)."""
    if code is None:
        assert done.returncode != 0, (done.stdout, done.stderr)
    else:
        assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0]
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["send", "--to", "123", "hello"], 2, "no valid recipient"),
        (["send", "--to", "07700900123", ""], 2, "text is empty"),
        (["send", "--to", "07700900123", "--maxconcat", "0", "hi"], 2, "maxconcat"),
        (["status", "NOPE"], 1, "no job 'NOPE'"),
    ],
    ids=["no-valid-recipient", "empty-text", "maxconcat-0", "no-such-job"],
)
def test_errors_are_one_clear_line(
    migrated_env: DispatcherEnv, args: list[str], code: int, needle: str
) -> None:
    assert_one_error_line(cli(migrated_env, *args), code, needle)


def test_refused_send_writes_nothing(migrated_env: DispatcherEnv) -> None:
    assert_one_error_line(cli(migrated_env, "send", "--to", "123", "hello"), 2)
    listed = cli(migrated_env, "jobs", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


def test_worker_without_gateway_credentials_exits_2(migrated_env: DispatcherEnv) -> None:
    done = cli(migrated_env, "worker")
    assert_one_error_line(done, 2, "DISPATCHER_GATEWAY_USERNAME", "DISPATCHER_GATEWAY_PASSWORD")


def test_worker_refuses_a_plain_http_gateway_without_the_allow_flag(
    migrated_env: DispatcherEnv,
) -> None:
    password = "secret-" + os.urandom(4).hex()
    env = migrated_env.with_vars(
        GATEWAY_URL="http://127.0.0.1:9/smsgateway",
        GATEWAY_USERNAME="someone",
        GATEWAY_PASSWORD=password,
    )
    done = cli(env, "worker")
    assert_one_error_line(done, 2, "DISPATCHER_GATEWAY_URL", "http://")
    assert password not in done.stderr


def test_migrate_send_jobs_status(env: DispatcherEnv) -> None:
    migrated = cli(env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "database at revision" in migrated.stdout

    sent = cli(env, "send", "--json", "--to", "07700 900123,12345", "--to", "+447700900456", "Hi")
    assert sent.returncode == 0, sent.stderr
    assert "Traceback" not in sent.stderr
    job = json.loads(sent.stdout)
    assert isinstance(job, dict)
    job_id = job["id"]
    assert isinstance(job_id, str)
    assert len(job_id) == 26
    assert job["accepted"] == 2
    assert [r["number"] for r in job["refused"]] == ["12345"]

    listed = cli(env, "jobs", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [row["id"] for row in rows] == [job_id]
    assert rows[0]["status"] == "in_progress"  # no worker runs here
    assert rows[0]["counts"] == {"queued": 2, "failed": 1}
    assert rows[0]["recipients"] == 3

    shown = cli(env, "status", job_id, "--json")
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert set(view) >= JOB_KEYS
    assert (view["id"], view["status"]) == (job_id, "in_progress")
    recipients = view["recipients"]
    assert all(set(r) >= RECIPIENT_KEYS for r in recipients)
    assert [
        (r["number"], r["status"], r["gateway_message_id"], r["error_code"], r["attempts"])
        for r in recipients
    ] == [
        ("447700900123", "queued", None, None, 0),
        ("447700900456", "queued", None, None, 0),
        ("12345", "failed", None, "INVALID_NUMBER", 0),
    ]

    text = cli(env, "status", job_id)
    assert text.returncode == 0, text.stderr
    assert job_id in text.stdout
    assert "447700900123" in text.stdout
    assert "  number           status      tries  gateway ID, or error" in text.stdout

    # A long job is paged: the first N, then how many more and how to see them.
    paged = cli(env, "status", job_id, "--limit", "1")
    lines = paged.stdout.splitlines()
    assert "447700900123" in paged.stdout
    assert "447700900456" not in paged.stdout
    assert lines[-1] == "  ... and 2 more: --limit 0 lists all, --json gives every field"


def test_commands_before_migrate_say_so_in_one_line(env: DispatcherEnv) -> None:
    done = cli(env, "status", "NOPE")
    # Naming the database looked at: an operator in the wrong directory sees it.
    database = env.settings().effective_database_url
    assert_one_error_line(done, 2, "`dispatcher migrate`", database, "no dispatcher schema")


def test_send_with_schedule_priority_validity_and_reference(migrated_env: DispatcherEnv) -> None:
    done = cli(
        migrated_env,
        "send",
        "--to",
        "07700900123,07700900456",
        "--at",
        f"{NEXT_YEAR}-01-01T10:00:00+02:00",
        "--priority",
        "high",
        "--valid-for",
        "300",
        "--reference",
        "order-5",
        "--maxconcat",
        "2",
        "--json",
        "x" * 200,
    )
    assert done.returncode == 0, done.stderr
    sent = json.loads(done.stdout)
    assert sent["send_at"] == f"{NEXT_YEAR}-01-01T08:00:00+00:00"
    assert sent["expires_at"] == f"{NEXT_YEAR}-01-01T08:05:00+00:00"
    assert (sent["priority"], sent["parts"], sent["credits"]) == ("high", 2, 4)

    status = cli(migrated_env, "status", sent["id"], "--json")
    view = json.loads(status.stdout)
    assert (view["priority"], view["credits"], view["reference"]) == ("high", 4, "order-5")
    text = cli(migrated_env, "status", sent["id"]).stdout
    assert "credits 4" in text
    assert "priority high" in text
    assert f"send at {NEXT_YEAR}-01-01T08:00:00+00:00" in text

    cli(migrated_env, "send", "--to", "07700900123", "other")
    listed = cli(migrated_env, "jobs", "--reference", "order-5", "--json")
    assert [row["id"] for row in json.loads(listed.stdout)] == [sent["id"]]


@pytest.mark.parametrize(
    ("at", "needle"),
    [("2030-01-01T10:00:00", "timezone-aware"), ("next tuesday", "ISO 8601")],
    ids=["naive", "unreadable"],
)
def test_send_at_must_be_an_iso_time_with_an_offset(
    migrated_env: DispatcherEnv, at: str, needle: str
) -> None:
    done = cli(migrated_env, "send", "--to", "07700900123", "--at", at, "hi")
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr
    assert "Traceback" not in done.stderr


def test_keys_with_allowed_senders(migrated_env: DispatcherEnv) -> None:
    created = cli(migrated_env, "keys", "create", "brand", "--senders", "Acme, Shop", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["allowed_senders"] == ["Acme", "Shop"]
    cli(migrated_env, "keys", "create", "open")
    listing = cli(migrated_env, "keys", "list").stdout
    lines = {line.split()[0]: line for line in listing.splitlines()}
    assert lines["brand"].endswith("senders Acme,Shop")
    assert lines["open"].endswith("senders default-only")
    bad = cli(migrated_env, "keys", "create", "bad", "--senders", "Far Too Long Sender")
    assert_one_error_line(bad, 2, "sender must be")


def test_keys_update_grants_revokes_and_rescopes(migrated_env: DispatcherEnv) -> None:
    """Each change is one audited ``keys.update`` row with the key's grants before and after."""
    cli(migrated_env, "keys", "create", "shop", "--scope", "send")
    granted = cli(
        migrated_env,
        "keys",
        "update",
        "shop",
        "--grant-sender",
        "MyBank,Shop",
        "--scope",
        "send,read",
    )
    assert granted.returncode == 0, granted.stderr
    assert granted.stdout.strip() == "key shop: scopes read,send; senders MyBank, Shop"
    revoked = cli(migrated_env, "keys", "update", "shop", "--revoke-sender", "MyBank", "--json")
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["allowed_senders"] == ["Shop"]
    database = Database(migrated_env.settings().effective_database_url)
    try:
        with database.transaction() as session:
            rows = session.execute(
                select(OperatorAction.action, OperatorAction.actor, OperatorAction.detail)
                .where(OperatorAction.action == "keys.update")
                .order_by(OperatorAction.id)
            ).all()
    finally:
        database.dispose()
    assert [action for action, _actor, _detail in rows] == ["keys.update"] * 2
    assert all(actor.startswith("cli:") for _action, actor, _detail in rows)
    assert [json.loads(detail or "") for _action, _actor, detail in rows] == [
        {
            "before": {"scopes": ["send"], "allowed_senders": []},
            "after": {"scopes": ["read", "send"], "allowed_senders": ["MyBank", "Shop"]},
        },
        {
            "before": {"scopes": ["read", "send"], "allowed_senders": ["MyBank", "Shop"]},
            "after": {"scopes": ["read", "send"], "allowed_senders": ["Shop"]},
        },
    ]


def test_keys_update_errors_are_one_line(migrated_env: DispatcherEnv) -> None:
    cli(migrated_env, "keys", "create", "shop")
    cli(migrated_env, "keys", "create", "gone")
    cli(migrated_env, "keys", "revoke", "gone")
    cases: list[tuple[list[str], int, str]] = [
        (["nobody", "--scope", "read"], 1, "no key named 'nobody'"),
        (["shop"], 2, "say what to change"),
        (["shop", "--scope", "admin"], 2, "unknown scope 'admin'"),
        (["shop", "--grant-sender", "Far Too Long Sender"], 2, "sender must be"),
        (["shop", "--revoke-sender", "MyBank"], 2, "was not granted sender 'MyBank'"),
        (["shop", "--grant-sender", "X", "--revoke-sender", "X"], 2, "both granted and revoked"),
        (["gone", "--scope", "read"], 2, "key 'gone' is revoked"),
    ]
    for args, code, needle in cases:
        assert_one_error_line(cli(migrated_env, "keys", "update", *args), code, needle)


def test_send_refuses_more_numbers_than_the_cap(migrated_env: DispatcherEnv) -> None:
    capped = migrated_env.with_vars(max_recipients_per_job="2")
    done = cli(capped, "send", "--to", "07700900123,07700900456,07700900789", "hi")
    assert_one_error_line(done, None, "DISPATCHER_MAX_RECIPIENTS_PER_JOB")
    listed = cli(capped, "jobs", "--json")
    assert json.loads(listed.stdout) == []
