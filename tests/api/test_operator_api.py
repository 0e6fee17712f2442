"""The API's operator actions beyond retry and cancel basics (issue 16): a retry's dry
run, settling unknown recipients, and /docs that needs no internet."""

from __future__ import annotations

import re

from dispatcher.gateway.simulator import GatewaySimulator
from support.numbers import number
from support.reads import recipients_of

from .test_api import Api, _actions, create_job
from .test_api import api as api  # the fixture
from .test_api import api_factory as api_factory  # the fixture it uses


def test_a_retry_dry_run_answers_what_would_go_and_queues_nothing(
    api: Api, simulator: GatewaySimulator
) -> None:
    token = api.key("ops")
    simulator.configure(number_rules={number(1): "INVALID_NUMBER"})
    job = create_job(api, token, to=[number(1)], text="dry")["id"]
    api.service.dispatch_due(worker="test")

    dry = api.request(
        "POST",
        f"/v1/jobs/{job}/retry",
        token,
        json={"error_code": "INVALID_NUMBER", "dry_run": True},
    )
    assert dry.status_code == 200, dry.text
    assert (dry.json()["retried"], dry.json()["jobs"], dry.json()["dry_run"]) == (1, [job], True)
    assert [r.status for r in recipients_of(api.db, job)] == ["failed"]
    assert [a for a in _actions(api.db) if a.action == "retry"] == []

    kept = api.request("POST", f"/v1/jobs/{job}/retry", token, json={"dry_run": True})
    group = kept.json()["held_back"]["permanent"]
    assert group["count"] == 1
    [listed] = group["sample"]
    assert (listed["error_code"], listed["status"]) == ("INVALID_NUMBER", "failed")
    assert listed["age_s"] >= 0

    for bad in (0, -5, 10**9, "60"):
        refused = api.request("POST", f"/v1/jobs/{job}/retry", token, json={"valid_for_s": bad})
        assert refused.status_code == 422, (bad, refused.text)


def test_settling_unknown_recipients_needs_operate_and_a_reason(
    api: Api, simulator: GatewaySimulator
) -> None:
    ops, shop = api.key("ops"), api.key("shop", "send,read")
    simulator.configure(garbage_rate=1.0)
    job = create_job(api, shop, to=[number(1), number(2)], text="hello")["id"]
    api.service.dispatch_due(worker="test")
    simulator.configure(garbage_rate=0.0)
    path = f"/v1/jobs/{job}/settle"
    body = {"status": "sent", "reason": "in the vendor's history", "numbers": ["07700 900001"]}

    # The key that sent the job may not settle it: that is evidence an operator records.
    assert api.request("POST", path, shop, json=body).status_code == 403
    for bad in (
        {"status": "queued", "reason": "r"},
        {"status": "sent", "reason": ""},
        {"status": "sent"},
        {"status": "sent", "reason": "r", "numbers": ["not a number"]},
        {"status": "failed", "reason": "r", "gateway_message_id": "X"},
        {"status": "sent", "reason": "r", "gateway_message_id": "X"},  # two unknown
        {"status": "sent", "reason": "line\nbreak"},
    ):
        refused = api.request("POST", path, ops, json=bad)
        assert refused.status_code == 422, (bad, refused.text)
    assert {r.status for r in recipients_of(api.db, job)} == {"unknown"}

    settled = api.request("POST", path, ops, json=body | {"gateway_message_id": "GW-1"})
    assert settled.status_code == 200, settled.text
    assert settled.json() == {"settled": 1, "job": job, "status": "sent"}
    rows = {r.number: r for r in recipients_of(api.db, job)}
    assert (rows[number(1)].status, rows[number(1)].gateway_message_id) == ("sent", "GW-1")
    assert rows[number(2)].status == "unknown"
    actions = [(a.actor, a.action, a.target, a.affected) for a in _actions(api.db)]
    assert ("api:ops", "settle", job, 1) in actions
    missing = api.request("POST", "/v1/jobs/01NOSUCHJOB0000000000000000/settle", ops, json=body)
    assert missing.status_code == 404


def test_the_docs_page_works_without_internet(api: Api) -> None:
    """/docs loads Swagger UI from this server, never from a CDN, so it works where the
    api has no internet; /openapi.json is what it shows."""
    page = api.request("GET", "/docs")
    assert page.status_code == 200
    assert not re.search(r"https?://", page.text), "a URL on another host"
    assets = re.findall(r"(/docs/assets/[^\"']+)", page.text)
    assert {a.rsplit("/", 1)[1] for a in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
    for asset in assets:
        served = api.request("GET", asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 100, asset
    assert "/openapi.json" in page.text
    assert api.request("GET", "/openapi.json").json()["info"]["title"] == "sms-dispatcher"
