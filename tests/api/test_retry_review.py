"""Review of the operator-retry commit (issue 16, item 1): the API's side."""

from __future__ import annotations

import pytest

from dispatcher.gateway.simulator import GatewaySimulator
from support.numbers import number

from .test_api import api_factory as api_factory  # the fixture
from .test_api import create_job
from .test_tenancy import Tenants
from .test_tenancy import tenants as tenants  # the fixture

pytestmark = pytest.mark.services


def test_a_dry_runs_held_back_sample_does_not_reveal_other_keys_volume(
    tenants: Tenants, simulator: GatewaySimulator
) -> None:
    """The held_back sample lists each recipient by its internal, database-wide id,
    which no other API answer exposes (RecipientView has none) and which a producer
    cannot match to a number. Ids are one sequence across every key, so two of alice's
    dry runs tell her how many recipients other keys enqueued in between."""
    simulator.configure(number_rules={number(1): "INVALID_NUMBER", number(2): "INVALID_NUMBER"})
    first = create_job(tenants.api, tenants.alice, to=[number(1)], text="a")["id"]
    create_job(tenants.api, tenants.bob, to=[number(10 + i) for i in range(37)], text="b")
    second = create_job(tenants.api, tenants.alice, to=[number(2)], text="a")["id"]
    tenants.api.service.dispatch_due(worker="test")

    ids = []
    for job in (first, second):
        answer = tenants.post(f"/v1/jobs/{job}/retry", tenants.alice, dry_run=True)
        assert answer.status_code == 200, answer.text
        [listed] = answer.json()["held_back"]["permanent"]["sample"]
        ids.append(listed.get("id"))
    assert None in ids or ids[1] - ids[0] - 1 != 37, (
        f"alice's own sample ids {ids} count bob's 37 recipients between her jobs"
    )
