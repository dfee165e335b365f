"""Serving for real: hypercorn on a loopback port, and worker processes."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import httpx
import pytest
import trio

import funtask

from _support import REPO, TOKEN, build_server, wait_until, worker_env, worker_process

AUTH = {"Authorization": f"Bearer {TOKEN}"}
STARTUP_LIMIT = 60  # seconds; a safety net, never a wait for a state


async def test_serve_reports_its_addresses_and_drains_on_trigger(tmp_path: Path) -> None:
    server = build_server(tmp_path)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: server.serve(
                "127.0.0.1:0", shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        assert len(binds) == 1
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", binds[0])
        async with httpx.AsyncClient(base_url=binds[0], headers=AUTH) as client:
            response = await client.post("/run/greet", json={"params": {"name": "TCP"}})
            assert response.json()["message"] == "Hello, TCP!"
            assert (await client.get("/livez")).json() == {"status": "ok"}
            stop.set()
    assert server._runtime is None


async def test_serve_cancelled_sync_caller_gets_cancelled_result(tmp_path: Path) -> None:
    server = build_server(tmp_path)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: server.serve(
                "127.0.0.1:0", shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        async with httpx.AsyncClient(base_url=binds[0], headers=AUTH, timeout=30) as client:
            results: list[httpx.Response] = []

            async def call() -> None:
                results.append(await client.post("/run/sleeper", json={"jobId": "s"}))

            nursery.start_soon(call)

            async def sleeper_running() -> bool:
                health = (await client.get("/health")).json()
                return bool(health["tasks"]["sleeper"]["status"] == "running")

            with trio.fail_after(STARTUP_LIMIT):
                await wait_until(sleeper_running)
            stop.set()
            with trio.fail_after(STARTUP_LIMIT):
                await wait_until(lambda: results)
    assert results[0].status_code == 200
    assert results[0].json()["error"]["message"] == "job cancelled: server shutting down"


async def test_serve_refuses_a_bad_configuration(tmp_path: Path) -> None:
    server = funtask.Server("empty", auth_token="t", dead_letter_dir=tmp_path)
    with pytest.raises(funtask.ConfigError, match="no tasks registered"):
        await server.serve("127.0.0.1:0")


def worker_settings(tmp_path: Path) -> dict[str, str]:
    return worker_env(FUNTASK_AUTH_TOKEN=TOKEN, FUNTASK_DEAD_LETTER_DIR=str(tmp_path))


async def test_example_script_serves_and_stops_on_sigint(tmp_path: Path) -> None:
    args = [sys.executable, "examples/counter.py", "127.0.0.1:0"]
    async with worker_process(args, env=worker_settings(tmp_path)) as worker:
        async with httpx.AsyncClient(base_url=worker.url, headers=AUTH) as client:
            response = await client.post("/run/greet", json={"params": {"name": "proc"}})
            assert response.json()["message"] == "Hello, proc!"
        sent = worker.send(signal.SIGINT)
        await worker.exit_after(sent, STARTUP_LIMIT)
    assert any("received SIGINT" in line for line in worker.lines)


async def test_module_cli_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    args = [
        sys.executable, "-m", "funtask", "serve", "examples.counter:server",
        "--bind", "127.0.0.1:0",
    ]  # fmt: skip
    async with worker_process(args, env=worker_settings(tmp_path)) as worker:
        async with httpx.AsyncClient(base_url=worker.url, headers=AUTH) as client:
            health = (await client.get("/health")).json()
            assert set(health["tasks"]) == {"greet", "fail-demo", "countdown"}
        sent = worker.sigterm()
        await worker.exit_after(sent, STARTUP_LIMIT)


async def test_hypercorn_serves_the_server_as_an_asgi_app(tmp_path: Path) -> None:
    args = [
        sys.executable, "-m", "hypercorn", "-k", "trio", "-w", "1",
        "--bind", "127.0.0.1:0", "examples.counter:server",
    ]  # fmt: skip
    pattern = r"Running on (http://\S+)"
    async with worker_process(args, env=worker_settings(tmp_path), pattern=pattern) as worker:
        async with httpx.AsyncClient(base_url=worker.url, headers=AUTH) as client:
            response = await client.post("/run/fail-demo")
            assert response.json()["error"] == {
                "code": "demo_error",
                "message": "this task always fails",
                "step": "connecting",
            }
            assert (await client.get("/readyz")).json() == {"status": "ok"}
        sent = worker.sigterm()
        await worker.exit_after(sent, STARTUP_LIMIT)


async def test_example_refuses_to_start_without_configuration(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNTASK_")}
    code = "import examples.counter as c; c.server.run('127.0.0.1:0')"
    result = await trio.run_process(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_stderr=True, check=False
    )
    assert result.returncode == 2
    message = result.stderr.decode()
    assert "Traceback" not in message
    assert 'funtask: server "counter": auth token required' in message
    assert "dead letter directory required" in message
