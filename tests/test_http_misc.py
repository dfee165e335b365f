"""Probes, 404/405 answers, custom handlers, lifespan and the ASGI entry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from quart import jsonify
from trio.testing import MockClock

import funtask
from funtask._asgi_client import ASGIStreamTransport
from funtask.testing import open_test_client

from _support import build_server, wait_until


async def test_unknown_path_and_wrong_method(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_test_client(build_server(tmp_path)) as client:
        missing = await client.get("/nope")
        assert missing.status_code == 404
        assert missing.json() == {"error": "not found"}
        wrong = await client.get("/run/greet")
        assert wrong.status_code == 405
        assert wrong.json() == {"error": "method not allowed"}
        assert "POST" in wrong.headers["allow"]
        assert (await client.post("/health")).status_code == 405
        assert (await client.delete("/stop/greet")).status_code == 405


async def test_probes_need_no_auth(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_test_client(build_server(tmp_path), authorized=False) as client:
        assert (await client.get("/livez")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ok"}
        assert (await client.get("/health")).status_code == 401


async def test_readyz_while_draining(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = build_server(tmp_path)
    async with open_test_client(server) as client:
        assert server._runtime is not None
        server._runtime.begin_draining()
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"error": "server is shutting down"}
        assert (await client.get("/livez")).status_code == 200
        assert (await client.get("/health")).json()["status"] == "draining"
        # /stop, /health and /result keep working while draining.
        assert (await client.post("/stop/greet")).status_code == 200


def _failing() -> None:
    raise ConnectionError("database unreachable")


async def _failing_async() -> None:
    await trio.lowlevel.checkpoint()
    raise RuntimeError("cache cold")


def _returns_error() -> Exception:
    return ValueError("not yet")


def _silent() -> None:
    raise KeyError()


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (_failing, "database unreachable"),
        (_failing_async, "cache cold"),
        (_returns_error, "not yet"),
        (_silent, "KeyError"),
    ],
)
async def test_readiness_check_failures(
    autojump_clock: MockClock, tmp_path: Path, check: Any, message: str
) -> None:
    async with open_test_client(build_server(tmp_path, readiness=check)) as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"error": message}


async def test_readiness_check_passing(autojump_clock: MockClock, tmp_path: Path) -> None:
    calls = []

    async def check() -> None:
        calls.append(1)

    async with open_test_client(build_server(tmp_path, readiness=check)) as client:
        assert (await client.get("/readyz")).status_code == 200
    assert calls == [1]


async def test_custom_handlers(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = build_server(tmp_path)

    @server.handler("GET /api/orders")
    async def orders() -> Any:
        return jsonify(orders=[1, 2])

    @server.handler("GET /api/orders/{order_id}")
    async def order(order_id: str) -> Any:
        return jsonify(id=order_id)

    @server.handler("/api/any")
    async def anything() -> Any:
        return "plain"

    async with open_test_client(server, authorized=False) as client:
        assert (await client.get("/api/orders")).json() == {"orders": [1, 2]}
        assert (await client.get("/api/orders/42")).json() == {"id": "42"}
        assert (await client.post("/api/orders")).status_code == 405
        assert (await client.post("/api/any")).text == "plain"


async def test_user_lifespan_wraps_serving(autojump_clock: MockClock, tmp_path: Path) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(server: funtask.Server) -> AsyncIterator[None]:
        server.state.pool = "pool"
        events.append("enter")
        yield
        events.append("exit")

    server = build_server(tmp_path, lifespan=lifespan)

    @server.task
    async def uses_pool(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        return funtask.ok(server.state.pool)

    async with open_test_client(server) as client:
        assert events == ["enter"]
        assert (await client.post("/run/uses_pool")).json()["message"] == "pool"
    assert events == ["enter", "exit"]


async def _lifespan(app: Any, messages: list[str]) -> list[dict[str, Any]]:
    """Drive an ASGI lifespan with ``messages`` and return what the app sent."""
    inbox: list[dict[str, Any]] = [{"type": m} for m in messages]
    sent: list[dict[str, Any]] = []
    more = trio.Event()

    async def receive() -> dict[str, Any]:
        while not inbox:
            await more.wait()
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    return sent


async def test_asgi_lifespan_reports_configuration_errors(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = funtask.Server("bad", auth_token="t", dead_letter_dir=tmp_path / "missing")
    sent = await _lifespan(server, ["lifespan.startup"])
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert "no tasks registered" in sent[0]["message"]
    assert "does not exist" in sent[0]["message"]


async def test_asgi_app_serves_between_startup_and_shutdown(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = build_server(tmp_path)
    inbox: list[dict[str, Any]] = [{"type": "lifespan.startup"}]
    sent: list[dict[str, Any]] = []
    wake = trio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal wake
        while not inbox:
            await wake.wait()
            wake = trio.Event()
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server, {"type": "lifespan"}, receive, send)
        await wait_until(lambda: sent)
        assert sent == [{"type": "lifespan.startup.complete"}]
        transport = ASGIStreamTransport(server, nursery)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://t",
            headers={"Authorization": "Bearer test-token"},
        ) as client:
            assert (await client.post("/run/greet")).json()["success"] is True
        inbox.append({"type": "lifespan.shutdown"})
        wake.set()
    assert sent[-1] == {"type": "lifespan.shutdown.complete"}
    assert server._runtime is None


async def test_requests_without_lifespan_get_503(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = build_server(tmp_path)
    async with trio.open_nursery() as nursery:
        transport = ASGIStreamTransport(server, nursery)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/run/greet")
    assert response.status_code == 503
    assert "lifespan" in response.json()["error"]


async def test_registration_is_closed_while_serving(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = build_server(tmp_path)
    async with open_test_client(server):
        with pytest.raises(RuntimeError, match="while the server is running"):
            server.add_task("late", lambda run, params: funtask.ok())
