"""The pool dashboard (GET /ui) in a real headless Chromium against the running stack.

Chromium is Debian's (``apt-get install chromium``; .ci/run installs it),
driven by Playwright for Python with that executable (Playwright's own browser
downloads are never used). Without Chromium the test skips locally and fails
under CI. The screenshot is saved under the test's tmp dir; its path is printed.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from producer.tokens import TokenStore, make_scope
from tasks.pools import DEFAULT_POOL
from tests.integration.conftest import IDLE_TARGET, Stack
from tests.integration.gateway_proc import running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

ADMIN = "dashboard-test-admin-token"
WAIT_MS = 40_000


def chromium() -> str:
    """Debian's Chromium (WARMPOOL_CHROMIUM overrides); skipped locally, failed under CI, when absent."""
    path = os.environ.get("WARMPOOL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    message = "Chromium is not installed (apt-get install chromium): the dashboard's browser test needs it"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: .ci/run installs it)")
    pytest.skip(message)


@pytest.fixture
def viewer(stack: Stack) -> Iterator[str]:
    """A read-only scoped token in the stack's state Redis (revoked afterwards)."""
    store = TokenStore.from_url(stack.env["WARMPOOL_REDIS_URL"])
    _, secret = store.create("dashboard-viewer", make_scope("read"))
    try:
        yield secret
    finally:
        store.revoke("dashboard-viewer")
        store.close()


def test_the_dashboard_shows_a_machine_get_assigned_live(
    pool: Stack, viewer: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    executable = chromium()
    from playwright.sync_api import expect, sync_playwright

    with running_gateway(pool, name="gateway-ui", token=ADMIN) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            script_errors: list[str] = []
            page.on("pageerror", lambda error: script_errors.append(str(error)))
            # given the login form: the page itself carries no data without a token
            first = page.goto(url + "/ui")
            assert first is not None and first.status == 401
            page.fill("#token", viewer)
            page.click("button[type=submit]")

            # expect the pool with its idle machines, and the live event stream connected
            section = page.locator(f"section.pool[data-pool='{DEFAULT_POOL}']")
            expect(section.locator(".pool-name")).to_have_text(DEFAULT_POOL, timeout=WAIT_MS)
            expect(section.locator(".count.idle b")).to_have_text(str(IDLE_TARGET), timeout=WAIT_MS)
            expect(page.locator("#live")).to_have_text("live", timeout=WAIT_MS)
            assert page.context.cookies()[0]["httpOnly"]

            # when a project is assigned a machine (through the gateway, as a backend would)
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30) as http:
                assigned = http.post("/v1/projects/dash-1/machine", params={"wait": 10})
            assert assigned.status_code == 200, assigned.text
            instance = assigned.json()["instance_id"]
            # expect the page to show it: counts, the machine row, the event, the chart
            expect(section.locator(".count.assigned b")).to_have_text("1", timeout=WAIT_MS)
            row = section.locator(".machines tbody tr", has_text=instance)
            expect(row).to_contain_text("dash-1", timeout=WAIT_MS)
            expect(row).to_contain_text("assigned")
            # the pool worker's own "assigned" event, live from the stream
            expect(page.locator("#events li[data-type=assigned]").first).to_contain_text("dash-1", timeout=WAIT_MS)
            assigned_line = section.locator(".chart polyline[data-series=assigned]")
            expect(assigned_line).to_have_attribute("points", re.compile(r"\d"), timeout=WAIT_MS)
            expect(page.locator("#foot")).to_contain_text("updated")  # not "cannot read the pool status"
            assert script_errors == []
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\ndashboard screenshot: {shot}")
