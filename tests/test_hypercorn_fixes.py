"""funtask's changes to hypercorn's trio TCPServer, on a real socket and the real clock.

The keep-alive idle timer moves one watcher's deadline instead of starting a
task per request; these tests pin the behaviour it must keep: an idle
connection is closed after ``keep_alive_timeout``, a busy one never, and
every answered request starts the idle time afresh. The bounds are generous:
a timer cannot fire early, and the late bounds allow a slow machine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from funtask._hypercorn_fixes import install_hypercorn_fixes

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


def fixed_config(**settings: Any) -> Config:
    """A loopback hypercorn config with funtask's fixes installed and ``settings`` applied."""
    install_hypercorn_fixes()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    for name, value in settings.items():
        setattr(config, name, value)
    return config


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
