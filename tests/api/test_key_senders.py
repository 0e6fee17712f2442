"""Senders and scopes per key: a key uses only its granted senders or the default one.

A leaked application key must not send as a bank: a key with no grants may use
the configured default sender (or none, the gateway account's default) and
nothing else, through ``/v1`` (403 ``sender_not_allowed``) and the drop-in
endpoint (``ERR:INVALID_REQUEST``). Granting, revoking and rescoping are
operator actions, audited with before and after, effective on the next request.
Real uvicorn on real PostgreSQL.
"""

from __future__ import annotations

import json

import pytest
import requests
from sqlalchemy import select

from dispatcher.persistence.models import ApiKey, Job, OperatorAction
from dispatcher.service.keys import KeyStore
from support.numbers import number
from support.reads import row_counts

from .test_api import Api, ApiFactory, error_of
from .test_api import api_factory as api_factory  # the fixture

pytestmark = pytest.mark.services

DEFAULT = "Acme"
"""DISPATCHER_DEFAULT_SENDER of the servers here."""


@pytest.fixture
def api(api_factory: ApiFactory) -> Api:
    """A server whose default sender is ``Acme``."""
    return api_factory(default_sender=DEFAULT)


def v1_send(api: Api, token: str, sender: str | None) -> requests.Response:
    body = {"to": number(1), "text": "hi"} | ({"sender": sender} if sender else {})
    return api.request("POST", "/v1/jobs", token, json=body)


def dropin_send(api: Api, name: str, token: str, sender: str | None) -> str:
    form = {"username": name, "password": token, "to": number(1), "text": "hi"}
    return requests.post(
        api.base_url + "/smsgateway/sendmsg.aspx",
        data=form | ({"from": sender} if sender else {}),
        timeout=30,
    ).text


def sender_of(api: Api, job_id: str) -> str | None:
    with api.db.transaction() as session:
        return session.scalars(select(Job.sender).where(Job.id == job_id)).one()


def test_a_key_without_grants_may_use_only_the_default_sender(api: Api) -> None:
    token = api.key("shop", "send,read")
    refused = v1_send(api, token, "MyBank")
    assert refused.status_code == 403, refused.text
    error = error_of(refused)
    assert error["code"] == "sender_not_allowed"
    assert "'MyBank' is not granted" in error["message"]
    assert DEFAULT in error["message"]
    assert dropin_send(api, "shop", token, "MyBank") == "ERR:INVALID_REQUEST"
    assert row_counts(api.db)["jobs"] == 0

    for sender in (DEFAULT, None):
        created = v1_send(api, token, sender)
        assert created.status_code == 201, created.text
        assert sender_of(api, created.json()["id"]) == DEFAULT
        reply = dropin_send(api, "shop", token, sender)
        assert reply.startswith("ID:"), reply
        assert sender_of(api, reply.removeprefix("ID:")) == DEFAULT


def test_without_a_default_sender_a_key_without_grants_sends_with_none(
    api_factory: ApiFactory,
) -> None:
    api = api_factory()
    token = api.key("shop", "send,read")
    assert v1_send(api, token, DEFAULT).status_code == 403
    assert dropin_send(api, "shop", token, DEFAULT) == "ERR:INVALID_REQUEST"
    created = v1_send(api, token, None)
    assert created.status_code == 201, created.text
    assert sender_of(api, created.json()["id"]) is None


def test_granting_and_revoking_a_sender_are_audited_and_take_effect_at_once(api: Api) -> None:
    token = api.key("shop", "send,read")
    keys = KeyStore(api.db)
    granted = keys.update("shop", actor="ops-alice", grant=["MyBank", "MyBank"])
    assert granted.allowed_senders == ("MyBank",)
    created = v1_send(api, token, "MyBank")
    assert created.status_code == 201, created.text
    assert sender_of(api, created.json()["id"]) == "MyBank"
    assert dropin_send(api, "shop", token, "MyBank").startswith("ID:")
    # With grants that leave the default out, no sender asked means the first grant.
    assert sender_of(api, v1_send(api, token, None).json()["id"]) == "MyBank"
    assert v1_send(api, token, DEFAULT).status_code == 201

    keys.update("shop", actor="ops-alice", revoke=["MyBank"])
    assert error_of(v1_send(api, token, "MyBank"))["code"] == "sender_not_allowed"
    assert dropin_send(api, "shop", token, "MyBank") == "ERR:INVALID_REQUEST"
    with api.db.transaction() as session:
        assert session.scalars(select(ApiKey.allowed_senders)).one() is None
        actions = session.scalars(
            select(OperatorAction)
            .where(OperatorAction.action == "keys.update")
            .order_by(OperatorAction.id)
        ).all()
    assert [(a.actor, a.target, a.affected) for a in actions] == [("ops-alice", "shop", 1)] * 2
    details = [json.loads(a.detail or "{}") for a in actions]
    shop = {"scopes": ["read", "send"]}
    assert details == [
        {"before": shop | {"allowed_senders": []}, "after": shop | {"allowed_senders": ["MyBank"]}},
        {"before": shop | {"allowed_senders": ["MyBank"]}, "after": shop | {"allowed_senders": []}},
    ]


def test_rescoping_a_key_takes_effect_on_its_next_request(api: Api) -> None:
    token = api.key("shop", "send,read")
    assert v1_send(api, token, None).status_code == 201
    KeyStore(api.db).update("shop", actor="ops-alice", scopes="read")
    with api.db.transaction() as session:
        assert session.scalars(select(ApiKey.scopes)).one() == "read"
    refused = v1_send(api, token, None)
    assert refused.status_code == 403
    assert error_of(refused)["code"] == "forbidden"
    assert dropin_send(api, "shop", token, None) == "ERR:LOGIN_INVALID"
    assert api.request("GET", "/v1/jobs", token).status_code == 200
