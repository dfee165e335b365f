"""End to end: the dashboard in a real Chromium, against a real server on a real clock.

Playwright's API runs on asyncio, and these tests run under pytest-trio's
``trio_mode``, so the tests are plain sync functions using Playwright's sync
API, and the server runs in a thread of its own (its own ``trio.run``).

Needs Debian's Chromium at ``/usr/bin/chromium`` and the ``playwright``
package (never ``playwright install``). Without them the tests are skipped,
except under ``CI=true``, where they must run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

import funtask

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
TOKEN = "browser-test-token"
INSTANCE = "browser-worker-1"
STEP_DURATION = 0.35  # seconds per countdown step: slow enough to watch
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"
TIMEOUT_MS = 15_000  # Playwright's waits
DIGEST = 'Sends the <b>weekly</b> digest to <img src=x onerror="boom()">'  # shown as text

_missing = [
    what
    for what, present in [
        (str(CHROMIUM), CHROMIUM.exists()),
        ("the playwright package", importlib.util.find_spec("playwright") is not None),
    ]
    if not present
]
if _missing and os.environ.get("CI") != "true":
    pytest.skip("browser tests need " + " and ".join(_missing), allow_module_level=True)

from playwright.sync_api import (  # noqa: E402  (after the skip: optional dependency)
    Browser,
    Page,
    Route,
    expect,
    sync_playwright,
)


def build_demo_server(dead_letter_dir: Path) -> funtask.Server:
    """A small server like examples/counter.py, with a faster countdown."""
    server = funtask.Server(
        "counter",
        auth_token=TOKEN,
        dead_letter_dir=dead_letter_dir,
        dashboard=True,
        instance_id=INSTANCE,
    )

    @server.task(description="Says hello", example={"name": "World"})
    async def greet(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        name = params.str("name", "World")
        run.step("greeting")
        return funtask.ok(f"Hello, {name}!").with_data("name", name)

    @server.task(
        description="Counts down from start to 1, reporting each step", example={"start": 5}
    )
    async def countdown(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        start = params.int("start", 5)
        for i in range(start):
            run.progress(i + 1, start, f"T-{start - i}")
            await trio.sleep(STEP_DURATION)
        return funtask.ok("Countdown complete.").with_data("start", start)

    @server.task("fail-demo", description="Always fails, to show error results")
    async def fail_demo(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("connecting")
        return funtask.fail("demo_error", "this task always fails")

    @server.task(description=DIGEST)
    async def digest(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        return funtask.ok("<i>sent</i>")

    return server


class ServerThread:
    """Runs ``server.serve("127.0.0.1:0")`` in a thread with its own Trio run."""

    def __init__(self, server: funtask.Server) -> None:
        self.server = server
        self._started: queue.Queue[str | BaseException] = queue.Queue()
        self._scope: trio.CancelScope | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        try:
            with trio.CancelScope() as self._scope, trio.fail_after(600):
                self._token = trio.lowlevel.current_trio_token()
                async with trio.open_nursery() as nursery:
                    binds = await nursery.start(partial(self.server.serve, "127.0.0.1:0"))
                    self._started.put(binds[0])
        except BaseException as exc:
            self._started.put(exc)
            raise

    def start(self) -> str:
        """Start serving; return the base URL."""
        self._thread.start()
        started = self._started.get(timeout=30)
        if isinstance(started, BaseException):
            raise RuntimeError("the test server did not start") from started
        return started

    def stop(self) -> None:
        """Cancel the server (it drains) and wait for the thread."""
        assert self._scope is not None and self._token is not None
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(timeout=30)
        assert not self._thread.is_alive()


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    thread = ServerThread(build_demo_server(tmp_path_factory.mktemp("dead-letters")))
    url = thread.start()
    yield url
    thread.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


def new_page(
    browser: Browser, base_url: str, width: int = 1280, **options: Any
) -> tuple[Page, list[str]]:
    """A page in a fresh context, and the list its script errors and CSP violations go to."""
    context = browser.new_context(
        viewport={"width": width, "height": 800},
        base_url=base_url,
        color_scheme="light",
        **options,
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: (
            errors.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    return page, errors


@pytest.fixture
def page(browser: Browser, base_url: str) -> Iterator[Page]:
    page, errors = new_page(browser, base_url)
    yield page
    page.context.close()
    assert errors == []  # no script errors, no CSP violations


def sign_in(page: Page, token: str = TOKEN) -> None:
    page.goto("/dashboard")
    expect(page.locator("#token-form")).to_be_visible()
    page.fill("#token-input", token)
    page.locator("#token-form button[type=submit]").click()


def card(page: Page, task: str) -> Any:
    return page.locator(f'.task-card[data-task="{task}"]')


def test_sign_in_shows_the_task_cards(page: Page) -> None:
    sign_in(page)
    expect(page.locator(".task-card")).to_have_count(4)
    expect(page.locator("#token-form")).to_be_hidden()
    expect(page.locator("#server-name")).to_have_text("counter")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    expect(page).to_have_title("counter · funtask")
    expect(page.locator("#uptime")).to_have_text(re.compile(r"^\d+(h|m|s)"))
    for task in ("greet", "countdown", "fail-demo", "digest"):
        expect(card(page, task).locator(".task-name")).to_have_text(task)
    countdown = card(page, "countdown")
    expect(countdown.locator(".description")).to_have_text(
        "Counts down from start to 1, reporting each step"
    )
    expect(countdown.locator(".params")).to_have_value('{\n  "start": 5\n}')
    expect(card(page, "fail-demo").locator(".params")).to_have_value("{}")
    assert page.evaluate("sessionStorage.getItem('funtask.token')") == TOKEN

    # Server text is shown as text, never parsed as HTML.
    description = card(page, "digest").locator(".description")
    expect(description).to_have_text(DIGEST)
    assert card(page, "digest").locator("b, img").count() == 0

    # The token survives a reload (sessionStorage) ...
    page.reload()
    expect(page.locator(".task-card")).to_have_count(4)
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    # ... until signing out.
    page.locator("#sign-out").click()
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator(".task-card")).to_have_count(0)
    assert page.evaluate("sessionStorage.length") == 0


def test_wrong_token_is_refused(page: Page) -> None:
    sign_in(page, "not-the-token")
    expect(page.locator("#token-error")).to_have_text("Invalid token")
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator("#token-input")).to_be_visible()
    expect(page.locator(".task-card")).to_have_count(0)
    assert page.evaluate("sessionStorage.getItem('funtask.token')") is None


def test_run_then_stop_a_countdown(page: Page) -> None:
    sign_in(page)
    greet = card(page, "greet")
    greet.locator(".params").fill('{"name": "Ada"}')
    greet.locator(".run-button").click()
    expect(greet.locator(".response")).to_contain_text('"message": "Hello, Ada!"')
    expect(greet.locator(".last-result")).to_contain_text("Hello, Ada!")
    expect(greet.locator(".outcome-badge")).to_have_text("ok")

    failing = card(page, "fail-demo")
    failing.locator(".run-button").click()
    expect(failing.locator(".last-result .error-code")).to_have_text("demo_error")
    expect(failing.locator(".last-result")).to_contain_text("this task always fails")
    expect(failing.locator(".last-result")).to_contain_text("at step “connecting”")
    failing.locator(".history summary").click()
    expect(failing.locator(".history-item .error-code")).to_have_text("demo_error")
    expect(failing.locator(".history-item")).to_contain_text("this task always fails")
    expect(page.locator("#count-failed")).to_have_text("1")

    countdown = card(page, "countdown")
    # 60 steps (21 s): Stop is clicked long before the countdown could end on a slow machine.
    countdown.locator(".params").fill('{"start": 60}')
    countdown.locator(".run-button").click()
    expect(countdown.locator(".status-badge")).to_have_text("running")
    expect(page.locator("#count-running")).to_have_text("1")
    expect(countdown.locator(".step")).to_have_text(re.compile(r"^T-([1-9]|[1-5][0-9]|60)$"))

    # The bar's width (a percentage) once it exceeds ``before``.
    wider = """([before]) => {
        const fill = document.querySelector('.task-card[data-task="countdown"] .progress-fill');
        const width = parseFloat(fill.style.width) || 0;
        return width > before ? width : 0;
    }"""
    first = page.wait_for_function(wider, arg=[0]).json_value()
    box = countdown.bounding_box()
    second = page.wait_for_function(wider, arg=[first]).json_value()
    assert 0 < first < second < 100
    assert countdown.bounding_box() == box  # progress updates never move the layout
    expect(countdown.locator(".percent")).to_have_text(re.compile(r"^\d+%$"))

    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))

    with page.expect_request("**/stop/**") as stop_request:
        countdown.locator(".stop-button").click()
    # The Stop button names the job it stops (SPEC section 5 rule 8).
    assert re.search(r"/stop/countdown\?jobId=[^&]+$", stop_request.value.url)
    expect(countdown.locator(".status-badge")).to_have_text("idle")
    expect(countdown.locator(".last-result .error-code")).to_have_text("cancelled")
    expect(countdown.locator(".last-result")).to_contain_text("job cancelled via /stop")
    expect(countdown.locator(".outcome-badge")).to_have_text("failed")
    # The sync /run call answered with the same result.
    expect(countdown.locator(".response")).to_contain_text('"code": "cancelled"')
    expect(countdown.locator(".step")).to_have_text("Not running")
    countdown.locator(".history summary").click()
    expect(countdown.locator(".history-item").first).to_contain_text("job cancelled via /stop")


def test_sparkline_and_instance(page: Page) -> None:
    sign_in(page)
    expect(page.locator("#instance-name")).to_have_text(INSTANCE)
    # The memory store: no store state, no pool.
    expect(page.locator("#store-status")).to_be_hidden()
    expect(page.locator("#pool")).to_be_hidden()
    expect(card(page, "greet").locator(".card-pool")).to_be_hidden()
    greet, failing = card(page, "greet"), card(page, "fail-demo")
    # Results already in the history when the page loaded are not counted.
    expect(greet.locator(".spark-caption")).to_have_text("0 ok · 0 failed · last 5 min")
    expect(greet.locator(".spark-bar")).to_have_count(30)
    for name in ("Ada", "Bob"):
        greet.locator(".params").fill(json.dumps({"name": name}))
        greet.locator(".run-button").click()
        expect(greet.locator(".response")).to_contain_text(f"Hello, {name}!")
    failing.locator(".run-button").click()
    expect(failing.locator(".response")).to_contain_text("demo_error")
    expect(greet.locator(".spark-caption")).to_have_text("2 ok · 0 failed · last 5 min")
    expect(failing.locator(".spark-caption")).to_have_text("0 ok · 1 failed · last 5 min")
    drawn = """([task, kind]) => [
        ...document.querySelectorAll(`.task-card[data-task="${task}"] .spark-${kind}`)
    ].map((bar) => bar.getBoundingClientRect().height)"""
    ok_heights = page.evaluate(drawn, ["greet", "ok"])
    assert len(ok_heights) == 30
    assert ok_heights[-1] > 0  # the newest bar, at the right
    assert sum(h > 0 for h in ok_heights) == 1
    assert sum(page.evaluate(drawn, ["greet", "failed"])) == 0
    assert page.evaluate(drawn, ["fail-demo", "failed"])[-1] > 0
    # Signing in again starts a new window.
    page.reload()
    expect(greet.locator(".spark-caption")).to_have_text("0 ok · 0 failed · last 5 min")
    page.locator("#sign-out").click()
    expect(page.locator("#instance-name")).to_be_hidden()


def test_invalid_params_are_not_sent(page: Page) -> None:
    sign_in(page)
    greet = card(page, "greet")
    greet.locator(".params").fill('{"name": ')
    greet.locator(".run-button").click()
    expect(greet.locator(".params-error")).to_contain_text("Invalid JSON")
    expect(greet.locator(".response")).to_be_hidden()
    greet.locator(".params").fill("[1, 2]")
    greet.locator(".run-button").click()
    expect(greet.locator(".params-error")).to_contain_text("must be a JSON object")
    expect(greet.locator(".response")).to_be_hidden()


def test_curl_snippet_has_the_url_and_never_the_token(browser: Browser, base_url: str) -> None:
    page, errors = new_page(browser, base_url, permissions=["clipboard-read", "clipboard-write"])
    try:
        sign_in(page)
        countdown = card(page, "countdown")
        countdown.locator(".params").fill('{"start": 3}')
        curl = countdown.locator(".curl")
        expect(curl).to_contain_text(f"{base_url}/run/countdown")
        expect(curl).to_contain_text("$FUNTASK_TOKEN")
        expect(curl).to_contain_text('{"params":{"start":3}}')
        assert TOKEN not in (curl.text_content() or "")
        assert TOKEN not in page.content()
        countdown.locator(".copy-button").click()
        expect(countdown.locator(".copy-button")).to_have_text("Copied")
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied == curl.text_content()
        assert TOKEN not in copied
        body = copied.split(" -d ", 1)[1].strip().strip("'")
        assert json.loads(body) == {"params": {"start": 3}}
    finally:
        page.context.close()
    assert errors == []


def test_reconnects_when_the_stream_drops(page: Page) -> None:
    def refuse(route: Route) -> None:
        route.abort()

    page.route("**/events?*", refuse)
    sign_in(page)
    expect(page.locator(".task-card")).to_have_count(4)
    expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
    expect(page.locator("#connection")).to_have_text("Reconnecting…")
    page.unroute("**/events?*", refuse)
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")


def test_a_revoked_token_signs_out(page: Page) -> None:
    health_checks: list[str] = []

    def health(route: Route) -> None:
        # The sign-in check passes; the token is "revoked" right after.
        health_checks.append(route.request.url)
        if len(health_checks) == 1:
            route.continue_()
        else:
            route.fulfill(status=401, json={"error": "unauthorized"})

    page.route("**/events?*", lambda route: route.abort())
    page.route("**/health", health)
    sign_in(page)
    expect(page.locator(".task-card")).to_have_count(4)
    # The stream stays down, so the page re-checks the token and gets a 401.
    expect(page.locator("#token-error")).to_have_text("Invalid token")
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator(".task-card")).to_have_count(0)
    assert page.evaluate("sessionStorage.length") == 0
    assert len(health_checks) == 2


def test_phone_width_has_no_horizontal_overflow(browser: Browser, base_url: str) -> None:
    page, errors = new_page(browser, base_url, width=375)
    try:
        sign_in(page)
        expect(page.locator(".task-card")).to_have_count(4)
        greet = card(page, "greet")
        greet.locator(".run-button").click()
        expect(greet.locator(".response")).to_contain_text("Hello")
        for details in page.locator(".history summary").all():
            details.click()
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        assert page.evaluate("document.body.scrollWidth") <= 375
    finally:
        page.context.close()
    assert errors == []
