"""The dashboard's unknown recipients (issue 16, item 2): settled from the job page,
acknowledged from their list."""

from __future__ import annotations

from support.numbers import number
from support.reads import recipients_of

from .test_dashboard import Dash, _actions, _job_with_outcomes
from .test_dashboard import dash as dash  # the fixture


def test_an_unknown_recipient_is_settled_from_the_job_page(dash: Dash) -> None:
    dash.sim.configure(drop_after_accept_rate=1.0)
    job_id = _job_with_outcomes(dash, number(1))
    dash.sim.configure(drop_after_accept_rate=0.0)
    assert dash.login() == 303
    page = dash.client.get(f"/jobs/{job_id}").text
    assert 'class="small settle-one"' in page
    assert "unknown for " in page  # its age, beside the buttons that act on it

    # No reason: refused with the reason why, nothing moved.
    assert dash.post(f"/jobs/{job_id}/settle", number=number(1), status="sent") == 422
    assert [r.status for r in recipients_of(dash.service.db, job_id)] == ["unknown"]
    done = dash.post(
        f"/jobs/{job_id}/settle",
        number=number(1),
        status="sent",
        reason="the vendor's history lists it",
        gateway_message_id="GW-77",
    )
    assert done == 303
    [row] = recipients_of(dash.service.db, job_id)
    assert (row.status, row.gateway_message_id) == ("sent", "GW-77")
    [action] = _actions(dash, "settle")
    assert (action.actor, action.affected) == ("dashboard:operator", 1)
    after = dash.client.get(f"/jobs/{job_id}?done=settled&n=1").text
    assert "1 recipient(s) settled." in after
    assert "settled as sent by an operator: the vendor&#39;s history lists it" in after


def test_unknown_recipients_are_acknowledged_from_their_list(dash: Dash) -> None:
    dash.sim.configure(drop_after_accept_rate=1.0)
    job_id = _job_with_outcomes(dash, number(1))
    dash.sim.configure(drop_after_accept_rate=0.0)
    assert dash.login() == 303
    listing = dash.client.get("/recipients", params={"status": "unknown"}).text
    assert 'id="acknowledge-unknown"' in listing
    assert 'id="acknowledge-unknown"' not in dash.client.get("/recipients").text  # failed

    assert dash.post("/recipients/acknowledge") == 303
    [action] = _actions(dash, "acknowledge_unknown")
    assert (action.actor, action.affected) == ("dashboard:operator", 1)
    assert [r.status for r in recipients_of(dash.service.db, job_id)] == ["unknown"]
    done = dash.client.get("/recipients?status=unknown&done=acknowledged&n=1").text
    assert "1 unknown recipient(s) acknowledged: the alert waits for new ones." in done
