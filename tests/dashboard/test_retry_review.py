"""Review of the operator-retry commit (issue 16, item 1): the dashboard's side."""

from __future__ import annotations

import re
import time

from support.numbers import number
from support.reads import recipients_of

from .test_dashboard import Dash
from .test_dashboard import dash as dash  # the fixture

RENEW_FORM = re.compile(r'<form[^>]*id="renew-unknown"[^>]*>(.*?)</form>', re.S)
HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


def test_the_renewal_form_offered_for_expired_unknown_recipients_renews_them(dash: Dash) -> None:
    """The job page offers "Retry failed with a new validity" when the *unknown*
    recipients' validity ended (job.html tests plans["unknown"] too), but the form
    hard-codes status=failed and has no "may send twice" box: submitting it as offered
    retries none of them, and nothing on the page can."""
    dash.sim.configure(drop_after_accept_rate=1.0)
    job_id = dash.service.enqueue([number(1)], "Your code is 123456", valid_for_s=1.0).job_id
    dash.service.dispatch_due()
    dash.sim.configure(drop_after_accept_rate=0.0)
    assert [r.status for r in recipients_of(dash.service.db, job_id)] == ["unknown"]
    time.sleep(1.2)
    assert dash.login() == 303

    page = dash.client.get(f"/jobs/{job_id}").text
    form = RENEW_FORM.search(page)
    assert form, "the page offers a renewal for the unknown recipient whose validity ended"
    fields = {k: v for k, v in HIDDEN.findall(form.group(1)) if k != "csrf"}
    # The form asks for the double-send confirmation, as every unknown retry does.
    assert 'name="confirm_unknown" value="yes" required' in form.group(1)
    fields["confirm_unknown"] = "yes"
    answer = dash.client.post(
        f"/jobs/{job_id}/retry",
        data={"csrf": dash.csrf(f"/jobs/{job_id}"), **fields, "valid_for_s": "300"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert "n=0" not in answer.headers["location"], (
        f"the offered renewal retried nothing: {answer.headers['location']}"
    )
