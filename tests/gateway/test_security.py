"""The gateway password stays secret, and the gateway is reached over verified TLS.

docs/design.md section 1 and README "Configuration": credentials travel only in a POST body
over HTTPS, a plain ``http://`` gateway is refused unless explicitly allowed, TLS
verification is never turned off, and the password never appears in logs, reprs,
exceptions, attempt rows or URLs.

Every test here uses its own random password, built so that its plain, ``quote``
and ``quote_plus`` forms all differ, around a random hex core: searching for the
core finds the password in any encoding, and even a part of it.
"""

from __future__ import annotations

import html
import json
import os
import secrets
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import requests
from sqlalchemy.engine import make_url

from dispatcher.config import ENV_PREFIX, load_settings
from dispatcher.errors import ConfigurationError, GatewayError
from dispatcher.gateway.client import GatewayClient, Message
from dispatcher.gateway.config import GatewayConfig
from dispatcher.gateway.protocol import BALANCE_PATH, Outcome
from dispatcher.gateway.simulator import GatewaySimulator
from support.numbers import number
from support.pipeline import Pipeline
from support.polling import wait_until
from support.reads import attempts_of, recipients_of
from support.settings import DispatcherEnv
from support.workers import WorkerProcess, run_cli

SIM_USERNAME = "sim-user"


@dataclass(frozen=True)
class Secret:
    """A distinctive gateway password and every form it could leak in."""

    core: str
    password: str

    @classmethod
    def make(cls) -> Secret:
        core = secrets.token_hex(12)
        # A space, '+', '/', '&', '=', '%' and a non-ASCII letter: every URL-encoding
        # of it differs from the plain form, and each form still contains the core.
        return cls(core, f"Pw {core}+/&=%é")

    def forms(self) -> dict[str, str]:
        """The forms searched for, by name (the core catches any other encoding)."""
        return {
            "plain": self.password,
            "quote": quote(self.password, safe=""),
            "quote_plus": quote_plus(self.password, safe=""),
            "core": self.core,
        }

    def assert_absent(self, text: str, where: str) -> None:
        """Fail naming ``where`` and the form found, with a little context."""
        for name, form in self.forms().items():
            at = text.find(form)
            assert at < 0, (
                f"the gateway password ({name} form) appears in {where}: "
                f"...{text[max(at - 80, 0) : at + len(form) + 40]!r}..."
            )


@pytest.fixture
def secret() -> Secret:
    """A fresh distinctive password for this test."""
    return Secret.make()


def exception_texts(exc: BaseException) -> str:
    """str, repr and the full formatted traceback (with its chain) of an exception."""
    return "\n".join([str(exc), repr(exc), "".join(traceback.format_exception(exc))])


# --- plain HTTP is refused unless allowed ------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DISPATCHER_* variable and no settings file from the machine or the repo."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.setenv(ENV_PREFIX + "SETTINGS_FILE", os.devnull)
    monkeypatch.chdir(tmp_path)


HTTP_URL = "http://127.0.0.1:9/smsgateway"


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("variable", ["GATEWAY_URL", "GATEWAY_BACKUP_URL"])
@pytest.mark.parametrize("allow", [None, "false", "0", "no", "off"])
def test_plain_http_gateway_is_refused_unless_allowed(
    monkeypatch: pytest.MonkeyPatch, secret: Secret, variable: str, allow: str | None
) -> None:
    monkeypatch.setenv(ENV_PREFIX + variable, HTTP_URL)
    monkeypatch.setenv(ENV_PREFIX + "GATEWAY_USERNAME", "someone")
    monkeypatch.setenv(ENV_PREFIX + "GATEWAY_PASSWORD", secret.password)
    if allow is not None:
        monkeypatch.setenv(ENV_PREFIX + "GATEWAY_ALLOW_HTTP", allow)

    with pytest.raises(ConfigurationError) as info:
        load_settings()

    message = str(info.value)
    assert ENV_PREFIX + variable in message
    assert "http://" in message
    assert ENV_PREFIX + "GATEWAY_ALLOW_HTTP" in message
    secret.assert_absent(exception_texts(info.value), "the refusal")


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("allow", ["true", "1", "yes", "on"])
def test_plain_http_gateway_is_accepted_when_allowed(
    monkeypatch: pytest.MonkeyPatch, allow: str
) -> None:
    monkeypatch.setenv(ENV_PREFIX + "GATEWAY_URL", HTTP_URL)
    monkeypatch.setenv(ENV_PREFIX + "GATEWAY_BACKUP_URL", HTTP_URL + "2")
    monkeypatch.setenv(ENV_PREFIX + "GATEWAY_ALLOW_HTTP", allow)

    settings = load_settings()

    assert (settings.gateway_url, settings.gateway_backup_url) == (HTTP_URL, HTTP_URL + "2")


@pytest.mark.parametrize(
    "variables",
    [
        pytest.param({"GATEWAY_URL": HTTP_URL}, id="primary"),
        pytest.param({"GATEWAY_URL": HTTP_URL, "GATEWAY_ALLOW_HTTP": "false"}, id="primary-false"),
        pytest.param({"GATEWAY_BACKUP_URL": HTTP_URL}, id="backup"),
    ],
)
def test_worker_command_refuses_a_plain_http_gateway_with_exit_2(
    tmp_path: Path, secret: Secret, variables: dict[str, str]
) -> None:
    env = DispatcherEnv(
        {
            ENV_PREFIX + "DATA_DIR": str(tmp_path / "data"),
            ENV_PREFIX + "SETTINGS_FILE": os.devnull,
            ENV_PREFIX + "GATEWAY_USERNAME": "someone",
            ENV_PREFIX + "GATEWAY_PASSWORD": secret.password,
        }
    ).with_vars(**variables)

    done = run_cli(env, tmp_path, "--log-level", "DEBUG", "worker")

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ")
    assert "http://" in line
    assert ENV_PREFIX + "GATEWAY_ALLOW_HTTP" in line
    assert done.stdout == ""
    secret.assert_absent(done.stderr, "the worker's refusal")


# --- TLS verification stays on ------------------------------------------------------


class RecordingSession(requests.Session):
    """A requests session that records the ``verify`` each request is sent with."""

    def __init__(self) -> None:
        super().__init__()
        self.verify_seen: list[object] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.verify_seen.append(kwargs.get("verify"))
        return super().send(request, **kwargs)


@pytest.mark.parametrize("ca_bundle", [None, "bundle"], ids=["system-cas", "ca-bundle"])
def test_client_always_verifies_tls_even_on_a_session_that_does_not(
    simulator: GatewaySimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ca_bundle: str | None,
) -> None:
    # Everything that could turn verification off from outside: the session given to
    # the client, and the environment requests would otherwise read.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "")
    monkeypatch.setenv("CURL_CA_BUNDLE", "")
    bundle = tmp_path / "cas.pem"
    bundle.write_text("not used over http\n")
    session = RecordingSession()
    session.verify = False
    config = GatewayConfig(
        url=simulator.base_url,
        backup_url=None,
        username=simulator.config().username,
        password=simulator.config().password,
        ca_bundle=str(bundle) if ca_bundle else None,
    )
    with GatewayClient(config, session=session) as client:
        submission = client.submit([number(1)], Message(text="TLS"))
        balance = client.balance()

    assert [o.outcome for o in submission.outcomes] == [Outcome.ACCEPTED]
    assert balance >= 0
    expected: object = str(bundle) if ca_bundle else True
    assert session.verify_seen == [expected, expected]


# --- exception texts ---------------------------------------------------------------


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    "variables",
    [
        pytest.param({"GATEWAY_URL": HTTP_URL}, id="plain-http"),
        pytest.param(
            {"GATEWAY_URL": "https://someone:{core}@gw.example.com/smsgateway"},
            id="password-in-url",
        ),
        pytest.param(
            {"GATEWAY_URL": "https://someone:{password}@gw.example.com/smsgateway"},
            id="password-with-slash-in-url",
        ),
        pytest.param(
            {"GATEWAY_URL": "https://gw.example.com/smsgateway?password={password}"},
            id="password-in-query",
        ),
        pytest.param({"GATEWAY_CONNECT_TIMEOUT_S": "{password}"}, id="password-in-wrong-variable"),
        pytest.param({"SUBMITTING_TIMEOUT_S": "1"}, id="inconsistent-timeouts"),
    ],
)
def test_configuration_errors_never_show_the_password(
    monkeypatch: pytest.MonkeyPatch, secret: Secret, variables: dict[str, str]
) -> None:
    monkeypatch.setenv(ENV_PREFIX + "GATEWAY_USERNAME", "someone")
    monkeypatch.setenv(ENV_PREFIX + "GATEWAY_PASSWORD", secret.password)
    for name, value in variables.items():
        monkeypatch.setenv(
            ENV_PREFIX + name, value.format(password=secret.password, core=secret.core)
        )

    with pytest.raises(ConfigurationError) as info:
        load_settings()

    assert str(info.value).startswith(ENV_PREFIX)
    secret.assert_absent(exception_texts(info.value), "a ConfigurationError")


@pytest.mark.usefixtures("clean_env")
def test_settings_and_gateway_config_reprs_and_refusals_hide_the_password(
    monkeypatch: pytest.MonkeyPatch, secret: Secret
) -> None:
    monkeypatch.setenv(ENV_PREFIX + "GATEWAY_PASSWORD", secret.password)
    settings = load_settings()
    for text, where in [
        (repr(settings), "repr(Settings)"),
        (str(settings), "str(Settings)"),
        (settings.model_dump_json(), "Settings as JSON"),
    ]:
        secret.assert_absent(text, where)
    assert settings.secrets() == [secret.password]  # and yet it is there, to be used

    with pytest.raises(ConfigurationError) as info:
        settings.gateway_config()  # no username
    secret.assert_absent(exception_texts(info.value), "the missing-username refusal")

    config = load_settings(gateway_username="someone").gateway_config()
    assert config.password == secret.password
    secret.assert_absent(repr(config), "repr(GatewayConfig)")
    secret.assert_absent(str(config), "str(GatewayConfig)")


def test_gateway_errors_and_their_chains_never_show_the_password(
    simulator: GatewaySimulator, secret: Secret
) -> None:
    # A closed port (connect failure), and a gateway refusing the credentials.
    closed = GatewayConfig(
        url="http://127.0.0.1:9/smsgateway",
        backup_url=None,
        username=SIM_USERNAME,
        password=secret.password,
        connect_timeout_s=1,
    )
    refusing = GatewayConfig(
        url=simulator.base_url, backup_url=None, username=SIM_USERNAME, password=secret.password
    )
    for config in (closed, refusing):
        with GatewayClient(config) as client:
            secret.assert_absent(repr(client), "repr(GatewayClient)")
            with pytest.raises(GatewayError) as info:
                client.balance()
            secret.assert_absent(exception_texts(info.value), f"{type(info.value).__name__}")
            submission = client.submit([number(1)], Message(text="hi"))
            secret.assert_absent(repr(submission), "repr(Submission)")
            assert submission.outcomes[0].outcome in (Outcome.TRANSIENT, Outcome.LOGIN_INVALID)


def test_an_html_escaped_echo_of_the_password_is_masked_too(
    simulator: GatewaySimulator, secret: Secret
) -> None:
    # An error page that echoes the form (ASP.NET's "potentially dangerous
    # Request.Form value" page does) HTML-escapes it: '&' becomes '&amp;'.
    escaped = html.escape(secret.password)
    assert escaped != secret.password
    simulator.configure(
        password=secret.password,
        http_error_rate=1.0,
        http_error_status=500,
        http_error_body=f"<html><body>password={escaped}</body></html>",
    )
    config = GatewayConfig(
        url=simulator.base_url, backup_url=None, username=SIM_USERNAME, password=secret.password
    )
    with GatewayClient(config) as client:
        submission = client.submit([number(1)], Message(text="hi"))

    assert submission.http_status == 500
    assert submission.raw_reply is not None
    secret.assert_absent(submission.raw_reply, "the stored raw reply")


# --- end to end: logs, CLI output and the database ---------------------------------


def start_debug_worker(pipeline: Pipeline, env: DispatcherEnv) -> WorkerProcess:
    """A real worker logging everything: ``dispatcher --log-level DEBUG worker --loglevel DEBUG``.

    ``WorkerFactory.start`` fixes ``--loglevel INFO`` and no global ``--log-level``,
    so this starts the process itself and hands it to the factory, which stops it.
    """
    factory = pipeline.workers
    name = f"w{len(factory.workers) + 1}"
    log_path = factory.log_dir / f"worker-{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dispatcher",
                "--log-level",
                "DEBUG",
                "worker",
                "--loglevel",
                "DEBUG",
                "-c",
                "4",
                "-n",
                f"{name}-{os.getpid()}@%h",
            ],
            env=env.process_env(),
            cwd=factory.log_dir,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    worker = WorkerProcess(name, process, log_path)
    factory.workers.append(worker)
    wait_until(worker.is_ready, 60, interval_s=0.1, message=f"worker {name} to be ready")
    return worker


def pg_dump(database_url: str) -> str:
    """The whole test database (schema and data) as SQL text."""
    url = make_url(database_url)
    done = subprocess.run(
        [
            "pg_dump",
            "-h",
            url.host or "127.0.0.1",
            "-p",
            str(url.port or 5432),
            "-U",
            url.username or "postgres",
            "--no-owner",
            url.database or "",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"pg_dump failed: {done.stderr}"
    return done.stdout


@pytest.mark.services
def test_the_password_appears_in_no_log_output_or_database_row(
    pipeline: Pipeline, secret: Secret
) -> None:
    sim = pipeline.sim
    sim.configure(password=secret.password)
    env = pipeline.env.with_vars(
        GATEWAY_PASSWORD=secret.password,
        CREDIT_CHECK_INTERVAL_S="0.5",
        CREDIT_RESUME_THRESHOLD="10",
    )
    pipeline.env = env  # before the producer is built from it
    control = "control-" + secrets.token_hex(8)
    worker = start_debug_worker(pipeline, env)
    jobs: dict[str, str] = {}

    def run(name: str, numbers: list[str]) -> str:
        job_id = pipeline.enqueue(numbers, f"{name} {control}").job_id
        jobs[name] = job_id
        return job_id

    # Success, and a transient error retried to success.
    sim.configure(number_rules={number(2): "GATEWAY_ERROR*1"})
    pipeline.wait_for(run("success-and-retry", [number(1), number(2)]))
    # An HTTP 500 page echoing the password in every form: ambiguous, kept masked.
    sim.configure(
        number_rules={},
        http_error_rate=1.0,
        http_error_status=500,
        http_error_body=(
            f"<html><body><h1>Server Error</h1><p>password={secret.password}</p>"
            f"<p>{quote_plus(secret.password)}</p><p>{quote(secret.password, safe='')}</p>"
            "</body></html>"
        ),
    )
    pipeline.wait_for(run("http-500-echo", [number(3)]))
    # A garbage reply: ambiguous.
    sim.configure(http_error_rate=0.0, garbage_rate=1.0)
    pipeline.wait_for(run("garbage", [number(4)]))
    # No credit: dispatch pauses, the sweeper checks the balance (password in a POST),
    # finds credit and resumes.
    sim.configure(garbage_rate=0.0, credit=0)
    waits = run("credit", [number(5)])
    wait_until(
        lambda: sim.stats()["requests_by_path"].get(BALANCE_PATH, 0) > 0,
        20,
        message="a balance check while paused for credit",
    )
    sim.configure(credit=1000)
    pipeline.wait_for(waits, timeout_s=30)
    # The gateway refuses the credentials (its password differs): the dispatcher's
    # own password is still the secret one.
    sim.configure(password="other-" + secrets.token_hex(8))
    pipeline.wait_for(run("login-invalid", [number(6)]))

    statuses = {
        name: [(r.status, r.error_code) for r in recipients_of(pipeline.db, job_id)]
        for name, job_id in jobs.items()
    }
    assert statuses == {
        "success-and-retry": [("sent", None), ("sent", None)],
        "http-500-echo": [("unknown", "HTTP_500")],
        "garbage": [("unknown", "UNREADABLE_REPLY")],
        "credit": [("sent", None)],
        "login-invalid": [("failed", "LOGIN_INVALID")],
    }
    [echo_attempt] = attempts_of(pipeline.db, jobs["http-500-echo"])
    assert echo_attempt.raw_reply is not None
    assert "password=***" in echo_attempt.raw_reply  # the echo was stored, masked

    # The CLI, logging at DEBUG too.
    outputs: list[tuple[str, str]] = []
    for args in [
        *[("status", job_id, "--json") for job_id in jobs.values()],
        ("jobs", "--json"),
        ("state", "--json"),
        ("status", jobs["login-invalid"]),
        ("jobs",),
        ("state",),
    ]:
        done = pipeline.cli("--log-level", "DEBUG", *args, env=env)
        assert done.returncode == 0, (args, done.stderr)
        outputs.append((f"`dispatcher {' '.join(args)}` stdout", done.stdout))
        outputs.append((f"`dispatcher {' '.join(args)}` stderr", done.stderr))
    listed = dict(outputs)["`dispatcher jobs --json` stdout"]
    assert {row["id"] for row in json.loads(listed)} == set(jobs.values())
    state = json.loads(pipeline.cli("state", "--json", env=env).stdout)
    assert (state["paused"], state["pause_reason"]) == (True, "login_invalid")

    # The worker's log, after a warm shutdown so everything is flushed.
    worker.stop()
    log_text = worker.log()
    assert " ready." in log_text
    assert "DEBUG" in log_text  # it did log at DEBUG
    outputs.append((f"the worker's DEBUG log ({worker.log_path})", log_text))

    dump = pg_dump(pipeline.db.url)
    assert control in dump, "the dump does not hold the jobs: the search would prove nothing"
    assert "password=***" in dump
    outputs.append(("pg_dump of the test database", dump))

    # The search itself works: the password is in the worker's environment.
    assert secret.core in env.variables[ENV_PREFIX + "GATEWAY_PASSWORD"]
    for where, text in outputs:
        secret.assert_absent(text, where)
