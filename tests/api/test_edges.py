"""Smaller edges over real HTTP on PostgreSQL: the drop-in balance answers from a short
cache and needs the ``balance`` scope; ``/metrics`` can require a bearer token."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from dispatcher.gateway.protocol import BALANCE_PATH, SEND_PATH
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.service.keys import KeyStore
from support.numbers import number
from support.settings import make_settings

from .test_api import UNLIMITED, Api, running_api

BALANCE = "/smsgateway" + BALANCE_PATH
SEND = "/smsgateway" + SEND_PATH
METRICS_TOKEN = "metrics-token-" + "x" * 20

pytestmark = pytest.mark.services


@pytest.fixture
def serve(
    clean_env: None, pg_db: Database, broker_url: str, simulator: GatewaySimulator, tmp_path: Path
) -> Iterator[Callable[..., Api]]:
    """Starts API servers on PostgreSQL, Redis and the simulator, with settings overridden."""
    managers: list[Any] = []

    def start(**overrides: Any) -> Api:
        values = {"broker_url": broker_url, **UNLIMITED, **overrides}
        manager = running_api(make_settings(pg_db, simulator, tmp_path, **values))
        managers.append(manager)
        api: Api = manager.__enter__()
        return api

    try:
        yield start
    finally:
        for manager in reversed(managers):
            manager.__exit__(None, None, None)


def balance_calls(simulator: GatewaySimulator) -> int:
    """How many balance requests reached the gateway."""
    return int(simulator.stats()["requests_by_path"].get(BALANCE_PATH, 0))


# --- the drop-in balance -----------------------------------------------------------


def test_the_balance_is_answered_from_a_short_cache(
    serve: Callable[..., Api], simulator: GatewaySimulator
) -> None:
    api = serve(balance_cache_s=1.5)
    token, _ = KeyStore(api.db).create("till", "balance", actor="test")
    login = {"username": "till", "password": token}
    simulator.configure(credit=1234)

    def ask(_: int) -> str:
        return requests.post(api.base_url + BALANCE, data=login, timeout=30).text

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(40)))
    assert answers == ["BALANCE:1234"] * 40
    assert balance_calls(simulator) == 1

    simulator.configure(credit=99)
    assert ask(0) == "BALANCE:1234"  # still the cached answer
    time.sleep(1.6)
    assert ask(0) == "BALANCE:99"
    assert balance_calls(simulator) == 2


def test_a_failed_balance_is_cached_too(
    serve: Callable[..., Api], simulator: GatewaySimulator
) -> None:
    # A gateway that is down must not be asked once per caller either.
    api = serve(balance_cache_s=60)
    token, _ = KeyStore(api.db).create("till", "balance", actor="test")
    simulator.configure(faults_on_balance=True, http_error_rate=1.0, http_error_status=503)
    for _ in range(10):
        answer = requests.get(
            api.base_url + BALANCE, params={"username": "till", "password": token}, timeout=30
        )
        assert answer.text == "ERR:GATEWAY_ERROR"
    assert balance_calls(simulator) == 1


def test_the_balance_needs_the_balance_scope(
    serve: Callable[..., Api], simulator: GatewaySimulator
) -> None:
    api = serve()
    keys = KeyStore(api.db)
    sender, _ = keys.create("shop", "send", actor="test")
    teller, _ = keys.create("till", "balance", actor="test")
    simulator.configure(credit=50)

    def post(path: str, name: str, token: str, **form: str) -> str:
        data = {"username": name, "password": token, **form}
        return requests.post(api.base_url + path, data=data, timeout=30).text

    assert post(BALANCE, "shop", sender) == "ERR:LOGIN_INVALID"
    assert post(BALANCE, "till", teller) == "BALANCE:50"
    # And the balance scope sends nothing.
    assert post(SEND, "till", teller, to=number(1), text="hi") == "ERR:LOGIN_INVALID"
    assert post(SEND, "shop", sender, to=number(1), text="hi").startswith("ID:")
    assert balance_calls(simulator) == 1


# --- /metrics ------------------------------------------------------------------------


def test_metrics_can_require_a_bearer_token(serve: Callable[..., Api]) -> None:
    api = serve(metrics_token=METRICS_TOKEN)
    url = api.base_url + "/metrics"
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {METRICS_TOKEN}"},
        {"Authorization": f"Bearer {METRICS_TOKEN}x"},
    ):
        refused = requests.get(url, headers=headers, timeout=30)
        assert refused.status_code == 401, headers
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "sms_dispatcher" not in refused.text
    scraped = requests.get(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30)
    assert scraped.status_code == 200
    assert "sms_dispatcher_recipients" in scraped.text


def test_metrics_stay_open_without_a_token(serve: Callable[..., Api]) -> None:
    api = serve()
    assert requests.get(api.base_url + "/metrics", timeout=30).status_code == 200
