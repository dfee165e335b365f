"""End to end: the dashboard's pool panel (Redis store) in a real Chromium.

Reuses ``tests/test_browser.py``'s Chromium, server thread and helpers; skipped
like it when Chromium or Playwright is missing (and Redis like the Redis tests).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from test_browser import CHROMIUM, CHROMIUM_ARGS, TOKEN, ServerThread, card, new_page, sign_in

import funtask

from _redis import RedisServer

pytest.importorskip("coredis")

from playwright.sync_api import Browser, Route, expect, sync_playwright

POOL_INSTANCE = "pool-browser-1"


def build_pool_server(store_url: str, dead_letter_dir: Path) -> funtask.Server:
    server = funtask.Server(
        "pool",
        auth_token=TOKEN,
        dead_letter_dir=dead_letter_dir,
        dashboard=True,
        instance_id=POOL_INSTANCE,
        store=store_url,
    )

    @server.task(description="Waits until it is stopped")
    async def wait(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("waiting")
        await trio.sleep_forever()

    return server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def pool_url(redis_server: RedisServer, tmp_path: Path) -> Iterator[str]:
    thread = ServerThread(build_pool_server(redis_server.url, tmp_path))
    url = thread.start()
    yield url
    thread.stop()


def test_pool_panel_shows_the_running_job_and_stops_it(browser: Browser, pool_url: str) -> None:
    page, errors = new_page(browser, pool_url)
    try:
        sign_in(page)
        task = card(page, "wait")
        expect(task).to_be_visible()
        expect(page.locator("#instance-name")).to_have_text(POOL_INSTANCE)
        expect(page.locator("#store-status")).to_have_text("store ok")
        expect(page.locator("#pool")).to_be_visible()
        instance = page.locator(f'.pool-instance[data-instance="{POOL_INSTANCE}"]')
        expect(instance).to_contain_text("this instance")
        expect(page.locator("#pool-empty")).to_be_visible()
        expect(task.locator(".card-pool")).to_have_text("Not running in the pool")
        panel = page.locator("#pool").bounding_box()
        assert panel is not None

        # A job that runs until it is stopped: nothing races the click.
        task.locator(".run-button").click()
        expect(task.locator(".status-badge")).to_have_text("running")
        row = page.locator('#pool-running tr[data-task="wait"]')
        expect(row).to_have_count(1)
        job_id = row.get_attribute("data-job-id")
        assert job_id
        expect(row.locator(".pool-where")).to_have_text(f"{POOL_INSTANCE} (this)")
        expect(row.locator(".pool-step")).to_have_text("waiting")
        expect(row.locator(".pool-time")).to_have_text(re.compile(r"^\d+(h|m|s)"))
        expect(page.locator("#pool-empty")).to_be_hidden()
        expect(page.locator("#pool-summary")).to_have_text("1 instance · 1 running")
        expect(task.locator(".card-pool")).to_have_text(
            f"Running on {POOL_INSTANCE} (this instance)"
        )
        after = page.locator("#pool").bounding_box()
        assert after is not None and after["height"] == panel["height"]  # the cards stay put

        with page.expect_request("**/stop/**") as stop_request:
            row.locator(".pool-stop").click()
        assert stop_request.value.url.endswith(f"/stop/wait?jobId={job_id}")
        expect(task.locator(".last-result .error-code")).to_have_text("cancelled")
        expect(task.locator(".status-badge")).to_have_text("idle")
        expect(row).to_have_count(0)
        expect(page.locator("#pool-empty")).to_be_visible()
    finally:
        page.context.close()
    assert errors == []


SNAPSHOT = {
    "name": "pool",
    "status": "ok",
    "uptime": "1m",
    "instance": "replica-a",
    "store": "unavailable",
    "tasks": {"wait": {"status": "idle", "description": "Waits until it is stopped"}},
    "pool": {
        "instances": [
            {"instance": "replica-a", "lastSeen": "2026-01-01T10:00:00Z"},
            {"instance": "replica-b", "lastSeen": "2026-01-01T10:00:00Z"},
        ],
        "running": [
            {
                "task": "wait",
                "jobId": "job-b-1",
                "instance": "replica-b",
                "started": "2026-01-01T09:59:55Z",
                "running": "5s",
                "currentStep": "<b>half</b> way",
            },
            {
                "task": "wait",
                "jobId": "job-b-2",
                "instance": "replica-b",
                "started": "2026-01-01T09:59:59Z",
                "running": "1s",
                "delivering": True,
            },
        ],
    },
}


def test_jobs_elsewhere_in_the_pool_and_an_unavailable_store(
    browser: Browser, pool_url: str
) -> None:
    page, errors = new_page(browser, pool_url)
    stops: list[str] = []

    def stop(route: Route) -> None:
        stops.append(route.request.url)
        route.fulfill(
            json={"task": "wait", "jobId": "job-b-1", "message": "Cancellation requested"}
        )

    try:
        page.route("**/health", lambda route: route.fulfill(json=SNAPSHOT))
        page.route("**/events?*", lambda route: route.abort())
        page.route("**/stop/**", stop)
        sign_in(page)
        task = card(page, "wait")
        expect(task).to_be_visible()
        # The snapshot's instance wins over the page's meta tag; the store's state shows.
        expect(page.locator("#instance-name")).to_have_text("replica-a")
        expect(page.locator("#store-status")).to_have_text("store unavailable")
        expect(page.locator("#store-status")).to_be_visible()
        expect(page.locator(".pool-instance")).to_have_count(2)
        expect(task.locator(".status-badge")).to_have_text("idle")
        expect(task.locator(".card-pool")).to_have_text("Running on replica-b (2 jobs)")
        rows = page.locator("#pool-running tr")
        expect(rows).to_have_count(2)
        expect(rows.nth(0).locator(".pool-step")).to_have_text("<b>half</b> way")  # text
        assert page.locator("#pool-running b").count() == 0
        expect(rows.nth(1).locator(".delivering-chip")).to_have_text("delivering")
        expect(rows.nth(0).locator(".pool-stop")).to_have_accessible_name(
            "Stop job job-b-1 of task wait"
        )
        rows.nth(0).locator(".pool-stop").click()
        expect(page.locator("#toast")).to_have_text("wait: Cancellation requested")
        assert len(stops) == 1 and stops[0].endswith("/stop/wait?jobId=job-b-1")
    finally:
        page.context.close()
    assert errors == []
