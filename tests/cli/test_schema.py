"""A missing or old schema (issue 16 item 8, issue 18 item 3): the embedded SQLite
database is brought up to date by what writes to it (`send()`, `dispatcher send`,
`dispatcher worker`); a server database never is, and every refusal is one line
naming the database it looked at (its password masked) and `dispatcher migrate`.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from dispatcher.config import ENV_PREFIX
from dispatcher.persistence import migrate
from dispatcher.persistence.db import Database
from support.services import scratch_pg_database
from support.settings import DispatcherEnv
from support.workers import run_cli


@pytest.fixture
def env(tmp_path: Path) -> DispatcherEnv:
    return DispatcherEnv(
        {
            ENV_PREFIX + "DATA_DIR": str(tmp_path / "data"),
            ENV_PREFIX + "SETTINGS_FILE": os.devnull,
        }
    )


def cli(env: DispatcherEnv, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(env, cwd, *args)


def one_error_line(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert done.returncode != 0, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def revision_of(url: str) -> str | None:
    database = Database(url)
    try:
        return migrate.current_revision(database)
    finally:
        database.dispose()


def test_send_on_the_embedded_default_brings_its_schema_up_to_date(
    env: DispatcherEnv, tmp_path: Path
) -> None:
    done = cli(env, tmp_path, "send", "--to", "07700900123", "hi")
    assert done.returncode == 0, done.stderr
    url = env.settings().effective_database_url
    assert revision_of(url) == migrate.head_revision(Database(url))
    # Where the settings say, nowhere else: the working directory holds only the data dir.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert (tmp_path / "data" / "dispatcher.sqlite3").is_file()


def test_send_from_python_on_the_embedded_default_needs_no_migrate_first(
    env: DispatcherEnv, tmp_path: Path
) -> None:
    script = "from dispatcher import send; print(send(['07700900123'], 'hi'))"
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=os.environ | env.variables,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip()) == 26  # a job id


def test_a_schema_from_a_later_version_is_left_alone(env: DispatcherEnv, tmp_path: Path) -> None:
    url = env.settings().effective_database_url
    Path(env.variables[ENV_PREFIX + "DATA_DIR"]).mkdir(parents=True)
    database = Database(url)
    try:
        migrate.upgrade(database)
        with database.engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        database.dispose()
    line = one_error_line(cli(env, tmp_path, "send", "--to", "07700900123", "hi"))
    for needle in ("schema 9999", url, "`dispatcher migrate`"):
        assert needle in line
    assert revision_of(url) == "9999"


def test_a_table_missing_under_a_current_revision_names_the_database(
    env: DispatcherEnv, tmp_path: Path
) -> None:
    # The revision says current but the tables are not there (a file replaced, a
    # restore gone wrong): the driver's "no such table" becomes the same one line.
    url = env.settings().effective_database_url
    Path(env.variables[ENV_PREFIX + "DATA_DIR"]).mkdir(parents=True)
    database = Database(url)
    try:
        head = migrate.head_revision(database)
        with database.engine.begin() as connection:
            connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
            connection.execute(text("INSERT INTO alembic_version VALUES (:v)"), {"v": head})
    finally:
        database.dispose()
    one_error_line(
        cli(env, tmp_path, "status", "01JABCDEFGHJKMNPQRSTVWXYZ0"),
        url,
        "no dispatcher schema",
        "`dispatcher migrate`",
    )


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    with scratch_pg_database("dispatcher_schema") as url:
        yield url


@pytest.mark.services
def test_a_server_database_is_never_migrated_by_send(
    env: DispatcherEnv, tmp_path: Path, empty_pg_url: str
) -> None:
    # Trust authentication ignores the password; the message must still mask it.
    parsed = make_url(empty_pg_url)
    with_password = parsed.set(
        username=parsed.username or getpass.getuser(), password="s3cret-pw"
    ).render_as_string(hide_password=False)
    server = env.with_vars(**{"DATABASE_URL": with_password})
    for args in (["send", "--to", "07700900123", "hi"], ["jobs"]):
        line = one_error_line(cli(server, tmp_path, *args), "no dispatcher schema")
        assert "`dispatcher migrate`" in line
        assert "s3cret-pw" not in line
        assert empty_pg_url.rsplit("/", 1)[1] in line  # the database's name
    assert revision_of(empty_pg_url) is None


def test_producers_started_together_on_a_fresh_data_dir_all_send(
    env: DispatcherEnv, tmp_path: Path
) -> None:
    # Each brings the schema up to date before its first send; one upgrades, the
    # others wait for it and find it done, instead of creating the same tables again.
    script = "from dispatcher import send; print(send(['07700900123'], 'hi'))"
    producers = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env=os.environ | env.variables,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=120) for p in producers]
    for producer, (out, err) in zip(producers, results, strict=True):
        assert producer.returncode == 0, err
        assert len(out.strip()) == 26
