"""Settings: every ``DISPATCHER_*`` variable, validated once, in one object.

This is the only module that reads the environment. Everything else receives a
``Settings`` (or the small config object it needs) as an argument, so tests and
embedded uses can build their own without touching ``os.environ``.

A settings file (``dispatcher.env`` in the working directory, or the file named
by ``DISPATCHER_SETTINGS_FILE``) may add values in ``KEY=value`` form; real
environment variables win over it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dispatcher.domain import proxies, redaction
from dispatcher.domain.lanes import LANE_NAMES
from dispatcher.domain.message import check_sender
from dispatcher.errors import ConfigurationError, InvalidSenderError
from dispatcher.gateway.config import (
    PRODUCTION_BACKUP_URL,
    PRODUCTION_URL,
    GatewayConfig,
    backup_for,
    check_url,
)
from dispatcher.persistence.db import check_database_url

ENV_PREFIX = "DISPATCHER_"
DEFAULT_SETTINGS_FILE = "dispatcher.env"
DEFAULT_GATEWAY_URL = PRODUCTION_URL
DEFAULT_GATEWAY_BACKUP_URL = PRODUCTION_BACKUP_URL
"""The backup in force only beside the default primary (``backup_for``)."""
DEFAULT_DATA_DIR = "dispatcher-data"

# Margin on top of two full HTTP exchanges (one per host when failing over) before the
# sweeper may conclude a `submitting` batch was abandoned by a dead worker.
SUBMITTING_TIMEOUT_MARGIN_S = 10.0


class Settings(BaseSettings):
    """Every DISPATCHER_* setting, with its default and its checks."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        frozen=True,
        case_sensitive=False,
    )

    data_dir: Path = Field(
        default=Path(DEFAULT_DATA_DIR),
        description="Where the embedded defaults keep their SQLite file and broker folder.",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: a SQLite file in data_dir."
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL; default: kombu's filesystem transport in data_dir.",
    )

    gateway_url: str = DEFAULT_GATEWAY_URL
    gateway_backup_url: str | None = DEFAULT_GATEWAY_BACKUP_URL
    gateway_username: str | None = None
    gateway_password: SecretStr | None = None
    gateway_allow_http: bool = False
    gateway_ca_bundle: Path | None = Field(
        default=None,
        description="PEM file of CAs to trust for the gateway instead of the system's "
        "(for a TLS-intercepting proxy or a private test gateway); verification stays on.",
    )
    gateway_connect_timeout_s: float = Field(default=5.0, gt=0)
    gateway_read_timeout_s: float = Field(default=30.0, gt=0)
    gateway_pool_idle_s: float = Field(
        default=2.0,
        gt=0,
        description="Pooled connections idle longer than this are closed before reuse.",
    )

    max_attempts: int = Field(default=5, ge=1, le=100)
    retry_backoff_s: float = Field(default=10.0, gt=0)
    retry_backoff_max_s: float = Field(default=3600.0, gt=0)
    submitting_timeout_s: float = Field(default=120.0, gt=0)
    sweep_interval_s: float = Field(default=5.0, gt=0)
    rollup_interval_s: float = Field(
        default=30.0,
        gt=0,
        description="How often a sweeper recomputes the recent minutes of the rollups "
        "(dashboard counts and /metrics); one rollup runs at a time across workers.",
    )
    stats_retention_days: int = Field(
        default=35, ge=2, le=3660, description="Per-minute rollup rows older than this go."
    )
    heartbeat_interval_s: float = Field(
        default=15.0,
        gt=0,
        description="How often each worker records its heartbeat and sends itself a "
        "heartbeat task through the broker; a worker that has not consumed one for three "
        "intervals counts as not consuming.",
    )

    breaker_threshold: int = Field(
        default=5,
        ge=1,
        description="Whole submissions failing transiently in a row that open the breaker.",
    )
    breaker_probe_s: float = Field(
        default=30.0, gt=0, description="Wait before the first probe once the breaker opens."
    )
    breaker_probe_max_s: float = Field(
        default=300.0, gt=0, description="Longest wait between probes (the wait doubles)."
    )
    credit_resume_threshold: float = Field(
        default=100.0,
        ge=0,
        description="A credit pause ends when a balance check finds more than this; set it "
        "above what one batch costs so dispatch does not pause and resume in a loop.",
    )
    credit_check_interval_s: float = Field(default=60.0, gt=0)
    max_retry_age_s: float = Field(
        default=86400.0,
        gt=0,
        description="A recipient still waiting to retry this long after its job was "
        "created fails instead (an outage longer than this is not worth a late SMS).",
    )
    gateway_max_in_flight: int = Field(
        default=0, ge=0, description="Most HTTP calls at once per worker process; 0: no cap."
    )
    gateway_max_per_second: float = Field(
        default=0.0, ge=0, description="Most HTTP calls per second per worker process; 0: no cap."
    )

    webhook_secret: SecretStr | None = Field(
        default=None,
        description="HMAC key that signs completion webhooks; needed to accept callback_url.",
    )
    webhook_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Deadline of one webhook try as a whole (connect, TLS, sending, the "
        "reply's status and headers); a receiver still talking then is cut off.",
    )
    webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    webhook_backoff_s: float = Field(default=10.0, gt=0)
    webhook_concurrency: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Most threads of a worker process delivering webhooks at once (never "
        "more than half its threads, at least one), so stalled receivers cannot take "
        "the threads dispatch needs.",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Development only: callback URLs may reach any address, this host, "
        "private networks and cloud metadata included.",
    )
    # NoDecode: the variable is a comma-separated list, not JSON.
    webhook_allowed_cidrs: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = Field(
        default=(),
        description="Networks callback URLs may reach although not public, comma-separated "
        "(e.g. 10.20.0.0/16 for an internal receiver, 127.0.0.0/8 for tests).",
    )

    retention_days: int | None = Field(
        default=None,
        ge=1,
        description="Days after which a finished job's text and numbers are purged (the "
        "counts, statuses, gateway IDs and times stay); unset: kept forever.",
    )
    retention_check_interval_s: float = Field(
        default=3600.0,
        gt=0,
        description="How often each sweeper runs the retention purge when retention is set.",
    )
    operator_password: SecretStr | None = Field(
        default=None,
        description="Password of the dashboard's `operator` login; unset: only API keys "
        "with the operate scope log in.",
    )
    session_secret: SecretStr | None = Field(
        default=None,
        min_length=32,
        description="Key that signs dashboard session cookies; unset: a random one per "
        "process (sessions then end at a restart and do not span processes).",
    )
    session_max_age_s: float = Field(
        default=8 * 3600.0, gt=0, description="How long a dashboard login lasts."
    )
    cookie_secure: bool | None = Field(
        default=None,
        description="Mark the dashboard's session cookie Secure: true behind a proxy that "
        "terminates TLS (the dispatcher then sees plain http); unset: Secure when the "
        "request is https.",
    )
    # NoDecode: the variable is a comma-separated list, not JSON.
    trusted_proxies: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = Field(
        default=(),
        description="Addresses or CIDRs of reverse proxies whose X-Forwarded-For is "
        "believed (comma-separated); the client's address is then the first one from "
        "the right that is not a trusted proxy. Unset: the header is ignored.",
    )

    default_region: str = Field(
        default="GB", description="Region assumed for numbers written without +country."
    )
    default_sender: str | None = Field(
        default=None,
        description="Sender used when a request names none (up to 11 letters, digits or "
        "spaces, or up to 15 digits), and one every API key may use besides its grants; "
        "unset: the gateway account's default.",
    )
    default_validity_s: float | None = Field(
        default=None,
        gt=0,
        description="Validity of a job that sets none: recipients still unsent this long "
        "after the job's send time end `expired`; unset: no expiry.",
    )
    # NoDecode: the variable is a comma-separated list, not JSON.
    worker_lanes: Annotated[tuple[str, ...], NoDecode] = Field(
        default=LANE_NAMES,
        description=f"Priority lanes a worker serves (comma-separated {', '.join(LANE_NAMES)}): "
        "it consumes their wake-up queues and claims only their batches.",
    )
    worker_concurrency: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Sender threads per worker process: gateway calls in flight at once "
        "(I/O-bound work); Celery's pool has as many for wake-ups, webhooks and sweeps.",
    )
    database_pool_size: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Database connections each process keeps (as many again may open "
        "under load); unset: worker_concurrency. A thread holds one only while it claims "
        "or records, never during its HTTP call, so many threads share few connections.",
    )
    dispatch_loop: bool = Field(
        default=True,
        description="Workers run a dispatch loop (one claimer thread handing batches to "
        "worker_concurrency sender threads) that keeps claiming while work comes, so a "
        "stream of jobs needs no wake-up message each; false: each wake-up runs a "
        "dispatch task that claims until nothing is due.",
    )
    dispatch_linger_s: float = Field(
        default=2.0,
        ge=0,
        le=60,
        description="How long a dispatch loop with nothing due keeps looking before it "
        "sleeps until a wake-up; meanwhile producers on a Redis broker send none for "
        "one-batch jobs. 0: sleep at once.",
    )
    dispatch_poll_s: float = Field(
        default=0.025,
        gt=0,
        le=5,
        description="How often a lingering dispatch loop claims again: the most a job "
        "that sent no wake-up waits before it is claimed.",
    )
    reply_batch_size: int = Field(
        default=64,
        ge=1,
        le=1000,
        description="Most gateway replies a worker process writes in one transaction: "
        "its threads hand their replies to one writer, which writes those waiting "
        "together, without waiting for more; 1: each thread writes its own.",
    )
    wake_fanout: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Most wake-up messages sent for one job; each woken task keeps "
        "claiming due batches until none is left, so more would only queue up.",
    )

    api_rate_per_s: float = Field(
        default=50.0,
        ge=0,
        description="Requests per second each API key may make to `serve` (token bucket "
        "refill rate, shared by every API process when the broker is Redis); 0: no limit.",
    )
    api_burst: int = Field(
        default=100,
        ge=1,
        description="Requests an API key may make at once before the rate applies "
        "(the token bucket's size).",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token /metrics requires (Authorization: Bearer <token>); "
        "unset: /metrics answers anyone who can reach it.",
    )
    balance_cache_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How long the drop-in getbalance.aspx reuses the gateway's last "
        "answer: one gateway call per this many seconds, whatever the callers ask.",
    )
    max_recipients_per_job: int = Field(
        default=10_000,
        ge=1,
        description="Most numbers one send request may name, on every producer path: "
        "send(), `dispatcher send`, POST /v1/jobs and the drop-in.",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Largest HTTP request body `serve` reads; a larger one is refused "
        "with 413 as soon as it passes the limit.",
    )

    @field_validator(
        "gateway_backup_url",
        "gateway_username",
        "gateway_password",
        "webhook_secret",
        "default_sender",
        "default_validity_s",
        "operator_password",
        "session_secret",
        "cookie_secure",
        "metrics_token",
        mode="before",
    )
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("retention_days", mode="before")
    @classmethod
    def _blank_retention_is_none(cls, value: Any) -> Any:
        # An empty variable means "not set": keep forever.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_parses(cls, value: str | None) -> str | None:
        if not value:
            return value
        # Not echoed: the URL may hold a password.
        if not check_database_url(value):
            raise ValueError("is not a well-formed database URL")
        return value

    @field_validator("gateway_ca_bundle", mode="before")
    @classmethod
    def _ca_bundle_exists(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        if value is not None and not Path(value).is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("gateway_url", "gateway_backup_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @field_validator("default_region")
    @classmethod
    def _region_code(cls, value: str) -> str:
        value = value.strip().upper()
        if len(value) != 2 or not value.isalpha():
            raise ValueError("must be a two-letter region code such as GB")
        return value

    @field_validator("default_sender")
    @classmethod
    def _valid_sender(cls, value: str | None) -> str | None:
        try:
            return check_sender(value)
        except InvalidSenderError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("trusted_proxies", "webhook_allowed_cidrs", mode="before")
    @classmethod
    def _network_list(cls, value: Any) -> Any:
        items = value.split(",") if isinstance(value, str) else list(value)
        return proxies.parse_networks(str(item) for item in items)

    @field_validator("worker_lanes", mode="before")
    @classmethod
    def _lane_list(cls, value: Any) -> Any:
        items = value.split(",") if isinstance(value, str) else list(value)
        lanes = {str(item).strip().lower() for item in items if str(item).strip()}
        unknown = lanes - set(LANE_NAMES)
        if unknown or not lanes:
            raise ValueError(f"must name one or more of {', '.join(LANE_NAMES)}, got {value!r}")
        return tuple(lane for lane in LANE_NAMES if lane in lanes)

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        for name, url in (
            ("DISPATCHER_GATEWAY_URL", self.gateway_url),
            ("DISPATCHER_GATEWAY_BACKUP_URL", self.gateway_backup_url),
        ):
            if url is not None:
                check_url(name, url, allow_http=self.gateway_allow_http)
        backup = backup_for(
            self.gateway_url,
            self.gateway_backup_url,
            backup_given="gateway_backup_url" in self.model_fields_set,
        )
        # The model is frozen to its users; this validator is where its values settle.
        object.__setattr__(self, "gateway_backup_url", backup)
        floor_s = (
            2 * (self.gateway_connect_timeout_s + self.gateway_read_timeout_s)
            + SUBMITTING_TIMEOUT_MARGIN_S
        )
        if self.submitting_timeout_s <= floor_s:
            raise ValueError(
                f"DISPATCHER_SUBMITTING_TIMEOUT_S={self.submitting_timeout_s:g} must exceed "
                f"2 x (connect + read timeout) + {SUBMITTING_TIMEOUT_MARGIN_S:g} = {floor_s:g} s, "
                "or the sweeper could mark a batch unknown while its HTTP call is still running"
            )
        if self.breaker_probe_max_s < self.breaker_probe_s:
            raise ValueError("DISPATCHER_BREAKER_PROBE_MAX_S must be >= DISPATCHER_BREAKER_PROBE_S")
        if self.retry_backoff_max_s < self.retry_backoff_s:
            raise ValueError("DISPATCHER_RETRY_BACKOFF_MAX_S must be >= DISPATCHER_RETRY_BACKOFF_S")
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A database or broker URL may carry a password, and a repr ends up in
        # tracebacks and log lines; secrets are SecretStr already.
        for name, value in super().__repr_args__():
            if name in ("database_url", "broker_url") and isinstance(value, str):
                value = redaction.redact(value)
            yield name, value

    @property
    def effective_database_url(self) -> str:
        """The database URL in force: the configured one, or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'dispatcher.sqlite3').resolve()}"

    @property
    def effective_broker_url(self) -> str:
        """The broker URL in force: the configured one, or the embedded filesystem broker."""
        # kombu wants a host in every URL, even for a transport that has none.
        return self.broker_url or "filesystem://localhost/"

    @property
    def webhook_threads(self) -> int:
        """Threads of a worker that may deliver webhooks at once: the setting, capped at
        half the worker's threads so dispatch always keeps the rest, and at least one."""
        return min(self.webhook_concurrency, max(1, self.worker_concurrency // 2))

    @property
    def broker_folder(self) -> Path:
        """Folder of the embedded filesystem broker (used only when broker_url is unset)."""
        return (self.data_dir / "broker").resolve()

    def gateway_config(self) -> GatewayConfig:
        """The gateway client's configuration; refuses to build one without credentials."""
        if not self.gateway_username or self.gateway_password is None:
            raise ConfigurationError(
                "DISPATCHER_GATEWAY_USERNAME and DISPATCHER_GATEWAY_PASSWORD must be set "
                "to talk to the gateway"
            )
        return GatewayConfig(
            url=self.gateway_url,
            backup_url=self.gateway_backup_url,
            username=self.gateway_username,
            password=self.gateway_password.get_secret_value(),
            connect_timeout_s=self.gateway_connect_timeout_s,
            read_timeout_s=self.gateway_read_timeout_s,
            pool_idle_s=self.gateway_pool_idle_s,
            pool_maxsize=max(self.worker_concurrency, 1),
            ca_bundle=str(self.gateway_ca_bundle) if self.gateway_ca_bundle else None,
        )

    def secrets(self) -> list[str]:
        """Values that must be redacted wherever text leaves the process."""
        found = [
            self.gateway_password,
            self.webhook_secret,
            self.operator_password,
            self.session_secret,
            self.metrics_token,
        ]
        return [secret.get_secret_value() for secret in found if secret is not None]


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment and the settings file, plus explicit overrides.

    Raises ConfigurationError with one readable line per problem, naming the variable.
    """
    env_file = os.environ.get(f"{ENV_PREFIX}SETTINGS_FILE", DEFAULT_SETTINGS_FILE)
    kwargs: dict[str, Any] = dict(overrides)
    if Path(env_file).is_file():
        kwargs["_env_file"] = env_file
    try:
        return Settings(**kwargs)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(p) for p in error["loc"])
            label = f"{ENV_PREFIX}{where.upper()}: " if where else ""
            problems.append(f"{label}{error['msg'].removeprefix('Value error, ')}")
        raise ConfigurationError("; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once (tests call ``get_settings.cache_clear()``)."""
    return load_settings()
