"""A deliberately broken build for the soak's own test (tests/system/test_soak.py):
on PYTHONPATH, every dispatcher process treats a lost reply (NO_REPLY, the gateway
may have sent) as a transient error and submits the recipients again, the defect
the guarantee "nothing sent twice" exists to rule out."""

from __future__ import annotations

import dataclasses
from typing import Any

from dispatcher.gateway import client
from dispatcher.gateway.protocol import Outcome

_submit = client.GatewayClient.submit


def _retrying_lost_replies(self: client.GatewayClient, *args: Any, **kwargs: Any) -> Any:
    submission = _submit(self, *args, **kwargs)
    outcomes = [
        dataclasses.replace(o, outcome=Outcome.TRANSIENT, error_code="GATEWAY_ERROR")
        if o.outcome is Outcome.AMBIGUOUS
        else o
        for o in submission.outcomes
    ]
    return dataclasses.replace(submission, outcomes=outcomes)


client.GatewayClient.submit = _retrying_lost_replies  # type: ignore[method-assign]
