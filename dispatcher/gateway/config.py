"""What the gateway client needs to know, as one small frozen object.

``dispatcher.config.Settings`` builds it from the environment; tests and embedded
uses build their own.
"""

from __future__ import annotations

from dataclasses import dataclass


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
