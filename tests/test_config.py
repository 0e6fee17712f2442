"""Settings: docs/design.md section 4 defaults, overrides, the settings file, refusals, secrecy."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pydantic
import pytest

from dispatcher.config import (
    DEFAULT_GATEWAY_BACKUP_URL,
    DEFAULT_GATEWAY_URL,
    Settings,
    load_settings,
)
from dispatcher.errors import ConfigurationError
from dispatcher.gateway.config import GatewayConfig


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No DISPATCHER_* variable and no dispatcher.env from the machine or the repo."""
    for name in list(os.environ):
        if name.upper().startswith("DISPATCHER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def password() -> str:
    return "pw-" + secrets.token_urlsafe(16)


def test_spec_defaults(tmp_path: Path) -> None:
    s = load_settings()
    assert s.gateway_url == "https://www.intellisoftware.co.uk/smsgateway" == DEFAULT_GATEWAY_URL
    assert s.gateway_backup_url == "https://www.intellisoftware2.co.uk/smsgateway"
    assert s.gateway_backup_url == DEFAULT_GATEWAY_BACKUP_URL
    assert s.gateway_username is None
    assert s.gateway_password is None
    assert s.gateway_allow_http is False
    assert s.gateway_connect_timeout_s == 5
    assert s.gateway_read_timeout_s == 30
    assert s.max_attempts == 5
    assert s.retry_backoff_s == 10
    assert s.submitting_timeout_s == 120
    assert s.sweep_interval_s == 5
    assert s.secrets() == []


def test_default_database_is_a_sqlite_file_under_the_working_dir(tmp_path: Path) -> None:
    url = load_settings().effective_database_url
    assert url.startswith("sqlite:///")
    path = Path(url.removeprefix("sqlite:///"))
    assert path.is_absolute()
    assert path.is_relative_to(tmp_path.resolve())


def test_default_broker_needs_no_server(tmp_path: Path) -> None:
    s = load_settings()
    assert s.effective_broker_url.startswith("filesystem://")
    assert s.broker_folder.is_relative_to(tmp_path.resolve())


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    pw = password()
    for name, value in {
        "DISPATCHER_DATABASE_URL": "postgresql+psycopg://u@db/dispatcher",
        "DISPATCHER_BROKER_URL": "redis://redis:6379/0",
        "DISPATCHER_GATEWAY_URL": "https://gw.example.com/smsgateway/",
        "DISPATCHER_GATEWAY_BACKUP_URL": "https://gw2.example.com/smsgateway",
        "DISPATCHER_GATEWAY_USERNAME": "acme",
        "DISPATCHER_GATEWAY_PASSWORD": pw,
        "DISPATCHER_GATEWAY_CONNECT_TIMEOUT_S": "2",
        "DISPATCHER_GATEWAY_READ_TIMEOUT_S": "10",
        "DISPATCHER_MAX_ATTEMPTS": "7",
        "DISPATCHER_RETRY_BACKOFF_S": "3",
        "DISPATCHER_SUBMITTING_TIMEOUT_S": "60",
        "DISPATCHER_SWEEP_INTERVAL_S": "1.5",
    }.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert s.effective_database_url == "postgresql+psycopg://u@db/dispatcher"
    assert s.effective_broker_url == "redis://redis:6379/0"
    assert s.gateway_url == "https://gw.example.com/smsgateway"  # trailing slash dropped
    assert s.gateway_backup_url == "https://gw2.example.com/smsgateway"
    assert s.gateway_username == "acme"
    assert s.gateway_password is not None
    assert s.gateway_password.get_secret_value() == pw
    assert (s.gateway_connect_timeout_s, s.gateway_read_timeout_s) == (2, 10)
    assert (s.max_attempts, s.retry_backoff_s) == (7, 3)
    assert (s.submitting_timeout_s, s.sweep_interval_s) == (60, 1.5)
    assert s.secrets() == [pw]
    config = s.gateway_config()
    assert (config.url, config.backup_url) == (s.gateway_url, s.gateway_backup_url)
    assert (config.username, config.password) == ("acme", pw)
    assert (config.connect_timeout_s, config.read_timeout_s) == (2, 10)


def test_blank_backup_url_disables_failover(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_GATEWAY_BACKUP_URL", "")
    assert load_settings().gateway_backup_url is None


@pytest.mark.parametrize("variable", ["DISPATCHER_GATEWAY_URL", "DISPATCHER_GATEWAY_BACKUP_URL"])
def test_plain_http_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "http://gw.example.com/smsgateway")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert variable in str(info.value)
    assert "DISPATCHER_GATEWAY_ALLOW_HTTP" in str(info.value)


@pytest.mark.parametrize("flag", ["true", "1", "TRUE"])
def test_plain_http_allowed_with_allow_http(monkeypatch: pytest.MonkeyPatch, flag: str) -> None:
    monkeypatch.setenv("DISPATCHER_GATEWAY_URL", "http://127.0.0.1:8099/smsgateway")
    monkeypatch.setenv("DISPATCHER_GATEWAY_ALLOW_HTTP", flag)
    s = load_settings()
    assert s.gateway_allow_http is True
    assert s.gateway_url == "http://127.0.0.1:8099/smsgateway"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("https://acme:hunter2@gw.example.com/smsgateway", id="user-password"),
        pytest.param("https://acme@gw.example.com/smsgateway", id="user"),
        pytest.param("https://gw.example.com/smsgateway?username=a&password=b", id="query"),
    ],
)
def test_credentials_or_query_in_url_refused(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("DISPATCHER_GATEWAY_URL", url)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    message = str(info.value)
    assert "DISPATCHER_GATEWAY_URL" in message
    assert "credentials" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("ftp://acme:hunter2secret@gw.example.com/", id="other-scheme"),
        pytest.param("https://acme:hunter2secret@", id="no-host"),
    ],
)
def test_malformed_url_error_does_not_echo_credentials(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("DISPATCHER_GATEWAY_URL", url)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert "DISPATCHER_GATEWAY_URL" in str(info.value)
    assert "hunter2secret" not in str(info.value)


@pytest.mark.parametrize(
    "url", ["gw.example.com/smsgateway", "https://", "file:///etc/passwd"], ids=str
)
def test_non_http_url_refused(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("DISPATCHER_GATEWAY_URL", url)
    with pytest.raises(ConfigurationError, match="DISPATCHER_GATEWAY_URL"):
        load_settings()


def test_submitting_timeout_60_refused_with_default_timeouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISPATCHER_SUBMITTING_TIMEOUT_S", "60")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    message = str(info.value)
    assert "DISPATCHER_SUBMITTING_TIMEOUT_S" in message
    assert "80" in message  # 2 x (5 + 30) + 10


@pytest.mark.parametrize(
    ("connect_s", "read_s", "submitting_s", "ok"),
    [
        pytest.param("5", "30", "80", False, id="equal-to-floor"),
        pytest.param("5", "30", "81", True, id="just-above-floor"),
        pytest.param("10", "50", None, False, id="default-120-below-130"),
        pytest.param("10", "50", "131", True, id="raised-with-timeouts"),
        pytest.param("1", "4", "21", True, id="short-timeouts"),
    ],
)
def test_submitting_timeout_must_exceed_two_exchanges_plus_margin(
    monkeypatch: pytest.MonkeyPatch,
    connect_s: str,
    read_s: str,
    submitting_s: str | None,
    ok: bool,
) -> None:
    monkeypatch.setenv("DISPATCHER_GATEWAY_CONNECT_TIMEOUT_S", connect_s)
    monkeypatch.setenv("DISPATCHER_GATEWAY_READ_TIMEOUT_S", read_s)
    if submitting_s is not None:
        monkeypatch.setenv("DISPATCHER_SUBMITTING_TIMEOUT_S", submitting_s)
    if ok:
        assert load_settings().submitting_timeout_s == float(submitting_s or 120)
    else:
        with pytest.raises(ConfigurationError, match="DISPATCHER_SUBMITTING_TIMEOUT_S"):
            load_settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DISPATCHER_MAX_ATTEMPTS", "many"),
        ("DISPATCHER_MAX_ATTEMPTS", "0"),
        ("DISPATCHER_GATEWAY_READ_TIMEOUT_S", "-1"),
        ("DISPATCHER_SWEEP_INTERVAL_S", "0"),
        ("DISPATCHER_GATEWAY_ALLOW_HTTP", "perhaps"),
    ],
)
def test_errors_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable):
        load_settings()


def test_settings_file_adds_values_and_env_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    file_pw = password()
    settings_file = tmp_path / "elsewhere" / "prod.env"
    settings_file.parent.mkdir()
    settings_file.write_text(
        "DISPATCHER_GATEWAY_USERNAME=from-file\n"
        f"DISPATCHER_GATEWAY_PASSWORD={file_pw}\n"
        "DISPATCHER_MAX_ATTEMPTS=9\n"
        "DISPATCHER_SWEEP_INTERVAL_S=2\n"
    )
    monkeypatch.setenv("DISPATCHER_SETTINGS_FILE", str(settings_file))
    monkeypatch.setenv("DISPATCHER_MAX_ATTEMPTS", "3")
    s = load_settings()
    assert s.gateway_username == "from-file"
    assert s.gateway_password is not None
    assert s.gateway_password.get_secret_value() == file_pw
    assert s.sweep_interval_s == 2
    assert s.max_attempts == 3  # the environment wins over the file


def test_dispatcher_env_in_working_dir_is_read(tmp_path: Path) -> None:
    (tmp_path / "dispatcher.env").write_text("DISPATCHER_MAX_ATTEMPTS=8\n")
    assert load_settings().max_attempts == 8


def test_missing_settings_file_is_not_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DISPATCHER_SETTINGS_FILE", str(tmp_path / "absent.env"))
    assert load_settings().max_attempts == 5


def test_settings_file_values_are_validated(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings_file = tmp_path / "bad.env"
    settings_file.write_text("DISPATCHER_GATEWAY_URL=http://gw.example.com/smsgateway\n")
    monkeypatch.setenv("DISPATCHER_SETTINGS_FILE", str(settings_file))
    with pytest.raises(ConfigurationError, match="DISPATCHER_GATEWAY_URL"):
        load_settings()


def test_explicit_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_MAX_ATTEMPTS", "3")
    assert load_settings(max_attempts=4).max_attempts == 4


def test_password_never_in_repr_or_str(monkeypatch: pytest.MonkeyPatch) -> None:
    pw = password()
    monkeypatch.setenv("DISPATCHER_GATEWAY_USERNAME", "acme")
    monkeypatch.setenv("DISPATCHER_GATEWAY_PASSWORD", pw)
    s = load_settings()
    config = s.gateway_config()
    assert config.password == pw
    for text in (repr(s), str(s), repr(config), str(config), repr([config]), repr({"s": s})):
        assert pw not in text
    assert "acme" in repr(config)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DISPATCHER_SUBMITTING_TIMEOUT_S", "60"),
        ("DISPATCHER_GATEWAY_URL", "http://gw.example.com/smsgateway"),
        ("DISPATCHER_MAX_ATTEMPTS", "PASSWORD"),
        ("DISPATCHER_GATEWAY_CONNECT_TIMEOUT_S", "PASSWORD"),
    ],
)
def test_password_never_in_configuration_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    pw = password()
    monkeypatch.setenv("DISPATCHER_GATEWAY_USERNAME", "acme")
    monkeypatch.setenv("DISPATCHER_GATEWAY_PASSWORD", pw)
    # A password pasted into the wrong variable must not be echoed either.
    monkeypatch.setenv(variable, pw if value == "PASSWORD" else value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert variable in str(info.value)
    assert pw not in str(info.value)
    assert pw not in repr(info.value)


def test_gateway_config_repr_masks_password_when_built_directly() -> None:
    pw = password()
    config = GatewayConfig(url=DEFAULT_GATEWAY_URL, backup_url=None, username="u", password=pw)
    assert pw not in repr(config)
    assert "***" in repr(config)


@pytest.mark.parametrize(
    ("username", "password_value"),
    [
        pytest.param(None, None, id="neither"),
        pytest.param("acme", None, id="no-password"),
        pytest.param(None, "pw-long-enough", id="no-username"),
        pytest.param("   ", "pw-long-enough", id="blank-username"),
    ],
)
def test_gateway_config_without_credentials_raises(
    monkeypatch: pytest.MonkeyPatch, username: str | None, password_value: str | None
) -> None:
    if username is not None:
        monkeypatch.setenv("DISPATCHER_GATEWAY_USERNAME", username)
    if password_value is not None:
        monkeypatch.setenv("DISPATCHER_GATEWAY_PASSWORD", password_value)
    s = load_settings()
    with pytest.raises(ConfigurationError) as info:
        s.gateway_config()
    assert "DISPATCHER_GATEWAY_USERNAME" in str(info.value)
    assert "DISPATCHER_GATEWAY_PASSWORD" in str(info.value)
    if password_value is not None:
        assert password_value not in str(info.value)


def test_gateway_config_with_blank_password_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_GATEWAY_USERNAME", "acme")
    monkeypatch.setenv("DISPATCHER_GATEWAY_PASSWORD", "")
    with pytest.raises(ConfigurationError):
        load_settings().gateway_config()


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        s.max_attempts = 9  # type: ignore[misc]
    assert isinstance(s, Settings)


# --- the backup beside an overridden primary (issue 16, item 5) ----------------------


def test_an_overridden_primary_has_no_backup_unless_one_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DISPATCHER_GATEWAY_URL", "https://staging.example.com/smsgateway")
    assert load_settings().gateway_backup_url is None
    # The same through a settings file and through an explicit override.
    monkeypatch.delenv("DISPATCHER_GATEWAY_URL")
    (tmp_path / "dispatcher.env").write_text(
        "DISPATCHER_GATEWAY_URL=https://staging.example.com/smsgateway\n"
    )
    assert load_settings().gateway_backup_url is None
    assert load_settings(gateway_url="https://other.example.com").gateway_backup_url is None
    monkeypatch.setenv("DISPATCHER_GATEWAY_BACKUP_URL", "https://staging2.example.com/sms/")
    assert load_settings().gateway_backup_url == "https://staging2.example.com/sms"


def test_a_simulator_never_fails_over_to_the_real_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_GATEWAY_ALLOW_HTTP", "true")
    monkeypatch.setenv("DISPATCHER_GATEWAY_URL", "http://127.0.0.1:8099/smsgateway")
    monkeypatch.setenv("DISPATCHER_GATEWAY_USERNAME", "u")
    monkeypatch.setenv("DISPATCHER_GATEWAY_PASSWORD", password())
    settings = load_settings()
    assert settings.gateway_backup_url is None
    assert settings.gateway_config().backup_url is None

    for production in (
        DEFAULT_GATEWAY_BACKUP_URL,
        DEFAULT_GATEWAY_URL,
        "https://WWW.IntelliSoftware.co.uk./x",
    ):
        monkeypatch.setenv("DISPATCHER_GATEWAY_BACKUP_URL", production)
        with pytest.raises(ConfigurationError) as refused:
            load_settings()
        assert "DISPATCHER_GATEWAY_BACKUP_URL" in str(refused.value)
        assert "production gateway" in str(refused.value)

    # Another test gateway as the backup is the user's choice.
    monkeypatch.setenv("DISPATCHER_GATEWAY_BACKUP_URL", "http://127.0.0.1:8098/smsgateway")
    assert load_settings().gateway_backup_url == "http://127.0.0.1:8098/smsgateway"


def test_the_vendors_primary_named_explicitly_keeps_the_vendors_backup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISPATCHER_GATEWAY_URL", DEFAULT_GATEWAY_URL + "/")
    assert load_settings().gateway_backup_url == DEFAULT_GATEWAY_BACKUP_URL
