"""The operator dashboard over real HTTP (uvicorn in a thread, httpx) on SQLite and PostgreSQL.

Jobs are sent through the simulator over real HTTP by the service in this
process, so the pages show real attempts, replies and histories.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from markupsafe import escape
from sqlalchemy import select, update

from dispatcher.api import create_app
from dispatcher.api.server import ServerThread
from dispatcher.dashboard import queries
from dispatcher.domain import cursors
from dispatcher.domain.statuses import RecipientStatus
from dispatcher.errors import ConfigurationError, InvalidOptionError, answer_for
from dispatcher.gateway.simulator import GatewaySimulator
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import (
    Job,
    OperatorAction,
    Recipient,
    StatsMinute,
    StatusCount,
    WorkerHeartbeat,
)
from dispatcher.service.dispatcher import Dispatcher
from dispatcher.service.keys import KeyStore
from support.numbers import number
from support.reads import recipients_of
from support.refusals import REFUSALS, refuse_with
from support.settings import make_service

T = TypeVar("T")

OPERATOR_PASSWORD = "correct horse battery staple 42"
SESSION_SECRET = "s" * 16 + secrets.token_hex(16)
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
NEXT = re.compile(r'<a href="([^"]+)" rel="next">')


@dataclass
class Dash:
    """A dashboard on a service of its own, and a browser-like client for it."""

    client: httpx.Client
    service: Dispatcher
    sim: GatewaySimulator

    def csrf(self, path: str = "/") -> str:
        """The CSRF token in the forms of the page at ``path``."""
        page = self.client.get(path)
        match = CSRF.search(page.text)
        assert match, f"no CSRF token on {path}: {page.status_code}"
        return match.group(1)

    def login(self, secret: str = OPERATOR_PASSWORD) -> int:
        """Log in with ``secret``; the login POST's status (303 on success)."""
        token = self.csrf("/login")
        answer = self.client.post(
            "/login", data={"secret": secret, "csrf": token}, follow_redirects=False
        )
        return answer.status_code

    def post(self, path: str, **data: str) -> int:
        """POST a dashboard form with the session's CSRF token; the status (303: done)."""
        answer = self.client.post(path, data={"csrf": self.csrf(), **data}, follow_redirects=False)
        return answer.status_code


@pytest.fixture
def dash(database: Database, simulator: GatewaySimulator, tmp_path: Path) -> Iterator[Dash]:
    """The whole app on ``database``, with an operator password and a session secret."""
    service = make_service(
        database,
        simulator,
        tmp_path,
        operator_password=OPERATOR_PASSWORD,
        session_secret=SESSION_SECRET,
        max_attempts=1,
    )
    with (
        ServerThread(create_app(service)) as server,
        httpx.Client(base_url=server.base_url, timeout=30.0, follow_redirects=True) as client,
    ):
        yield Dash(client, service, simulator)
    service.close()


def _job_with_outcomes(dash: Dash, *numbers: str, **options: object) -> str:
    """Enqueue a job to ``numbers`` and send it through the simulator; its id."""
    result = dash.service.enqueue(list(numbers), "Your code is 123456", **options)  # type: ignore[arg-type]
    dash.service.dispatch_due()
    return result.job_id


def next_link(page: str) -> str | None:
    """The path of a listing's "Next" link, or None on its last page."""
    match = NEXT.search(page)
    return html.unescape(match.group(1)) if match else None


def test_pages_need_a_login(dash: Dash) -> None:
    answer = dash.client.get("/jobs/whatever?after=x", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=%2Fjobs%2Fwhatever"
    assert dash.client.get("/").url.path == "/login"


def test_login_with_the_password_and_logout(dash: Dash) -> None:
    assert dash.login("wrong password") == 401
    assert dash.client.get("/", follow_redirects=False).status_code == 303

    assert dash.login() == 303
    page = dash.client.get("/")
    assert page.status_code == 200
    assert "Overview" in page.text
    assert "operator" in page.text
    cookie = dash.client.cookies.get("dispatcher_session") or ""
    assert OPERATOR_PASSWORD not in cookie
    assert "correct" not in cookie

    assert dash.post("/logout") == 303
    assert dash.client.get("/", follow_redirects=False).status_code == 303


def test_login_with_an_operate_key_only(dash: Dash) -> None:
    keys = KeyStore(dash.service.db)
    ops_token, _ = keys.create("ops-alice", "operate", actor="test")
    read_token, _ = keys.create("reader", "read", actor="test")

    assert dash.login(read_token) == 401
    assert dash.login(ops_token) == 303
    page = dash.client.get("/")
    assert page.status_code == 200
    assert "ops-alice" in page.text
    assert ops_token not in page.text

    assert dash.post("/pause", reason="key test") == 303
    [action] = _actions(dash, "pause")
    assert action.actor == "dashboard:ops-alice"

    # Revoking the key ends its sessions at once.
    keys.revoke("ops-alice", actor="test")
    assert dash.client.get("/", follow_redirects=False).status_code == 303


def test_session_cookie_is_signed_and_http_only(dash: Dash) -> None:
    token = dash.csrf("/login")
    answer = dash.client.post(
        "/login", data={"secret": OPERATOR_PASSWORD, "csrf": token}, follow_redirects=False
    )
    set_cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in set_cookie
    assert "samesite=lax" in set_cookie
    assert "secure" not in set_cookie  # plain http here; https sets it
    value = dash.client.cookies["dispatcher_session"]
    payload, signature = value.split(".")
    dash.client.cookies.clear()
    dash.client.cookies.set("dispatcher_session", payload + "." + signature[::-1])
    assert dash.client.get("/", follow_redirects=False).status_code == 303


def test_failed_logins_are_slowed_and_logged_without_the_secret(
    dash: Dash, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dispatcher")
    # Five free failures; the sixth makes the next try wait (doubling from 2 s).
    guesses = [f"guess-number-{i}" for i in range(6)]
    for guess in guesses:
        assert dash.login(guess) == 401
    assert dash.login(OPERATOR_PASSWORD) == 429  # even the right one, for a while
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "dashboard login failed" in logged
    assert not any(guess in logged for guess in guesses)
    assert OPERATOR_PASSWORD not in logged


def test_posts_without_the_csrf_token_are_refused(dash: Dash) -> None:
    assert dash.login() == 303
    missing = dash.client.post("/pause", data={"reason": "x"}, follow_redirects=False)
    wrong = dash.client.post(
        "/pause", data={"reason": "x", "csrf": "forged"}, follow_redirects=False
    )
    for answer in (missing, wrong):
        assert answer.status_code == 403
        assert "CSRF" in answer.text
    assert dash.service.control()["paused"] is False
    login = dash.client.post("/login", data={"secret": OPERATOR_PASSWORD}, follow_redirects=False)
    assert login.status_code == 403


def test_hostile_text_and_reference_are_escaped(dash: Dash) -> None:
    reference = "<script>alert('ref')</script>"
    text = '<img src=x onerror="alert(1)"> & "quotes"'
    job_id = dash.service.enqueue([number(1)], text, reference=reference).job_id
    assert dash.login() == 303

    page = dash.client.get(f"/jobs/{job_id}").text
    assert "<script>alert" not in page
    assert "<img src=x" not in page
    assert str(escape(reference)) in page
    assert str(escape(text)) in page
    found = dash.client.get("/search", params={"q": reference}).text
    assert f"/jobs/{job_id}" in found
    assert "<script>alert" not in found
    # The message text shows on the job page only.
    assert "onerror" not in found


@pytest.mark.parametrize(
    "typed",
    ["07700 900001", "+44 7700 900001", "0044 7700 900001", "447700900001", "(07700) 900-001"],
)
def test_search_finds_a_number_in_any_format(dash: Dash, typed: str) -> None:
    job_id = _job_with_outcomes(dash, number(1), number(2))
    other = _job_with_outcomes(dash, number(2))
    assert dash.login() == 303
    page = dash.client.get("/search", params={"q": typed})
    assert page.status_code == 200
    assert "447700900001" in page.text
    assert f'href="/jobs/{job_id}"' in page.text
    assert f'href="/jobs/{other}"' not in page.text


def test_search_by_job_id_reference_and_gateway_id(dash: Dash) -> None:
    job_id = _job_with_outcomes(dash, number(1), reference="order-77")
    [recipient] = recipients_of(dash.service.db, job_id)
    assert recipient.gateway_message_id
    assert dash.login() == 303
    for query in (job_id, job_id.lower(), "order-77", recipient.gateway_message_id):
        page = dash.client.get("/search", params={"q": query}).text
        assert f'href="/jobs/{job_id}"' in page, query
    nothing = dash.client.get("/search", params={"q": "no-such-thing"}).text
    assert "Nothing matches" in nothing


def test_job_page_shows_why_a_recipient_failed(dash: Dash) -> None:
    dash.sim.configure(number_rules={number(2): "INVALID_NUMBER"})
    # Just due (a send time a moment ago), high priority, valid for an hour.
    send_at = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=30)
    job_id = _job_with_outcomes(
        dash,
        number(1),
        number(2),
        "not a number",
        reference="r-1",
        send_at=send_at,
        priority="high",
        valid_for_s=3600,
    )
    assert dash.login() == 303
    page = dash.client.get(f"/jobs/{job_id}").text

    sent, failed = recipients_of(dash.service.db, job_id)[:2]
    assert sent.gateway_message_id
    assert sent.gateway_message_id in page
    assert "INVALID_NUMBER" in page
    assert "refused at enqueue" in page
    assert 'id="priority">high<' in page
    shown = "%Y-%m-%d %H:%M:%S UTC"
    assert f'id="send-at">{send_at.strftime(shown)}<' in page
    with dash.service.db.transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.expires_at is not None
        expires_at = job.expires_at
    assert f'id="expires-at">{expires_at.strftime(shown)}<' in page
    assert 'id="credits">2 ' in page  # one part x two accepted recipients
    assert "Your code is 123456" in page
    assert "127.0.0.1" in page  # the attempt's host
    assert f"{failed.number},ERR:INVALID_NUMBER" in page  # the raw multi-line reply
    assert "queued → <strong>submitting</strong>" in page  # the timeline
    # INVALID_NUMBER failed for good: no job-wide button would take it, and the page
    # says why; the row's own Retry names its code.
    assert 'id="retry-failed"' not in page
    assert 'data-reason="permanent"><strong>1</strong> left: failed for good' in page
    assert '<input type="hidden" name="error_code" value="INVALID_NUMBER">' in page


def test_job_page_paginates_its_recipients(dash: Dash) -> None:
    job_id = dash.service.enqueue([number(i) for i in range(250)], "hello").job_id
    assert dash.login() == 303
    first = dash.client.get(f"/jobs/{job_id}").text
    # Pages are reached by the "Next" link's cursor now, not ?page=3.
    second = dash.client.get(str(next_link(first))).text
    last = dash.client.get(str(next_link(second))).text
    assert first.count('class="recipient"') == queries.JOB_PAGE_SIZE
    assert 'rel="next"' in first
    assert last.count('class="recipient"') == 50
    assert 'rel="next"' not in last
    assert f'<a href="/jobs/{job_id}" rel="first">' in last
    assert dash.client.get(f"/jobs/{job_id}", params={"after": "x"}).status_code == 400
    assert dash.client.get("/jobs/01ZZZZZZZZZZZZZZZZZZZZZZZZ").status_code == 404


def _pages(read: Callable[[str | None], queries.Page[T]]) -> list[list[T]]:
    """Every page of a listing, from the first, following each page's cursor."""
    pages: list[list[T]] = []
    after: str | None = None
    while True:
        page = read(after)
        assert page.first is (after is None)
        pages.append(page.items)
        if page.next is None:
            return pages
        after = page.next


def _tie(db: Database, at: dt.datetime) -> None:
    """Give the recipients two times only, ``at`` and a second before it, alternately by
    id: many rows share each time, and a larger id is not always a later time."""
    with db.transaction() as session:
        session.execute(update(Recipient).values(created_at=at, updated_at=at))
        earlier = at - dt.timedelta(seconds=1)
        session.execute(
            update(Recipient)
            .where(Recipient.id % 2 == 0)
            .values(created_at=earlier, updated_at=earlier)
        )


def test_keyset_pages_show_every_row_once_when_times_tie(dash: Dash) -> None:
    """Each listing, followed cursor by cursor from its first page to its last, shows
    every row exactly once and in its order, although the rows share two times between
    them (the id breaks a tie); every page but the last is full."""
    db, size = dash.service.db, queries.PAGE_SIZE
    big = dash.service.enqueue([number(i) for i in range(1, 108)], "hi").job_id
    small = [dash.service.enqueue([number(1)], "hi").job_id for _ in range(size + 6)]
    _tie(db, dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC))
    with db.transaction() as session:
        session.add_all(
            OperatorAction(at=dt.datetime(2026, 3, 1, tzinfo=dt.UTC), actor="t", action=f"a{i}")
            for i in range(size + 3)
        )
    by_id = {r.id: r for job in [big, *small] for r in recipients_of(db, job)}

    def check(pages: list[list[int]], expected: list[int], page_size: int) -> None:
        assert [len(p) for p in pages[:-1]] == [page_size] * (len(pages) - 1)
        assert 0 < len(pages[-1]) <= page_size
        assert [i for p in pages for i in p] == expected

    def job_recipients(after: str | None) -> queries.Page[queries.RecipientDetail]:
        data = queries.job_page(db, big, after=after)
        assert data is not None
        return data.recipients

    job = _pages(job_recipients)
    job_ids = [[d.recipient.id for d in p] for p in job]
    check(job_ids, sorted(r.id for r in recipients_of(db, big)), queries.JOB_PAGE_SIZE)

    newest_first = sorted(by_id, key=lambda i: (by_id[i].updated_at, i), reverse=True)
    assert newest_first != sorted(by_id, reverse=True)
    listed = _pages(
        lambda after: queries.recipients(db, queries.RecipientQuery("queued"), after=after)
    )
    check([[r.id for r in p] for p in listed], newest_first, size)

    found = _pages(lambda after: queries.search(db, number(1), region="GB", after=after).recipients)
    check(
        [[r.id for r in p] for p in found],
        [i for i in newest_first if by_id[i].number == number(1)],
        size,
    )
    assert len(found) == 2

    acted = _pages(lambda after: queries.actions(db, after=after))
    with db.transaction() as session:
        every_action = list(session.scalars(select(OperatorAction.id)))
    check([[a.id for a in p] for p in acted], sorted(every_action, reverse=True), size)

    # Over HTTP, by the links: the search by number names each job once.
    assert dash.login() == 303
    path: str | None = "/search?" + str(httpx.QueryParams({"q": number(1)}))
    seen: list[str] = []
    while path is not None:
        page = dash.client.get(path).text
        seen += re.findall(r'class="job-link">([0-9A-Z]{26})<', page)
        path = next_link(page)
    assert sorted(seen) == sorted([big, *small])
    assert 'rel="first">' in page


def test_a_cursor_not_of_the_listing_is_400(dash: Dash) -> None:
    """A cursor that is not one of the listing's (made up, cut short, of another
    listing, or past any calendar) is a 400 with the reason, never a 500."""
    job_id = dash.service.enqueue([number(1)], "hi").job_id
    assert dash.login() == 303
    someone_elses = cursors.encode_id("a1", 5)
    for path in ("/actions", "/recipients", f"/jobs/{job_id}", "/search?q=1&"):
        base = path + ("" if path.endswith("&") else "?")
        for bad in (
            "x",
            "not base64 !",
            cursors.encode("zz", "1"),
            cursors.encode("l1", "9999-99-99", "1"),
            cursors.encode("r1", "1" * 40),
            someone_elses if "actions" not in path else cursors.encode_id("r1", 5),
            "A" * 5000,
        ):
            answer = dash.client.get(base + str(httpx.QueryParams({"after": bad})))
            assert answer.status_code == 400, (path, bad, answer.status_code)
            assert "cursor is not one this dispatcher gave out" in answer.text
        assert dash.client.get(base + "after=").status_code == 200  # empty: the first page


def test_retry_from_the_job_page(dash: Dash) -> None:
    dash.sim.configure(number_rules={number(2): "INVALID_NUMBER"})
    job_id = _job_with_outcomes(dash, number(1), number(2))
    assert dash.login() == 303
    dash.sim.configure(number_rules={})

    # The row's own Retry button names its code (the form's hidden error_code).
    assert (
        dash.post(
            f"/jobs/{job_id}/retry", status="failed", number=number(2), error_code="INVALID_NUMBER"
        )
        == 303
    )
    dash.service.dispatch_due()
    statuses = {r.number: r.status for r in recipients_of(dash.service.db, job_id)}
    assert statuses == {number(1): "sent", number(2): "sent"}
    [action] = _actions(dash, "retry")
    assert action.actor == "dashboard:operator"
    assert action.affected == 1
    page = dash.client.get(f"/jobs/{job_id}").text
    assert "operator retry (was failed; code INVALID_NUMBER named)" in page


def test_bulk_retry_says_how_many_it_touches(dash: Dash) -> None:
    dash.sim.configure(number_rules={number(1): "INVALID_NUMBER", number(2): "INVALID_NUMBER"})
    first = _job_with_outcomes(dash, number(1), number(3))
    second = _job_with_outcomes(dash, number(2))
    assert dash.login() == 303

    listing = dash.client.get("/recipients", params={"status": "failed"}).text
    assert listing.count(f'href="/jobs/{first}"') == 1
    assert listing.count(f'href="/jobs/{second}"') == 1
    # INVALID_NUMBER failed for good: the page counts what the button will retry, 0,
    # and says why the two stay; naming the code takes them.
    confirm = dash.client.get(
        "/recipients/confirm", params={"action": "retry", "status": "failed"}
    ).text
    assert "This touches <strong>0</strong>" in confirm
    assert 'data-reason="permanent"><strong>2</strong> left: failed for good' in confirm
    named = dash.client.get(
        "/recipients/confirm",
        params={"action": "retry", "status": "failed", "error_code": "INVALID_NUMBER"},
    ).text
    assert "This touches <strong>2</strong>" in named
    none = dash.client.get(
        "/recipients/confirm",
        params={"action": "retry", "status": "failed", "error_code": "GATEWAY_ERROR"},
    ).text
    assert "This touches <strong>0</strong>" in none
    future = dash.client.get(
        "/recipients/confirm",
        params={"action": "retry", "status": "failed", "since": "2999-01-01"},
    ).text
    assert "This touches <strong>0</strong>" in future
    bad = dash.client.get("/recipients", params={"status": "failed", "since": "yesterday"})
    assert bad.status_code == 422  # a ValidationError, as in /v1 (dispatcher.errors.ANSWERS)
    assert "since must be" in bad.text

    assert dash.post("/recipients/retry", status="failed", error_code="INVALID_NUMBER") == 303
    statuses = [r.status for j in (first, second) for r in recipients_of(dash.service.db, j)]
    assert statuses.count(RecipientStatus.QUEUED) == 2
    [action] = _actions(dash, "retry")
    assert action.affected == 2
    assert action.actor == "dashboard:operator"


def test_unknown_needs_the_double_send_confirmation(dash: Dash) -> None:
    dash.sim.configure(drop_after_accept_rate=1.0)
    job_id = _job_with_outcomes(dash, number(1))
    assert [r.status for r in recipients_of(dash.service.db, job_id)] == ["unknown"]
    assert dash.login() == 303
    confirm = dash.client.get(
        "/recipients/confirm", params={"action": "retry", "status": "unknown"}
    ).text
    assert "may send them twice" in confirm
    assert 'name="confirm_unknown"' in confirm

    refused = dash.client.post(
        f"/jobs/{job_id}/retry",
        data={"csrf": dash.csrf(), "status": "unknown"},
        follow_redirects=False,
    )
    assert refused.status_code == 409
    assert "twice" in refused.text
    assert dash.post("/recipients/retry", status="unknown", confirm_unknown="yes") == 303
    assert [r.status for r in recipients_of(dash.service.db, job_id)] == ["queued"]


def test_refusals_answer_with_the_tables_status(
    dash: Dash, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The service refusing with each of the exceptions /v1's tests raise: an error page
    with the table's status (a validation error is a 422, as in /v1) and the reason; a
    server fault's reason goes to the log, not the page."""
    job_id = dash.service.enqueue([number(1)], "hi").job_id
    assert dash.login() == 303
    caplog.set_level(logging.INFO)
    for refusal in REFUSALS:
        monkeypatch.setattr(dash.service, "retry", refuse_with(refusal))
        answer = dash.client.post(
            f"/jobs/{job_id}/retry",
            data={"csrf": dash.csrf(), "status": "failed"},
            follow_redirects=False,
        )
        assert answer.status_code == answer_for(refusal).status, (refusal, answer.text)
        assert answer.headers["content-type"].startswith("text/html")
        if answer.status_code < 500:
            assert str(escape(str(refusal))) in answer.text
        else:
            assert "secret-host" not in answer.text
    assert answer_for(InvalidOptionError("")).status == 422
    faults = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert [type(fault) for fault in faults] == [ConfigurationError]


def test_bulk_cancel_of_waiting_recipients(dash: Dash) -> None:
    job_id = dash.service.enqueue([number(1), number(2)], "later").job_id
    assert dash.login() == 303
    confirm = dash.client.get(
        "/recipients/confirm", params={"action": "cancel", "status": "queued"}
    ).text
    assert "This touches <strong>2</strong>" in confirm
    refused = dash.client.get(
        "/recipients/confirm", params={"action": "cancel", "status": "failed"}
    )
    assert refused.status_code == 400
    assert dash.post("/recipients/cancel", status="queued") == 303
    assert {r.status for r in recipients_of(dash.service.db, job_id)} == {"cancelled"}


def test_pause_shows_a_banner_until_resumed(dash: Dash) -> None:
    assert dash.login() == 303
    assert dash.post("/pause", reason="gateway <maintenance>") == 303
    page = dash.client.get("/").text
    assert 'id="paused-banner"' in page
    assert "gateway &lt;maintenance&gt;" in page
    assert "dashboard:operator" in page
    assert dash.service.control()["paused"] is True

    assert dash.post("/resume") == 303
    page = dash.client.get("/").text
    assert 'id="paused-banner"' not in page
    assert dash.service.control()["paused"] is False
    actions = dash.client.get("/actions").text
    assert actions.index(">resume<") < actions.index(">pause<")  # newest first


def test_overview_shows_the_counts_and_state(dash: Dash) -> None:
    assert dash.login() == 303
    page = dash.client.get("/")
    assert page.status_code == 200
    for status in RecipientStatus:
        assert f'id="count-{status}"' in page.text
    assert 'id="breaker-state"' in page.text
    assert "closed" in page.text
    assert 'id="export-csv"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_overview_draws_the_rollups_and_workers(dash: Dash) -> None:
    beat = dt.datetime.now(dt.UTC)
    now = beat.replace(second=0, microsecond=0)
    with dash.service.db.transaction() as session:
        session.add_all(
            [
                StatsMinute(bucket_at=now - dt.timedelta(minutes=5), name="recipients",
                            label="sent", value=7),
                StatsMinute(bucket_at=now - dt.timedelta(minutes=5), name="error_code",
                            label="GATEWAY_ERROR", value=3),
                StatsMinute(bucket_at=now - dt.timedelta(minutes=5), name="latency_ms",
                            label="250", value=10),
                StatusCount(status="sent", recipients=1234, computed_at=now),
                # Heartbeats at the real time: ``now`` is floored to the minute for
                # the rollup buckets, which may be older than the staleness limit.
                WorkerHeartbeat(name="w-fresh", hostname="h1", pid=1, queues="q",
                                started_at=now, seen_at=beat, consumed_at=beat, batches=5),
                WorkerHeartbeat(name="w-stuck", hostname="h3", pid=3, queues="q",
                                started_at=now - dt.timedelta(hours=2), seen_at=beat,
                                consumed_at=now - dt.timedelta(hours=1), batches=0),
                WorkerHeartbeat(name="w-old", hostname="h2", pid=2, queues="q",
                                started_at=now - dt.timedelta(hours=2),
                                seen_at=now - dt.timedelta(hours=1), batches=1),
            ]
        )  # fmt: skip
    assert dash.login() == 303
    page = dash.client.get("/").text
    assert 'id="count-sent">1234<' in page
    assert "7 sent</title>" in page
    assert "GATEWAY_ERROR: 3</title>" in page
    assert "p50 250 ms" in page
    # Workers are listed most recently seen first: the two fresh ones, then the old one.
    fresh, stuck, old = page.index("w-fresh"), page.index("w-stuck"), page.index("w-old")
    assert max(fresh, stuck) < old
    rows = {name: page[at : page.index("</tr>", at)] for name, at in
            [("fresh", fresh), ("stuck", stuck), ("old", old)]}  # fmt: skip
    assert '"good">alive, consuming<' in rows["fresh"]
    assert '"bad">alive, not consuming<' in rows["stuck"]
    assert '"bad">stale<' in rows["old"]


def test_no_secret_in_any_page(dash: Dash, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token, _ = KeyStore(dash.service.db).create("ops", "operate", actor="test")
    job_id = _job_with_outcomes(dash, number(1))
    assert dash.login(token) == 303
    assert dash.post("/pause", reason="check") == 303
    secrets_ = [
        token,
        OPERATOR_PASSWORD,
        SESSION_SECRET,
        dash.sim.config().password,
    ]
    seen = []
    for path in (
        "/",
        "/login",
        f"/jobs/{job_id}",
        f"/search?q={number(1)}",
        "/recipients?status=failed",
        "/actions",
        "/nowhere",
    ):
        answer = dash.client.get(path)
        seen.append(answer.text + str(answer.headers) + str(dash.client.cookies))
    seen.append("\n".join(r.getMessage() for r in caplog.records))
    for secret in secrets_:
        assert not any(secret in text for text in seen)


def _actions(dash: Dash, action: str) -> list[OperatorAction]:
    with dash.service.db.transaction() as session:
        return list(
            session.execute(select(OperatorAction).where(OperatorAction.action == action)).scalars()
        )


def test_export_buttons_stream_the_audit_and_audit_the_export(dash: Dash) -> None:
    dash.sim.configure(number_rules={number(2): "INVALID_NUMBER"})
    job_id = _job_with_outcomes(dash, number(1), number(2))
    assert dash.login() == 303

    overview = dash.client.get("/").text
    assert 'action="/export.csv"' in overview
    national = "0" + number(2)[2:]
    search = dash.client.get("/search", params={"q": national}).text
    assert f'name="number" value="{number(2)}"' in search
    assert f'name="job" value="{job_id}"' in dash.client.get(f"/jobs/{job_id}").text

    def export(**form: str) -> httpx.Response:
        return dash.client.post("/export.csv", data={"csrf": dash.csrf(), **form})

    # Without the session's CSRF token (a cross-site form): refused, nothing audited.
    forged = dash.client.post("/export.csv", data={"csrf": "forged", "number": national})
    assert forged.status_code == 403
    assert _actions(dash, "export") == []

    by_number = export(number=national)
    assert by_number.status_code == 200
    assert by_number.headers["content-type"].startswith("text/csv")
    lines = by_number.text.splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
    assert rows, by_number.text
    numbers = {row[header.index("number")] for row in rows}
    assert numbers == {number(2)}
    assert "INVALID_NUMBER" in by_number.text
    assert "123456" not in by_number.text  # the message text never leaves the job page

    now = dt.datetime.now(dt.UTC)
    by_range = export(
        since=(now - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
        until=(now + dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M"),
        kind="recipients",
    )
    assert by_range.status_code == 200
    assert {number(1), number(2)} <= set(by_range.text.replace("\r\n", ",").split(","))

    exports = _actions(dash, "export")
    assert [a.actor for a in exports] == ["dashboard:operator", "dashboard:operator"]
    assert all(number(2) not in (a.detail or "") for a in exports)

    # ValidationErrors: 422, as in /v1 (dispatcher.errors.ANSWERS).
    assert export().status_code == 422  # nothing to export named
    assert export(since="yesterday").status_code == 422
    assert export(job="0" * 26).status_code == 404
