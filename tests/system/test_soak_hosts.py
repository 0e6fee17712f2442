"""The soak's several hosts (``ops.soak.hosts``) where they cannot be made."""

from __future__ import annotations

import pytest

from ops.soak.hosts import unavailable


def test_without_ip_the_hosts_are_unavailable_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--hosts` where namespaces cannot be made says why and runs on one host."""
    monkeypatch.setenv("PATH", "/nonexistent")
    assert unavailable() == "iproute2's ip is not installed"
