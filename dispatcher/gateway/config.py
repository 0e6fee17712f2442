"""What the gateway client needs to know, as one small frozen object, and the checks
its URLs pass before one is built.

``dispatcher.config.Settings`` builds it from the environment; tests and embedded
uses build their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3

PRODUCTION_URL = "https://www.intellisoftware.co.uk/smsgateway"
PRODUCTION_BACKUP_URL = "https://www.intellisoftware2.co.uk/smsgateway"
PRODUCTION_HOSTS = frozenset(
    {
        "www.intellisoftware.co.uk",
        "intellisoftware.co.uk",
        "www.intellisoftware2.co.uk",
        "intellisoftware2.co.uk",
    }
)
"""The vendor's own gateway hosts (docs/design.md section 1)."""


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """What the gateway client needs, and nothing more."""

    url: str
    backup_url: str | None
    username: str
    password: str
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    pool_idle_s: float = 2.0
    pool_maxsize: int = 32
    ca_bundle: str | None = None

    def __repr__(self) -> str:
        # The password must never surface through a repr in a traceback or a log line.
        return (
            f"GatewayConfig(url={self.url!r}, backup_url={self.backup_url!r}, "
            f"username={self.username!r}, password='***', "
            f"connect_timeout_s={self.connect_timeout_s}, read_timeout_s={self.read_timeout_s})"
        )


def check_url(name: str, url: str, *, allow_http: bool) -> None:
    """Raise ValueError, naming the setting ``name`` but never echoing ``url`` (it may
    hold a password), unless ``url`` is an http(s) URL with a host that both our URL
    parser and the HTTP client read alike, with no credentials or query string, and
    plain http only when ``allow_http``."""
    parts = urlsplit(url)
    if "@" in url or parts.username or parts.password or parts.query:
        # Credentials go in the POST body only; a URL is logged by every proxy.
        raise ValueError(f"{name} must not carry credentials or a query string")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
        client_host = urllib3.util.parse_url(url).host
    except (ValueError, urllib3.exceptions.LocationParseError):
        client_host = None
    if client_host != parts.hostname:
        # Both parsers must read the same host, or the client would go elsewhere.
        raise ValueError(f"{name} is not a well-formed URL")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http(s) URL with a host")
    if parts.scheme == "http" and not allow_http:
        raise ValueError(
            f"{name} is plain http://; the gateway password would cross the network "
            "in clear. Use https://, or set DISPATCHER_GATEWAY_ALLOW_HTTP=true for a "
            "local simulator"
        )


def backup_for(primary: str, backup: str | None, *, backup_given: bool) -> str | None:
    """The backup URL in force for ``primary``.

    The vendor's backup host is the default only beside the vendor's own primary: a
    primary overridden (a simulator, a staging host) with no backup named has none,
    so a development setup never fails over to the real gateway. A plain-http
    primary (a simulator, a test gateway) with the vendor's gateway named as its
    backup is refused outright: its failures would send test traffic for real.
    """
    if not backup_given:
        backup = PRODUCTION_BACKUP_URL if primary == PRODUCTION_URL else None
    if backup is not None and urlsplit(primary).scheme == "http" and is_production(backup):
        raise ValueError(
            "DISPATCHER_GATEWAY_BACKUP_URL names the production gateway beside a plain-http "
            "primary (a simulator or test gateway): failing over would send test messages "
            "for real. Leave the backup unset, or name another test gateway"
        )
    return backup


def is_production(url: str) -> bool:
    """Whether ``url`` leads to one of the vendor's own gateway hosts."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    return host in PRODUCTION_HOSTS
