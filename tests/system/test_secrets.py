"""Secrets on the real services: stored gateway replies, database and broker URLs, and
log lines that a request cannot forge.

The gateway password must not be in ``attempts`` or ``recipients`` in any encoding
an echo carries; the database and broker passwords must not be in any output of
the CLI, a worker's log or a repr; control characters a request carries into a
log line come out escaped.
"""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from dispatcher.api import create_app
from dispatcher.api.server import ServerThread
from dispatcher.config import load_settings
from dispatcher.domain import redaction
from dispatcher.errors import ConfigurationError
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from support.echoes import WHOLE_ENCODINGS, every_decoding
from support.numbers import number
from support.pipeline import Pipeline
from support.reads import attempts_of, recipients_of
from support.settings import make_service

pytestmark = pytest.mark.services


def assert_never_decodes_to(secret: str, text: str | None, where: str) -> None:
    """Fail if ``text``, in any decoding the standard library knows, holds ``secret``."""
    for decoded in every_decoding(text or ""):
        assert secret not in decoded, f"{where} holds the secret: {text!r}"


# --- stored replies ----------------------------------------------------------------


def test_stored_replies_never_hold_the_password_in_any_encoding(
    pg_db: Database, simulator: GatewaySimulator, tmp_path: Path
) -> None:
    password = f"Pw/{secrets.token_hex(6)} &é+%"
    echoes = "\n".join(
        f"<p>{name}: {encode(password)}</p>" for name, encode in WHOLE_ENCODINGS.items()
    )
    stranger = "not-ours-" + secrets.token_hex(6)
    simulator.configure(
        password=password,
        http_error_rate=1.0,
        http_error_status=400,
        http_error_body=f"<html>{echoes}<p>username=x&amp;password={stranger}&to=1</p></html>",
    )
    service = make_service(pg_db, simulator, tmp_path, gateway_password=password, max_attempts=1)
    try:
        echoed = service.enqueue([number(1)], "an echo of everything").job_id
        service.dispatch_due()
    finally:
        service.close()

    [attempt] = attempts_of(pg_db, echoed)
    assert attempt.http_status == 400
    assert attempt.raw_reply is not None
    assert "password=***" in attempt.raw_reply
    for secret in (password, stranger):
        assert_never_decodes_to(secret, attempt.raw_reply, "the attempt's raw reply")
        assert_never_decodes_to(secret, attempt.error, "the attempt's error")
        for row in recipients_of(pg_db, echoed):
            assert_never_decodes_to(secret, row.error_code, "a recipient's error code")
            assert_never_decodes_to(secret, row.error_detail, "a recipient's error detail")


# --- database and broker URLs ------------------------------------------------------


def with_password(url: str, password: str, *, user: str | None = None) -> str:
    """``url`` with ``password`` (and ``user``, if given) in it."""
    parsed = make_url(url).set(password=password)
    if user is not None:
        parsed = parsed.set(username=user)
    return parsed.render_as_string(hide_password=False)


def test_database_and_broker_passwords_appear_in_no_output(pipeline: Pipeline) -> None:
    # Both servers here accept any password (trust auth, Redis's nopass default user),
    # so URLs that carry one still work.
    db_password = "dbpw-" + secrets.token_hex(8)
    broker_password = "mqpw-" + secrets.token_hex(8)
    env = pipeline.env.with_vars(
        DATABASE_URL=with_password(pipeline.db.url, db_password),
        BROKER_URL=with_password(
            pipeline.env.variables["DISPATCHER_BROKER_URL"], broker_password, user="default"
        ),
    )
    pipeline.env = env
    outputs: list[tuple[str, str]] = []

    def cli(*args: str, expect: int = 0, run_env: object = env) -> None:
        done = pipeline.cli("--log-level", "DEBUG", *args, env=run_env)  # type: ignore[arg-type]
        assert done.returncode == expect, (args, done.stdout, done.stderr)
        outputs.append((f"`dispatcher {' '.join(args)}`", done.stdout + done.stderr))

    cli("migrate")
    [worker] = pipeline.workers.start(env=env)
    job_id = pipeline.enqueue(number(1), "hello").job_id
    pipeline.wait_for(job_id)
    cli("state")
    cli("state", "--json")
    cli("status", job_id)
    # Unreachable, and malformed: the refusals do not quote the URL either.
    closed = env.with_vars(
        DATABASE_URL=with_password("postgresql+psycopg://u@127.0.0.1:1/db", db_password)
    )
    cli("state", expect=1, run_env=closed)
    cli(
        "state",
        expect=2,
        run_env=env.with_vars(DATABASE_URL=f"postgresql://u:{db_password}@127.0.0.1:port/db"),
    )
    cli(
        "send",
        "--to",
        number(2),
        "wakes nobody",
        run_env=env.with_vars(BROKER_URL=f"redis://default:{broker_password}@127.0.0.1:1/0"),
    )
    worker.stop()
    outputs.append(("the worker's log", worker.log()))
    settings = env.settings()
    database = Database(settings.effective_database_url)
    try:
        outputs += [
            ("repr(Settings)", repr(settings)),
            ("str(Settings)", str(settings)),
            ("repr(Database)", repr(database)),
            ("Database.display_url", database.display_url),
        ]
    finally:
        database.dispose()

    assert "database at revision" in outputs[0][1]
    assert "dispatch running" in outputs[1][1]
    for where, text in outputs:
        for secret in (db_password, broker_password):
            assert secret not in text, f"{where} shows a password: {text[-2000:]}"


def test_a_malformed_database_url_is_refused_without_quoting_it() -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings(database_url="postgresql://u:Secr3tPw@host:port/db", _env_file=None)
    assert "DISPATCHER_DATABASE_URL" in str(info.value)
    assert "Secr3tPw" not in str(info.value)


# --- log lines a request cannot forge ----------------------------------------------


@pytest.fixture
def server_log() -> Iterator[io.StringIO]:
    """What the root logger writes, through the redacting filter as `serve` installs it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    handler.addFilter(redaction.RedactingFilter())
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_a_path_cannot_forge_a_log_line_when_the_database_is_away(
    simulator: GatewaySimulator, tmp_path: Path, server_log: io.StringIO
) -> None:
    # A database that refuses connections: the API logs the request's (decoded) path.
    away = Database("postgresql+psycopg://u@127.0.0.1:1/db")
    service = make_service(away, simulator, tmp_path)
    try:
        with (
            ServerThread(create_app(service)) as server,
            httpx.Client(base_url=server.base_url, timeout=30.0) as client,
        ):
            answer = client.get(
                "/v1/jobs/x%0AERROR%20dispatcher.api:%20forged%1B%5B2J%E2%80%A8INFO%20forged",
                headers={"Authorization": "Bearer sdk_whatever"},
            )
    finally:
        service.close()
        away.dispose()
    assert answer.status_code == 503
    lines = server_log.getvalue().splitlines()
    unavailable = [line for line in lines if "database unavailable" in line]
    assert unavailable, lines
    assert not any(
        line.startswith(("ERROR dispatcher.api: forged", "INFO forged")) for line in lines
    )
    assert all(line.isprintable() for line in lines), lines
    assert "forged\\x1b[2J\\u2028INFO forged" in unavailable[0]
