"""The gateway simulator over real HTTP: docs/design.md section 1, its knobs, its ledger."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.errors import ConfigurationError
from dispatcher.gateway.protocol import BALANCE_PATH, SEND_PATH, Outcome, classify_reply
from dispatcher.gateway.simulator import (
    FIRST_MESSAGE_ID,
    UNLIMITED_BALANCE,
    GatewaySimulator,
    SimulatorConfig,
    config_from_options,
    normalise_gateway_number,
)

USERNAME = "sim-user"
PASSWORD = "sim-pass"
AUTH = {"username": USERNAME, "password": PASSWORD}
FIRST_ID = str(FIRST_MESSAGE_ID)
TIMEOUT = (2.0, 5.0)
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sim() -> Iterator[GatewaySimulator]:
    with GatewaySimulator(SimulatorConfig(seed=1)) as simulator:
        yield simulator


def send(sim: GatewaySimulator, method: str = "POST", **params: str) -> requests.Response:
    url = sim.base_url + SEND_PATH
    if method == "GET":
        return requests.get(url, params=params, timeout=TIMEOUT)
    return requests.post(url, data=params, timeout=TIMEOUT)


def send_ok(sim: GatewaySimulator, **params: str) -> requests.Response:
    return send(sim, **{**AUTH, "text": "hello", **params})


def balance(sim: GatewaySimulator, **params: str) -> str:
    response = requests.post(sim.base_url + BALANCE_PATH, data=params, timeout=TIMEOUT)
    assert response.status_code == 200
    return response.text


# ------------------------------------------------------------------ the protocol


def test_single_recipient_gets_a_single_id_line(sim: GatewaySimulator) -> None:
    response = send_ok(
        sim, to="447700900123", text="Hello", **{"from": "Acme", "usercontext": "ref-1"}
    )

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.text == f"ID:{FIRST_ID}"
    [entry] = sim.ledger()
    assert entry["number"] == "447700900123"
    assert entry["message_id"] == FIRST_ID
    assert (entry["text"], entry["sender"], entry["usercontext"]) == ("Hello", "Acme", "ref-1")
    assert (entry["type"], entry["maxconcat"], entry["parts"]) == (1, 1, 1)
    assert abs(entry["at"] - time.time()) < 60


def test_ids_count_up_per_submission_and_exceed_64_bits(sim: GatewaySimulator) -> None:
    first = send_ok(sim, to="447700900123").text
    second = send_ok(sim, to="447700900124").text

    assert first == f"ID:{FIRST_ID}"
    assert second == f"ID:{FIRST_MESSAGE_ID + 1}"
    assert int(second.removeprefix("ID:")) > 2**63


def test_multi_recipient_reply_normalises_dedupes_and_shares_one_id(
    sim: GatewaySimulator,
) -> None:
    sent = ["07700900123", "+44 7700 900124", "447700900123", "0044 (7700) 900-125"]

    response = send_ok(sim, to=",".join(sent))

    assert response.text == (
        f"447700900123,ID:{FIRST_ID}\r\n"
        f"447700900124,ID:{FIRST_ID}\r\n"
        f"447700900125,ID:{FIRST_ID}\r\n"
    )
    assert [e["number"] for e in sim.ledger()] == ["447700900123", "447700900124", "447700900125"]
    outcomes = classify_reply(sent, response.status_code, response.content)
    assert [o.outcome for o in outcomes] == [Outcome.ACCEPTED] * 4
    assert {o.gateway_message_id for o in outcomes} == {FIRST_ID}


def test_duplicates_that_collapse_to_one_recipient_get_a_single_line(
    sim: GatewaySimulator,
) -> None:
    assert send_ok(sim, to="07700900123,447700900123").text == f"ID:{FIRST_ID}"
    assert len(sim.ledger()) == 1


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("07700900123", "447700900123"),
        ("+447700900123", "447700900123"),
        ("00447700900123", "447700900123"),
        ("(0)7700-900 123", "447700900123"),
        ("447700900123", "447700900123"),
        ("+1 (212) 555-0100", "12125550100"),
    ],
)
def test_number_normalisation(raw: str, normalised: str) -> None:
    assert normalise_gateway_number(raw) == normalised


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"password": PASSWORD, "to": "447700900123", "text": "x"}, "NO_USERNAME"),
        ({"username": "", "password": PASSWORD, "to": "447700900123", "text": "x"}, "NO_USERNAME"),
        ({"username": USERNAME, "to": "447700900123", "text": "x"}, "NO_PASSWORD"),
        ({**AUTH, "text": "x"}, "NO_TO"),
        ({**AUTH, "to": "", "text": "x"}, "NO_TO"),
        ({**AUTH, "to": " , ,", "text": "x"}, "NO_TO"),
        ({**AUTH, "to": "447700900123"}, "NO_TEXT"),
        ({**AUTH, "to": "447700900123", "text": ""}, "NO_TEXT"),
        # The credentials are checked before anything else is missed.
        ({"username": USERNAME, "password": "wrong"}, "LOGIN_INVALID"),
        ({"username": "someone", "password": PASSWORD, "to": "1", "text": "x"}, "LOGIN_INVALID"),
    ],
)
def test_whole_submission_errors(sim: GatewaySimulator, params: dict[str, str], code: str) -> None:
    response = send(sim, **params)

    assert (response.status_code, response.text) == (200, f"ERR:{code}")
    assert sim.ledger() == []


def test_at_most_100_numbers_counted_before_dedupe(sim: GatewaySimulator) -> None:
    hundred = ",".join(f"4477009{i:05d}" for i in range(100))
    assert send_ok(sim, to=hundred).text.count("\r\n") == 100

    repeated = ",".join(["447700900123"] * 101)
    assert send_ok(sim, to=repeated).text == "ERR:INVALID_REQUEST"
    assert len(sim.ledger()) == 100


@pytest.mark.parametrize("maxconcat", ["0", "256", "abc", "1.5", "-1", " 2"])
def test_maxconcat_out_of_range_is_an_invalid_request(
    sim: GatewaySimulator, maxconcat: str
) -> None:
    assert send_ok(sim, to="447700900123", maxconcat=maxconcat).text == "ERR:INVALID_REQUEST"


@pytest.mark.parametrize("message_type", ["0", "2", "voice"])
def test_type_other_than_text_or_voice_is_an_invalid_request(
    sim: GatewaySimulator, message_type: str
) -> None:
    assert send_ok(sim, to="447700900123", type=message_type).text == "ERR:INVALID_REQUEST"


def test_voice_type_is_accepted_and_recorded(sim: GatewaySimulator) -> None:
    assert send_ok(sim, to="447700900123", type="6").text == f"ID:{FIRST_ID}"
    assert sim.ledger()[0]["type"] == 6


def test_text_needing_more_parts_than_maxconcat_is_refused(sim: GatewaySimulator) -> None:
    long_text = "x" * 161  # two GSM-7 parts

    assert send_ok(sim, to="447700900123", text=long_text).text == "ERR:INVALID_REQUEST"
    assert send_ok(sim, to="447700900123", text=long_text, maxconcat="2").text.startswith("ID:")
    assert [(e["maxconcat"], e["parts"]) for e in sim.ledger()] == [(2, 2)]


def test_unicode_text_travels_as_utf8(sim: GatewaySimulator) -> None:
    text = "Café ☕ — π"
    assert send_ok(sim, to="447700900123", text=text).text.startswith("ID:")
    assert send(sim, "GET", **AUTH, to="447700900124", text=text).text.startswith("ID:")
    assert [e["text"] for e in sim.ledger()] == [text, text]


def test_get_and_post_are_equivalent(sim: GatewaySimulator) -> None:
    via_get = send(sim, "GET", **AUTH, to="447700900123,447700900124", text="hi")
    via_post = send(sim, "POST", **AUTH, to="447700900123,447700900124", text="hi")

    next_id = str(FIRST_MESSAGE_ID + 1)
    assert via_get.text == via_post.text.replace(next_id, FIRST_ID)
    assert sim.stats()["requests_by_path"] == {SEND_PATH: 2}


def test_page_names_are_case_insensitive_and_others_are_404(sim: GatewaySimulator) -> None:
    response = requests.post(
        sim.base_url + "/SendMsg.aspx", data={**AUTH, "to": "447700900123", "text": "x"}, timeout=5
    )
    assert response.text == f"ID:{FIRST_ID}"
    assert requests.get(sim.base_url + "/nothing.aspx", timeout=5).status_code == 404


# --------------------------------------------------------- numbers and their rules


def test_unroutable_numbers_fail_on_their_own_line(sim: GatewaySimulator) -> None:
    response = send_ok(sim, to="447700900123,12345,1234567890123456,44770090012x")

    assert response.text == (
        f"447700900123,ID:{FIRST_ID}\r\n"
        "12345,ERR:INVALID_NUMBER\r\n"
        "1234567890123456,ERR:INVALID_NUMBER\r\n"
        "44770090012x,ERR:INVALID_NUMBER\r\n"
    )
    assert [e["number"] for e in sim.ledger()] == ["447700900123"]
    assert sim.stats()["recipient_errors"] == {"INVALID_NUMBER": 3}


def test_a_single_unroutable_number_gets_a_single_error_line(sim: GatewaySimulator) -> None:
    assert send_ok(sim, to="12345").text == "ERR:INVALID_NUMBER"
    assert sim.stats()["outcomes"] == {"rejected": 1}


def test_number_rule_refuses_that_recipient_only(sim: GatewaySimulator) -> None:
    sim.configure(number_rules={"07700900666": "INVALID_NUMBER"})  # keys are normalised too

    multi = send_ok(sim, to="447700900123,447700900666")
    single = send_ok(sim, to="+447700900666")

    assert multi.text == f"447700900123,ID:{FIRST_ID}\r\n447700900666,ERR:INVALID_NUMBER\r\n"
    assert single.text == "ERR:INVALID_NUMBER"
    outcomes = classify_reply(["447700900123", "447700900666"], 200, multi.content)
    assert [o.outcome for o in outcomes] == [Outcome.ACCEPTED, Outcome.REJECTED]
    assert [e["number"] for e in sim.ledger()] == ["447700900123"]


def test_counted_number_rule_fails_n_times_then_accepts(sim: GatewaySimulator) -> None:
    sim.configure(number_rules={"447700900777": "GATEWAY_ERROR*2"})

    replies = [send_ok(sim, to="447700900777").text for _ in range(3)]

    assert replies == ["ERR:GATEWAY_ERROR", "ERR:GATEWAY_ERROR", f"ID:{FIRST_ID}"]
    assert len(sim.ledger()) == 1
    sim.configure(number_rules={"447700900777": "GATEWAY_ERROR*1"})  # restarts the count
    assert send_ok(sim, to="447700900777").text == "ERR:GATEWAY_ERROR"


# --------------------------------------------------------------------- credit


def test_credit_is_spent_per_part_per_accepted_recipient(sim: GatewaySimulator) -> None:
    sim.configure(credit=5)
    two_parts = "y" * 200

    first = send_ok(sim, to="447700900001,447700900002,123", text=two_parts, maxconcat="2")
    assert "ERR:INVALID_NUMBER" in first.text  # an unroutable number costs nothing
    assert balance(sim, **AUTH) == "BALANCE:1"

    refused = send_ok(sim, to="447700900003", text=two_parts, maxconcat="2")
    assert refused.text == "ERR:INSUFFICIENT_CREDIT"
    assert balance(sim, **AUTH) == "BALANCE:1"
    assert len(sim.ledger()) == 2

    assert send_ok(sim, to="447700900003").text == f"ID:{FIRST_MESSAGE_ID + 1}"
    assert balance(sim, **AUTH) == "BALANCE:0"
    assert sim.config().credit == 0


def test_insufficient_credit_is_one_line_even_for_many_recipients(sim: GatewaySimulator) -> None:
    sim.configure(credit=1)

    response = send_ok(sim, to="447700900001,447700900002")

    assert response.text == "ERR:INSUFFICIENT_CREDIT"
    assert sim.ledger() == []
    outcomes = classify_reply(["447700900001", "447700900002"], 200, response.content)
    assert {o.outcome for o in outcomes} == {Outcome.NO_CREDIT}


def test_balance_checks_credentials_and_reports_unlimited(sim: GatewaySimulator) -> None:
    assert balance(sim, **AUTH) == f"BALANCE:{UNLIMITED_BALANCE}"
    assert balance(sim, password=PASSWORD) == "ERR:NO_USERNAME"
    assert balance(sim, username=USERNAME) == "ERR:NO_PASSWORD"
    assert balance(sim, username=USERNAME, password="nope") == "ERR:LOGIN_INVALID"
    via_get = requests.get(sim.base_url + BALANCE_PATH, params=AUTH, timeout=TIMEOUT)
    assert via_get.text == f"BALANCE:{UNLIMITED_BALANCE}"


# ---------------------------------------------------------------------- faults


@pytest.mark.parametrize("code", ["GATEWAY_ERROR", "INTERNAL_ERROR"])
def test_transient_error_fails_the_whole_submission(sim: GatewaySimulator, code: str) -> None:
    sim.configure(transient_error_rate=1.0, transient_code=code)

    response = send_ok(sim, to="447700900001,447700900002")

    assert response.text == f"ERR:{code}"
    assert sim.ledger() == []
    assert balance(sim, **AUTH).startswith("BALANCE:")  # balance is spared by default


def test_http_error_replies_that_status_and_body(sim: GatewaySimulator) -> None:
    sim.configure(http_error_rate=1.0)
    unavailable = send_ok(sim, to="447700900001")

    html = "<html><body><h1>Server Error in '/' Application.</h1></body></html>"
    sim.configure(http_error_status=500, http_error_body=html)
    server_error = send_ok(sim, to="447700900001")

    assert (unavailable.status_code, unavailable.text) == (503, "Service Unavailable")
    assert (server_error.status_code, server_error.text) == (500, html)
    assert server_error.headers["Content-Type"].startswith("text/html")
    assert sim.ledger() == []
    assert sim.stats()["outcomes"] == {"http_503": 1, "http_500": 1}


def test_faults_on_balance_make_the_balance_probe_fail_too(sim: GatewaySimulator) -> None:
    sim.configure(http_error_rate=1.0, faults_on_balance=True)
    response = requests.post(sim.base_url + BALANCE_PATH, data=AUTH, timeout=TIMEOUT)
    assert response.status_code == 503

    sim.configure(http_error_rate=0.0, transient_error_rate=1.0)
    assert balance(sim, **AUTH) == "ERR:GATEWAY_ERROR"


def test_hang_after_accept_times_the_client_out_but_keeps_the_message(
    sim: GatewaySimulator,
) -> None:
    sim.configure(hang_rate=1.0, hang_s=2.0)

    with pytest.raises(requests.ReadTimeout):
        requests.post(
            sim.base_url + SEND_PATH,
            data={**AUTH, "to": "447700900123", "text": "x"},
            timeout=(2.0, 0.5),
        )

    assert [e["number"] for e in sim.ledger()] == ["447700900123"]
    assert sim.stats()["outcomes"] == {"accepted": 1, "hang": 1}


def test_hang_before_accept_accepts_nothing_once_the_client_has_gone(
    sim: GatewaySimulator,
) -> None:
    sim.configure(hang_rate=1.0, hang_s=0.6, hang_after_accept=False)

    with pytest.raises(requests.ReadTimeout):
        requests.post(
            sim.base_url + SEND_PATH,
            data={**AUTH, "to": "447700900123", "text": "x"},
            timeout=(2.0, 0.2),
        )
    deadline = time.monotonic() + 5
    while sim.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)

    assert sim.ledger() == []
    assert sim.stats()["outcomes"] == {"hang": 1, "hang_client_gone": 1}


def test_hang_before_accept_serves_a_patient_client(sim: GatewaySimulator) -> None:
    sim.configure(hang_rate=1.0, hang_s=0.3, hang_after_accept=False)
    assert send_ok(sim, to="447700900123").text == f"ID:{FIRST_ID}"


def test_drop_after_accept_gives_no_reply_but_keeps_the_message(sim: GatewaySimulator) -> None:
    sim.configure(drop_after_accept_rate=1.0)

    with pytest.raises(requests.ConnectionError):
        send_ok(sim, to="447700900001,447700900002")

    assert [e["number"] for e in sim.ledger()] == ["447700900001", "447700900002"]
    assert sim.stats()["outcomes"] == {"accepted": 1, "drop_after_accept": 1}


def test_reset_before_accept_gives_no_reply_and_accepts_nothing(sim: GatewaySimulator) -> None:
    sim.configure(reset_before_accept_rate=1.0)

    with pytest.raises(requests.ConnectionError):
        send_ok(sim, to="447700900001")

    assert sim.ledger() == []
    assert sim.stats()["outcomes"] == {"reset_before_accept": 1}


def test_truncated_reply_is_an_error_but_the_message_was_accepted(sim: GatewaySimulator) -> None:
    sim.configure(truncate_rate=1.0)

    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        send_ok(sim, to="447700900001,447700900002")

    assert len(sim.ledger()) == 2


def test_garbage_reply_is_unreadable_but_the_message_was_accepted(sim: GatewaySimulator) -> None:
    sim.configure(garbage_rate=1.0)

    response = send_ok(sim, to="447700900001,447700900002")

    assert response.status_code == 200
    outcomes = classify_reply(["447700900001", "447700900002"], 200, response.content)
    assert {o.outcome for o in outcomes} == {Outcome.AMBIGUOUS}
    assert len(sim.ledger()) == 2


def test_stopped_simulator_refuses_connections() -> None:
    simulator = GatewaySimulator()
    simulator.start_in_thread()
    url = simulator.base_url + SEND_PATH
    simulator.stop()
    simulator.stop()  # idempotent

    with pytest.raises(requests.ConnectionError):
        requests.post(url, data=AUTH, timeout=TIMEOUT)


def test_stop_ends_a_hanging_request_at_once() -> None:
    simulator = GatewaySimulator(SimulatorConfig(hang_rate=1.0, hang_s=60.0))
    simulator.start_in_thread()
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(send_ok, simulator, to="447700900123")
        deadline = time.monotonic() + 5
        while simulator.stats()["in_flight"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)

        start = time.monotonic()
        simulator.stop()
        elapsed_s = time.monotonic() - start

        # The reply may lose the race with the shutdown; either way is fine.
        with contextlib.suppress(requests.ConnectionError):
            assert future.result().text == f"ID:{FIRST_ID}"
    # Well under the one-second grace a stop gives requests still in progress.
    assert elapsed_s < 0.9
    assert len(simulator.ledger()) == 1


def test_the_same_seed_draws_the_same_faults() -> None:
    def run_once() -> list[str]:
        with GatewaySimulator(SimulatorConfig(seed=42, transient_error_rate=0.5)) as simulator:
            return [send_ok(simulator, to="447700900123").text[:4] for _ in range(30)]

    first, second = run_once(), run_once()
    assert first == second
    assert {"ID:1", "ERR:"} == set(first)


# ---------------------------------------------------------------- concurrency


def test_latency_does_not_serialise_requests(sim: GatewaySimulator) -> None:
    sim.configure(latency_ms=200.0)

    def timed(i: int) -> float:
        start = time.monotonic()
        assert send_ok(sim, to=f"4477009{i:05d}").text.startswith("ID:")
        return time.monotonic() - start

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=20) as pool:
        durations = list(pool.map(timed, range(20)))
    total = time.monotonic() - start

    assert min(durations) >= 0.2
    assert total < 2.0  # 20 x 200 ms one after another would take 4 s
    assert len(sim.ledger()) == 20
    assert sim.stats()["max_in_flight"] > 1


def test_control_endpoints_ignore_latency_and_faults(sim: GatewaySimulator) -> None:
    sim.configure(latency_ms=3000.0, http_error_rate=1.0, reset_before_accept_rate=1.0)

    start = time.monotonic()
    for endpoint in ("health", "stats", "config", "ledger"):
        assert requests.get(f"{sim.control_url}/{endpoint}", timeout=TIMEOUT).status_code == 200
    assert time.monotonic() - start < 1.0


# ------------------------------------------------------------- control endpoints


def test_health_names_the_urls(sim: GatewaySimulator) -> None:
    health = requests.get(sim.control_url + "/health", timeout=TIMEOUT).json()
    assert health == {"status": "ok", "base_url": sim.base_url, "control_url": sim.control_url}
    assert sim.base_url.endswith("/smsgateway")


def test_stats_count_requests_and_outcomes(sim: GatewaySimulator) -> None:
    send_ok(sim, to="447700900001,447700900002")
    send(sim, **AUTH)
    balance(sim, **AUTH)

    stats = requests.get(sim.control_url + "/stats", timeout=TIMEOUT).json()

    assert stats["requests_total"] == 3
    assert stats["requests_by_path"] == {SEND_PATH: 2, BALANCE_PATH: 1}
    assert stats["outcomes"] == {"accepted": 1, "ERR:NO_TO": 1, "balance:ok": 1}
    assert (stats["submissions_accepted"], stats["recipients_accepted"]) == (1, 2)
    assert (stats["ledger_size"], stats["in_flight"], stats["max_in_flight"]) == (2, 0, 1)


def test_ledger_endpoint_pages_with_since_and_limit(sim: GatewaySimulator) -> None:
    send_ok(sim, to="447700900001,447700900002,447700900003")

    def page(query: str) -> Any:
        return requests.get(f"{sim.control_url}/ledger{query}", timeout=TIMEOUT)

    assert [e["number"] for e in page("").json()] == [
        "447700900001",
        "447700900002",
        "447700900003",
    ]
    assert [e["number"] for e in page("?since=1&limit=1").json()] == ["447700900002"]
    assert page("?since=3").json() == []
    assert page("?since=x").status_code == 400
    assert page("").json() == sim.ledger()


def test_config_endpoint_reads_and_changes_knobs(sim: GatewaySimulator) -> None:
    url = sim.control_url + "/config"
    shown = requests.get(url, timeout=TIMEOUT).json()
    assert shown["password"] == "***"
    assert shown["username"] == USERNAME
    assert shown["seed"] == 1

    changed = requests.post(
        url, json={"credit": 7, "latency_ms": 1, "number_rules": {"447700900001": "X*1"}}, timeout=5
    )

    assert changed.status_code == 200
    assert (changed.json()["credit"], changed.json()["latency_ms"]) == (7, 1.0)
    assert sim.config().number_rules == {"447700900001": "X*1"}
    assert balance(sim, **AUTH) == "BALANCE:7"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"latency": 5}, "unknown knob(s): latency"),
        ({"latency_ms": "fast"}, "latency_ms must be a number"),
        ({"credit": 1.5}, "credit must be"),
        ({"hang_after_accept": 1}, "hang_after_accept must be true or false"),
        ({"garbage_rate": 1.5}, "garbage_rate must be between 0 and 1"),
        ({"number_rules": {"447700900001": "bad rule"}}, "CODE or CODE*<n>"),
        ({"number_rules": {"12": "INVALID_NUMBER"}}, "not a 7 to 15 digit number"),
        ({"http_error_status": 200}, "http_error_status"),
        ([1, 2], "JSON object"),
    ],
)
def test_config_endpoint_refuses_bad_knobs(
    sim: GatewaySimulator, body: object, reason: str
) -> None:
    before = sim.config()

    response = requests.post(sim.control_url + "/config", json=body, timeout=TIMEOUT)

    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert sim.config() == before


def test_config_endpoint_refuses_a_body_that_is_not_json(sim: GatewaySimulator) -> None:
    response = requests.post(sim.control_url + "/config", data="credit=5", timeout=TIMEOUT)
    assert response.status_code == 400


def test_reset_clears_state_and_restores_the_starting_knobs() -> None:
    with GatewaySimulator(SimulatorConfig(credit=10)) as simulator:
        simulator.configure(
            credit=3, transient_code="INTERNAL_ERROR", number_rules={"447700900009": "X*1"}
        )
        send_ok(simulator, to="447700900001")
        assert send_ok(simulator, to="447700900009").text == "ERR:X"

        response = requests.post(
            simulator.control_url + "/reset", json={"latency_ms": 5}, timeout=TIMEOUT
        )

        assert response.status_code == 200
        assert simulator.ledger() == []
        assert simulator.stats()["requests_total"] == 0
        config = simulator.config()
        assert (config.transient_code, config.credit, config.latency_ms) == (
            "GATEWAY_ERROR",
            10,
            5.0,
        )
        assert config.number_rules == {}
        # IDs never repeat, even across a reset; the number rule went with it.
        assert send_ok(simulator, to="447700900001").text == f"ID:{FIRST_MESSAGE_ID + 1}"
        assert send_ok(simulator, to="447700900009").text == f"ID:{FIRST_MESSAGE_ID + 2}"
        assert requests.post(simulator.control_url + "/reset", timeout=TIMEOUT).ok


def test_configure_refuses_unknown_and_ill_typed_knobs(sim: GatewaySimulator) -> None:
    with pytest.raises(ConfigurationError, match="unknown knob"):
        sim.configure(latency=3)
    with pytest.raises(ConfigurationError, match="seed"):
        sim.configure(seed="one")
    with pytest.raises(ConfigurationError):
        SimulatorConfig(transient_error_rate=-0.1)


def test_config_repr_hides_the_password() -> None:
    assert "secret-pw" not in repr(SimulatorConfig(password="secret-pw"))


def test_config_from_options_ignores_options_not_given() -> None:
    config = config_from_options(
        credit=None,
        latency_ms=150,
        number_rules=["07700900001=INVALID_NUMBER"],
        hang_after_accept=None,
    )
    assert config == SimulatorConfig(
        latency_ms=150.0, number_rules={"447700900001": "INVALID_NUMBER"}
    )


# ---------------------------------------------------------- property and command line


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["07700900001", "+447700900001", "447700900002", "0044 7700 900003", "123", "99999"]
        ),
        min_size=1,
        max_size=8,
    )
)
def test_every_reply_is_readable_by_the_protocol_parser(numbers: list[str]) -> None:
    with GatewaySimulator() as simulator:
        response = send_ok(simulator, to=",".join(numbers))
        routable = {normalise_gateway_number(n) for n in numbers} - {"123", "99999"}

        outcomes = classify_reply(numbers, response.status_code, response.content)

        for number, outcome in zip(numbers, outcomes, strict=True):
            expected = (
                Outcome.ACCEPTED
                if normalise_gateway_number(number) in routable
                else Outcome.REJECTED
            )
            assert outcome.outcome == expected, (numbers, response.text)
        assert sorted(e["number"] for e in simulator.ledger()) == sorted(routable)


def test_command_line_serves_until_sigterm() -> None:
    command = [
        sys.executable,
        "-m",
        "dispatcher.gateway.simulator",
        "--credit",
        "3",
        "--password",
        "cli-pass",
        "--number-rule",
        "447700900666=INVALID_NUMBER",
        "--log-level",
        "WARNING",
    ]
    with subprocess.Popen(
        command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            urls = json.loads(process.stdout.readline())
            reply = requests.post(
                urls["base_url"] + SEND_PATH,
                data={"username": USERNAME, "password": "cli-pass", "to": "447700900666,1"},
                timeout=TIMEOUT,
            )
            assert reply.text == "ERR:NO_TEXT"
            balance_reply = requests.get(
                urls["base_url"] + BALANCE_PATH,
                params={"username": USERNAME, "password": "cli-pass"},
                timeout=TIMEOUT,
            )
            assert balance_reply.text == "BALANCE:3"
            config = requests.get(urls["control_url"] + "/config", timeout=TIMEOUT).json()
            assert config["number_rules"] == {"447700900666": "INVALID_NUMBER"}
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=10)
        assert process.returncode == 0, stderr
        assert "cli-pass" not in stderr
