"""The /health document's wire shapes, as the Go worker writes them (SPEC section 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio.testing import MockClock

import funtask
from funtask.testing import open_test_client

from _support import build_server, wait_until


def _server(tmp_path: Path) -> funtask.Server:
    server = build_server(tmp_path)

    @server.task
    async def counting(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.progress(params.int("current"), params.int("total"), "counting")
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    @server.task
    async def breaks(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("connecting")
        return funtask.fail("db_error", "connection refused")

    @server.task
    async def breaks_early(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        return funtask.fail("bad_input", "nothing to do")

    return server


async def _health(client: httpx.AsyncClient) -> Any:
    return (await client.get("/health")).json()


@pytest.mark.parametrize(
    ("current", "total", "percent", "text"),
    [
        (1, 3, 33.333333333333336, b'"percent":33.333333333333336'),
        (2, 3, 66.66666666666667, b'"percent":66.66666666666667'),
        (3, 5, 60.0, b'"percent":60.0'),
        (7, 7, 100.0, b'"percent":100.0'),
    ],
)
async def test_percent_is_gos_unrounded_float(
    autojump_clock: MockClock,
    tmp_path: Path,
    current: int,
    total: int,
    percent: float,
    text: bytes,
) -> None:
    server = _server(tmp_path)
    async with open_test_client(server) as client, trio.open_nursery() as nursery:
        params = {"current": current, "total": total}
        nursery.start_soon(lambda: client.post("/run/counting", json={"params": params}))

        async def reported() -> bool:
            job = (await _health(client))["tasks"]["counting"].get("currentJob", {})
            return "progress" in job

        await wait_until(reported)
        response = await client.get("/health")
        progress = response.json()["tasks"]["counting"]["currentJob"]["progress"]
        assert progress == {"current": current, "total": total, "percent": percent}
        assert type(progress["percent"]) is float
        assert text in response.content
        await client.post("/stop/counting")


def test_progress_percent_matches_go_float64_arithmetic() -> None:
    run = funtask.testing.make_run()
    cases = {(1, 3): 33.333333333333336, (1, 7): 14.285714285714286, (2, 3): 66.66666666666667}
    for (current, total), expected in cases.items():
        run.progress(current, total)
        assert run.state.progress == funtask.Progress(current, total, expected)
    run.progress(10**400, 3)  # beyond a float: still finite, so /health stays JSON
    progress = run.state.progress
    assert progress is not None
    json.dumps(progress.percent, allow_nan=False)


async def test_failed_history_entry_carries_the_job_responses_error_object(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = _server(tmp_path)
    async with open_test_client(server) as client:
        failed = (await client.post("/run/breaks", json={"jobId": "f1"})).json()
        early = (await client.post("/run/breaks_early", json={"jobId": "f2"})).json()
        await client.post("/run/greet", json={"jobId": "ok1"})
        health = await _health(client)
    assert failed["error"] == {
        "code": "db_error",
        "message": "connection refused",
        "step": "connecting",
    }
    entry = health["tasks"]["breaks"]["results"][0]
    assert entry["error"] == failed["error"]
    assert entry["message"] == "connection refused"
    assert "step" not in entry  # it lives in the error object, as in Go
    assert set(entry) == {"jobId", "success", "message", "duration", "finished", "error"}
    early_entry = health["tasks"]["breaks_early"]["results"][0]
    assert early_entry["error"] == early["error"]
    assert early["error"] == {"code": "bad_input", "message": "nothing to do"}
    ok_entry = health["tasks"]["greet"]["results"][0]
    assert "error" not in ok_entry


async def test_last_job_has_gos_members_and_the_same_error_object(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = _server(tmp_path)
    async with open_test_client(server) as client:
        failed = (await client.post("/run/breaks", json={"jobId": "f1"})).json()
        await client.post("/run/greet", json={"jobId": "ok1"})
        health = await _health(client)
    last_ok = health["tasks"]["greet"]["lastJob"]
    assert set(last_ok) == {"jobId", "success", "finished", "duration"}
    last_failed = health["tasks"]["breaks"]["lastJob"]
    assert set(last_failed) == {"jobId", "success", "finished", "duration", "error"}
    assert last_failed["error"] == failed["error"]
    assert isinstance(last_failed["error"], dict)


async def test_events_frames_carry_the_same_shapes(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = _server(tmp_path)
    async with open_test_client(server) as client:
        failed = (await client.post("/run/breaks", json={"jobId": "f1"})).json()
        first = b""

        async def read_first_frame(response: httpx.Response) -> None:
            nonlocal first
            async for chunk in response.aiter_raw():
                first += chunk
                if first.endswith(b"\n\n"):
                    nursery.cancel_scope.cancel()  # unwinds httpx's generators cleanly

        async with client.stream("GET", "/events") as response, trio.open_nursery() as nursery:
            nursery.start_soon(read_first_frame, response)
    assert first.startswith(b"data: ")
    frame = json.loads(first[len(b"data: ") :])
    entry = frame["tasks"]["breaks"]["results"][0]
    assert entry["error"] == failed["error"]
    assert frame["tasks"]["breaks"]["lastJob"]["error"] == failed["error"]
