"""The dashboard in a real browser: Debian's headless Chromium driven by playwright.

The whole pipeline runs for real: PostgreSQL, Redis, a ``dispatcher worker``
process, the gateway simulator over HTTP and a ``dispatcher serve`` process.
An operator who has never seen the project logs in, finds a failed SMS by the
number as they would type it, sees why it failed, retries it and watches it
become sent; then pauses dispatch, sees the banner and resumes. A screenshot of
each step goes to ``test-artifacts/dashboard/``.

Playwright's own browser downloads are never used (``playwright install`` is
not run): ``scripts/test`` installs the distribution's ``chromium``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright

from support.numbers import number
from support.pipeline import Pipeline
from support.polling import wait_until
from support.reads import recipients_of

pytestmark = [pytest.mark.services, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
OPERATOR_PASSWORD = "browser-test-operator-password"
STEP_TIMEOUT_MS = 20_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless; a missing binary fails the test (never a skip)."""
    assert os.access(CHROMIUM, os.X_OK), (
        f"{CHROMIUM} is missing: `apt-get install -y chromium` (scripts/test does it)"
    )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def dashboard_url(pipeline: Pipeline, tmp_path: Path) -> Iterator[str]:
    """A ``dispatcher serve`` process on the pipeline's database; its base URL."""
    port = _free_port()
    env = pipeline.env.with_vars(
        operator_password=OPERATOR_PASSWORD, session_secret="x" * 40, api_rate_per_s="0"
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "serve", "--port", str(port)],
            env=env.process_env(),
            cwd=tmp_path,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        assert server.poll() is None, log_path.read_text()
        try:
            return requests.get(base_url + "/login", timeout=5).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_until(answering, 30, interval_s=0.1, message="dispatcher serve to answer")
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)
        assert OPERATOR_PASSWORD not in log_path.read_text(errors="replace")


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_operator_finds_retries_and_resumes(
    pipeline: Pipeline, dashboard_url: str, browser: Browser
) -> None:
    failing, fine = number(123), number(124)
    pipeline.sim.configure(number_rules={failing: "INVALID_NUMBER"})
    pipeline.start_workers(1)
    job_id = pipeline.enqueue([failing, fine], "Your code is 4242", reference="shop-1").job_id
    pipeline.wait_for(job_id)
    assert {r.number: r.status for r in recipients_of(pipeline.db, job_id)} == {
        failing: "failed",
        fine: "sent",
    }

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(STEP_TIMEOUT_MS)
    page = context.new_page()
    try:
        # Log in: every page sends a stranger to the login form first.
        page.goto(dashboard_url + "/")
        expect(page).to_have_url(dashboard_url + "/login?next=%2F")
        _shot(page, "01-login")
        page.fill("#secret", OPERATOR_PASSWORD)
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_have_text("Overview")
        expect(page.locator("header .who")).to_have_text("operator")
        _shot(page, "02-overview")

        # Search the number as a person in the UK would type it.
        page.fill("header input[name=q]", "07700 900123")
        page.press("header input[name=q]", "Enter")
        expect(page.locator("#interpreted")).to_contain_text(failing)
        expect(page.locator("#search-recipients")).to_contain_text("failed")
        _shot(page, "03-search")
        page.click(f"a.job-link[href='/jobs/{job_id}']")

        # The job page says it failed, and why.
        row = page.locator(f"tr.recipient[data-number='{failing}']")
        expect(row.locator(".rstatus")).to_contain_text("failed")
        expect(row.locator(".rerror")).to_contain_text("INVALID_NUMBER")
        expect(page.locator("#reference")).to_have_text("shop-1")
        expect(page.locator("#message-text")).to_have_text("Your code is 4242")
        expect(page.locator("#attempts")).to_contain_text(f"{failing},ERR:INVALID_NUMBER")
        # INVALID_NUMBER failed for good: no job-wide Retry button would take it, and
        # the page says so; the row's own button names the code and does.
        expect(page.locator("#retry-failed")).to_have_count(0)
        expect(page.locator(".retry-left [data-reason=permanent]")).to_contain_text(
            "1 left: failed for good"
        )
        _shot(page, "04-job-failed")

        # The bulk confirmation counts what its button retries, and why the rest stays.
        page.goto(dashboard_url + "/recipients?status=failed")
        page.click("#bulk-retry")
        expect(page.locator("#confirm-count")).to_contain_text("This touches 0 recipient(s)")
        expect(page.locator(".retry-left [data-reason=permanent]")).to_contain_text("1 left")
        expect(page.locator("#confirm-button")).to_have_count(0)
        _shot(page, "04b-confirm-retry")
        page.goto(
            dashboard_url
            + "/recipients/confirm?action=retry&status=failed&error_code=INVALID_NUMBER"
        )
        expect(page.locator("#confirm-count")).to_contain_text("This touches 1 recipient(s)")
        page.goto(dashboard_url + f"/jobs/{job_id}")

        # The gateway takes the number now; retry it and watch it go out.
        pipeline.sim.configure(number_rules={})
        row.locator("button.retry-one").click()
        expect(page.locator(".flash")).to_have_text("1 recipient(s) queued again.")
        # The page reloads itself while the job is in progress.
        expect(row.locator(".rstatus")).to_contain_text("sent")
        expect(page.locator("#job-status")).to_have_text("completed")
        _shot(page, "05-job-sent")
        [retried] = [r for r in recipients_of(pipeline.db, job_id) if r.number == failing]
        assert retried.status == "sent"
        assert retried.gateway_message_id
        expect(row).to_contain_text(retried.gateway_message_id)
        page.set_viewport_size({"width": 390, "height": 844})  # a phone
        _shot(page, "05b-job-sent-phone")
        page.set_viewport_size({"width": 1280, "height": 900})

        # A reply lost after the gateway took it: `unknown`. The vendor's records say it
        # went; the operator settles it as sent with its ID and the reason.
        pipeline.sim.configure(drop_after_accept_rate=1.0)
        lost = pipeline.enqueue([number(125)], "Your code is 7777").job_id
        pipeline.wait_for(lost)
        pipeline.sim.configure(drop_after_accept_rate=0.0)
        [record] = [e for e in pipeline.sim.ledger() if e["number"] == number(125)]
        page.goto(dashboard_url + f"/jobs/{lost}")
        unknown_row = page.locator(f"tr.recipient[data-number='{number(125)}']")
        expect(unknown_row.locator(".rstatus")).to_contain_text("unknown")
        expect(unknown_row.locator(".unknown-age")).to_contain_text("unknown for")
        expect(page.locator("#job-status")).to_have_text("unresolved")
        unknown_row.locator("details.settle summary").click()
        unknown_row.locator("select[name=status]").select_option("sent")
        unknown_row.locator("input[name=gateway_message_id]").fill(record["message_id"])
        unknown_row.locator("input[name=reason]").fill("vendor history shows it delivered")
        _shot(page, "05c-settle")
        unknown_row.locator("button.settle-one").click()
        expect(page.locator(".flash")).to_have_text("1 recipient(s) settled.")
        expect(unknown_row.locator(".rstatus")).to_contain_text("sent")
        expect(page.locator("#job-status")).to_have_text("completed")
        expect(unknown_row).to_contain_text(record["message_id"])
        _shot(page, "05d-settled")

        # Pause with a reason: the banner says why and who; resume ends it.
        page.click("header nav >> text=Overview")
        page.fill("#reason", "gateway maintenance window")
        page.click("#pause-button")
        banner = page.locator("#paused-banner")
        expect(banner).to_contain_text("gateway maintenance window")
        expect(banner).to_contain_text("dashboard:operator")
        expect(page.locator("#dispatch-state")).to_have_text("paused")
        _shot(page, "06-paused")
        assert pipeline.service.control()["paused"] is True
        page.click("#resume-button")
        expect(page.locator(".flash")).to_have_text("Dispatch resumed.")
        expect(banner).to_have_count(0)
        expect(page.locator("#dispatch-state")).to_have_text("running")
        _shot(page, "07-resumed")
        assert pipeline.service.control()["paused"] is False
    except Exception:
        _shot(page, "99-failure")
        raise
    finally:
        context.close()
    pipeline.check_invariants()
