"""funtask's changes to hypercorn's trio TCPServer, on a real socket and the real clock.

They apply only to the hypercorn releases they were verified on: the first
tests pin that gate (and fail when CI installs a hypercorn nobody has checked
them against yet). The keep-alive idle timer moves one watcher's deadline
instead of starting a task per request; the other tests pin the behaviour it
must keep: an idle connection is closed after ``keep_alive_timeout``, a busy
one never, and every answered request starts the idle time afresh. The
bounds are generous: a timer cannot fire early, and the late bounds allow a
slow machine.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio import serve

from funtask import _hypercorn_fixes
from funtask._hypercorn_fixes import (
    VERIFIED_HYPERCORN_VERSIONS,
    hypercorn_version,
    install_hypercorn_fixes,
    unsupported_reason,
)

from _support import TOKEN, build_server

KEEP_ALIVE = 1.0  # seconds
LATE = 10.0  # seconds: an upper bound no sane machine reaches


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``GET /sleep/S`` answers after S seconds; anything else at once."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"].startswith("/sleep/"):
        await trio.sleep(float(scope["path"].rsplit("/", 1)[1]))
    body = b"ok"
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def loopback_config(**settings: Any) -> Config:
    """A hypercorn config on a loopback port with ``settings`` applied."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    for name, value in settings.items():
        setattr(config, name, value)
    return config


def fixed_config(**settings: Any) -> Config:
    """A loopback hypercorn config with funtask's fixes installed and ``settings`` applied."""
    assert install_hypercorn_fixes(), "the installed hypercorn is not patched"
    return loopback_config(**settings)


# -- the version gate ------------------------------------------------------------------------


def hypercorns_own_server(monkeypatch: pytest.MonkeyPatch) -> type:
    """Put hypercorn's own TCPServer back for this test, as if nothing had been installed."""
    current = hypercorn_run.TCPServer
    original: type = (
        current.__bases__[0] if getattr(current, "__funtask_fixed__", False) else current
    )
    monkeypatch.setattr(hypercorn_run, "TCPServer", original)
    monkeypatch.setattr(_hypercorn_fixes, "_warned", False)
    return original


def gate_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "funtask.server" and record.levelno >= logging.WARNING
    ]


def test_the_installed_hypercorn_is_verified_and_gets_the_fixes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = hypercorns_own_server(monkeypatch)
    version = hypercorn_version()
    assert version in VERIFIED_HYPERCORN_VERSIONS, (
        f"hypercorn {version} is installed, but funtask's fixes to it were verified only on "
        f"{sorted(VERIFIED_HYPERCORN_VERSIONS)}: check its trio worker against "
        "funtask/_hypercorn_fixes.py and docs/upstream.md, run this file and "
        "tests/test_security.py on it, then add it to VERIFIED_HYPERCORN_VERSIONS"
    )
    assert unsupported_reason(hypercorn_run) is None
    assert install_hypercorn_fixes()
    fixed = hypercorn_run.TCPServer
    assert fixed is not original and issubclass(fixed, original)
    assert install_hypercorn_fixes()  # idempotent
    assert hypercorn_run.TCPServer is fixed
    assert gate_warnings(caplog) == []


@asynccontextmanager
async def serving_funtask(tmp_path: Path) -> AsyncIterator[str]:
    """``Server.serve`` on a loopback port for the block; yields its base URL."""
    server = build_server(tmp_path)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(server.serve, "127.0.0.1:0", shutdown_trigger=stop.wait)
        )
        try:
            yield binds[0]
        finally:
            stop.set()


async def test_an_unverified_hypercorn_is_served_unpatched_after_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    original = hypercorns_own_server(monkeypatch)
    monkeypatch.setattr(_hypercorn_fixes, "hypercorn_version", lambda: "0.19.0")
    caplog.set_level(logging.WARNING, logger="funtask.server")
    assert not install_hypercorn_fixes()
    assert not install_hypercorn_fixes()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # Server.serve installs the fixes itself; so does the lifespan of the ASGI app.
    async with serving_funtask(tmp_path) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/run/greet", json={"params": {"name": "0.19"}}, headers=auth)
        assert response.json()["message"] == "Hello, 0.19!"
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        server = build_server(tmp_path)
        serving_asgi = partial(serve, server, loopback_config(), shutdown_trigger=stop.wait)
        binds: list[str] = await nursery.start(serving_asgi)
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            assert (await client.get("/livez")).json() == {"status": "ok"}
        stop.set()
    assert hypercorn_run.TCPServer is original
    [warning] = gate_warnings(caplog)  # one per process, however often serving starts
    assert "hypercorn 0.19.0 is not a release they were verified on" in warning
    assert "pip install 'hypercorn==" in warning  # the newest verified release


def test_an_unknown_hypercorn_version_is_unverified(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_hypercorn_fixes, "hypercorn_version", lambda: None)
    reason = unsupported_reason(hypercorn_run)
    assert reason is not None and reason.startswith("hypercorn of unknown version is not")


def _without_idle_task(base: type) -> type:
    class Renamed(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.idle_timer = self.idle_task
            del self.idle_task

    return Renamed


def _with_only_run(base: type) -> type:
    class Stub:
        run = base.run  # type: ignore[attr-defined]

    return Stub


@pytest.mark.parametrize(
    ("reshape", "problem"),
    [
        (_without_idle_task, "TCPServer instances have no idle_task"),
        (_with_only_run, "TCPServer.protocol_send is not a coroutine method"),
    ],
)
def test_a_verified_version_with_unexpected_internals_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    reshape: Any,
    problem: str,
) -> None:
    original = hypercorns_own_server(monkeypatch)
    reshaped = reshape(original)
    monkeypatch.setattr(hypercorn_run, "TCPServer", reshaped)
    monkeypatch.setattr(_hypercorn_fixes, "hypercorn_version", lambda: "0.18.0")
    caplog.set_level(logging.WARNING, logger="funtask.server")
    assert not install_hypercorn_fixes()
    assert not install_hypercorn_fixes()
    assert hypercorn_run.TCPServer is reshaped
    [warning] = gate_warnings(caplog)
    assert f"hypercorn 0.18.0 is not shaped as expected: {problem}" in warning


# -- the fixes at work -----------------------------------------------------------------------


async def serving(
    config: Config, stop: trio.Event, *, task_status: trio.TaskStatus[list[str]]
) -> None:
    await serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)  # type: ignore[arg-type]


@asynccontextmanager
async def running_server() -> AsyncIterator[int]:
    config = fixed_config(keep_alive_timeout=KEEP_ALIVE)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(serving, config, stop)
        yield int(binds[0].rsplit(":", 1)[1])
        stop.set()


async def get(stream: trio.SocketStream, path: str) -> bytes:
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    data = b""
    while not data.endswith(b"\r\n\r\nok"):
        chunk = await stream.receive_some(65536)
        assert chunk, f"connection closed before the answer: {data!r}"
        data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    return data


async def seconds_until_closed(stream: trio.SocketStream) -> float:
    """Seconds until the server closes ``stream`` (which is then closed here too)."""
    start = trio.current_time()
    async with stream:
        with trio.fail_after(LATE):
            assert await stream.receive_some(65536) == b""
    return trio.current_time() - start


async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout() -> None:
    async with running_server() as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await get(stream, "/")
        assert KEEP_ALIVE - 0.05 <= await seconds_until_closed(stream) < LATE
        fresh = await trio.open_tcp_stream("127.0.0.1", port)  # never sent a request
        assert KEEP_ALIVE - 0.05 <= await seconds_until_closed(fresh) < LATE


async def test_a_busy_connection_is_not_closed() -> None:
    async with running_server() as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        start = trio.current_time()
        await get(stream, f"/sleep/{KEEP_ALIVE * 2.5}")  # longer than the idle timeout
        assert trio.current_time() - start >= KEEP_ALIVE * 2.5 - 0.05
        await get(stream, "/")  # still the same connection
        assert KEEP_ALIVE - 0.05 <= await seconds_until_closed(stream) < LATE


async def test_every_answer_restarts_the_idle_time() -> None:
    async with running_server() as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        start = trio.current_time()
        for _ in range(6):  # 3 s in all, three times the idle timeout
            await get(stream, "/")
            await trio.sleep(KEEP_ALIVE / 2)
        assert trio.current_time() - start >= KEEP_ALIVE * 3
        await get(stream, "/")
        assert KEEP_ALIVE - 0.05 <= await seconds_until_closed(stream) < LATE


async def test_shutdown_closes_idle_connections_and_finishes_busy_ones() -> None:
    # Only the shutdown may close the connections.
    config = fixed_config(keep_alive_timeout=60, graceful_timeout=30)
    stop = trio.Event()
    with trio.fail_after(LATE):  # the server stops promptly, not after the graceful timeout
        await _shut_down_with_connections(config, stop)


async def _shut_down_with_connections(config: Config, stop: trio.Event) -> None:
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(serving, config, stop)
        port = int(binds[0].rsplit(":", 1)[1])
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        await get(idle, "/")
        busy = await trio.open_tcp_stream("127.0.0.1", port)
        answered = trio.Event()

        async def slow_request() -> None:
            await get(busy, "/sleep/1")
            answered.set()

        nursery.start_soon(slow_request)
        await trio.sleep(0.3)
        stop.set()
        assert await seconds_until_closed(idle) < 1.0  # at once, not after 60 s
        with trio.fail_after(LATE):
            await answered.wait()  # the request in flight is answered
        assert await seconds_until_closed(busy) < LATE


def _count_tasks() -> int:
    count = 0
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


async def test_a_connection_closed_by_the_server_leaves_no_task_behind() -> None:
    # hypercorn answers the last allowed request of a connection by closing it,
    # without marking the connection idle first: the idle watcher must still end.
    # Only the close can end the watcher.
    config = fixed_config(keep_alive_timeout=60, keep_alive_max_requests=2)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(serving, config, stop)
        port = int(binds[0].rsplit(":", 1)[1])
        await trio.sleep(0.2)
        baseline = _count_tasks()
        for _ in range(3):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await get(stream, "/")
            await get(stream, "/")
            assert await seconds_until_closed(stream) < LATE
        for _ in range(int(LATE / 0.05)):  # the connections' tasks end soon after
            if _count_tasks() <= baseline:
                break
            await trio.sleep(0.05)
        assert _count_tasks() <= baseline
        stop.set()


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed", "hypercorn-as-is"])
async def test_a_funtask_server_closes_an_idle_keep_alive_connection(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fixed: bool
) -> None:
    # quart-trio cancels a request inside its last send, which would skip hypercorn's
    # keep-alive timer; funtask shields that send (docs/upstream.md, 3), fixes or not.
    hypercorns_own_server(monkeypatch)
    if not fixed:
        monkeypatch.setattr(_hypercorn_fixes, "hypercorn_version", lambda: "0.19.0")
    server = build_server(tmp_path)
    stop = trio.Event()
    config = loopback_config(keep_alive_timeout=KEEP_ALIVE)
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(serve, server, config, shutdown_trigger=stop.wait)
        )  # type: ignore[arg-type]
        assert getattr(hypercorn_run.TCPServer, "__funtask_fixed__", False) is fixed
        port = int(binds[0].rsplit(":", 1)[1])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        for _ in range(2):  # the timer must survive an answer, not only the connection's start
            await stream.send_all(b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n")
            data = b""
            while not data.endswith(b'{"status":"ok"}'):
                chunk = await stream.receive_some(65536)
                assert chunk, f"connection closed before the answer: {data!r}"
                data += chunk
        assert KEEP_ALIVE - 0.05 <= await seconds_until_closed(stream) < LATE
        stop.set()
