"""GET /events: the Server-Sent Events stream of health snapshots, in virtual time."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import trio
from trio.testing import MockClock

import funtask
from funtask.testing import open_test_client

from _support import TOKEN, build_server, wait_until

KEEPALIVE = b": keepalive\n\n"
MIN_FRAME_INTERVAL = 0.05  # seconds, SPEC 1 "GET /events"


class Frame(NamedTuple):
    """One SSE frame and the (virtual) time it arrived."""

    time: float
    raw: bytes

    @property
    def doc(self) -> Any:
        """The JSON snapshot of a ``data:`` frame."""
        assert self.raw.startswith(b"data: "), self.raw
        assert self.raw.endswith(b"\n\n"), self.raw
        payload = self.raw[len(b"data: ") : -2]
        assert b"\n" not in payload
        return json.loads(payload)


class EventStream:
    """Splits a streaming response into SSE frames, however the chunks cut or join them.

    A background task reads the body; closing cancels that task, which unwinds
    httpx's async generators cleanly (breaking out of ``async for`` would leave
    them for the garbage collector, and Trio warns about that).
    """

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.ended = trio.Event()
        self.read_error: httpx.ReadError | None = None
        self._send, self._receive = trio.open_memory_channel[Frame](math.inf)

    async def pump(self) -> None:
        buffer = b""
        try:
            async for chunk in self.response.aiter_raw():
                buffer += chunk
                while b"\n\n" in buffer:
                    frame, _, buffer = buffer.partition(b"\n\n")
                    self._send.send_nowait(Frame(trio.current_time(), frame + b"\n\n"))
        except httpx.ReadError as exc:  # the client was closed under the stream
            self.read_error = exc
        assert buffer == b"", buffer
        self.ended.set()
        self._send.close()

    async def next(self) -> Frame:
        """The next frame (keepalives included)."""
        return await self._receive.receive()

    async def next_data(self) -> Frame:
        """The next ``data:`` frame, skipping keepalives."""
        while True:
            frame = await self.next()
            if frame.raw != KEEPALIVE:
                return frame

    async def rest(self) -> list[Frame]:
        """Every frame until the server ends the stream."""
        return [frame async for frame in self._receive]


@asynccontextmanager
async def open_events(
    client: httpx.AsyncClient, url: str = "/events"
) -> AsyncIterator[EventStream]:
    """Open ``/events`` and read it in the background until the block ends."""
    async with client.stream("GET", url) as response, trio.open_nursery() as nursery:
        assert response.status_code == 200, response.status_code
        stream = EventStream(response)
        nursery.start_soon(stream.pump)
        try:
            yield stream
        finally:
            nursery.cancel_scope.cancel()


def task_doc(frame: Frame, task: str) -> Any:
    return frame.doc["tasks"][task]


@pytest.fixture
def server(tmp_path: Path) -> funtask.Server:
    return build_server(tmp_path)


async def test_headers_and_initial_snapshot(
    autojump_clock: MockClock, server: funtask.Server
) -> None:
    with trio.fail_after(10):
        async with open_test_client(server) as client:
            opened_at = trio.current_time()
            async with client.stream("GET", "/events") as response:
                assert response.status_code == 200
                assert response.headers["content-type"] == "text/event-stream"
                assert response.headers["cache-control"] == "no-cache"
                assert response.headers["x-accel-buffering"] == "no"
            async with open_events(client) as events:
                first = await events.next()
                health = await client.get("/health")
    assert first.time == opened_at  # at once, no waiting
    assert first.raw == b"data: " + health.content + b"\n\n"
    assert first.doc == health.json()
    assert first.doc["tasks"]["greet"]["status"] == "idle"


async def test_a_frame_when_a_job_starts_steps_and_ends(
    autojump_clock: MockClock, server: funtask.Server
) -> None:
    step_now = trio.Event()
    finish_now = trio.Event()

    async def stepper(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        await step_now.wait()
        run.step("halfway")
        await finish_now.wait()
        return funtask.ok("done")

    server.add_task("stepper", stepper, description="Waits for the test")
    with trio.fail_after(60):
        async with (
            open_test_client(server) as client,
            open_events(client) as events,
            trio.open_nursery() as nursery,
        ):
            idle = await events.next()
            assert task_doc(idle, "stepper") == {
                "status": "idle",
                "description": "Waits for the test",
            }
            nursery.start_soon(partial(client.post, "/run/stepper", json={"jobId": "j1"}))
            started = await events.next()
            assert task_doc(started, "stepper")["status"] == "running"
            assert task_doc(started, "stepper")["currentJob"]["jobId"] == "j1"
            assert "currentStep" not in task_doc(started, "stepper")["currentJob"]

            step_now.set()
            stepped = await events.next()
            assert task_doc(stepped, "stepper")["currentJob"]["currentStep"] == "halfway"

            finish_now.set()
            ended = await events.next()
            doc = task_doc(ended, "stepper")
            assert doc["status"] == "idle"
            assert "currentJob" not in doc
            assert doc["lastJob"]["jobId"] == "j1"
            assert doc["lastJob"]["success"] is True
            assert doc["results"][0]["message"] == "done"
            assert ended.doc == (await client.get("/health")).json()


async def test_keepalive_after_30_quiet_seconds(
    autojump_clock: MockClock, server: funtask.Server
) -> None:
    with trio.fail_after(600):
        async with open_test_client(server) as client, open_events(client) as events:
            first = await events.next()
            keepalives = [await events.next() for _ in range(4)]
    assert [frame.raw for frame in keepalives] == [KEEPALIVE] * 4
    # Also proves no response timeout (Quart's default is 60 s) ends the stream.
    assert [frame.time - first.time for frame in keepalives] == pytest.approx([30, 60, 90, 120])


@pytest.mark.parametrize("pause", [0, 0.01])
async def test_a_burst_of_progress_is_coalesced(
    autojump_clock: MockClock, server: funtask.Server, pause: float
) -> None:
    hold = trio.Event()

    async def burst(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        for round_ in range(3):
            for i in range(10_000):
                run.progress(round_ * 10_000 + i + 1, 30_000, f"round {round_ + 1}")
            await trio.sleep(pause)
        await hold.wait()
        return funtask.ok("burst done")

    server.add_task("burst", burst)
    frames: list[Frame] = []
    with trio.fail_after(60):
        async with (
            open_test_client(server) as client,
            open_events(client) as events,
            trio.open_nursery() as nursery,
        ):
            frames.append(await events.next())
            nursery.start_soon(client.post, "/run/burst")
            while True:
                frame = await events.next_data()
                frames.append(frame)
                job = task_doc(frame, "burst").get("currentJob", {})
                if job.get("progress", {}).get("current") == 30_000:
                    break
            hold.set()
            ended = await events.next_data()
    assert len(frames) < 20
    last = task_doc(frames[-1], "burst")["currentJob"]
    assert last["progress"] == {"current": 30_000, "total": 30_000, "percent": 100}
    assert last["currentStep"] == "round 3"
    seen = [
        task_doc(frame, "burst")["currentJob"].get("progress", {}).get("current", 0)
        for frame in frames[1:]
    ]
    assert seen == sorted(seen)
    assert task_doc(ended, "burst")["results"][0]["message"] == "burst done"


async def test_at_most_one_frame_per_50_ms(
    autojump_clock: MockClock, server: funtask.Server
) -> None:
    async def ticker(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        for i in range(100):
            run.progress(i + 1, 100, f"tick {i + 1}")
            await trio.sleep(0.01)
        return funtask.ok("ticked")

    server.add_task("ticker", ticker)
    frames: list[Frame] = []
    with trio.fail_after(60):
        async with (
            open_test_client(server) as client,
            open_events(client) as events,
            trio.open_nursery() as nursery,
        ):
            frames.append(await events.next())
            nursery.start_soon(client.post, "/run/ticker")
            while "lastJob" not in task_doc(frames[-1], "ticker"):
                frames.append(await events.next_data())
    gaps = [later.time - earlier.time for earlier, later in itertools.pairwise(frames)]
    assert min(gaps) >= MIN_FRAME_INTERVAL - 1e-9
    # The job runs 1 s: about one frame per 50 ms, and it did stream its progress.
    assert 10 <= len(frames) <= 1.0 / MIN_FRAME_INTERVAL + 3
    percents = [
        task_doc(frame, "ticker")["currentJob"]["progress"]["percent"]
        for frame in frames
        if "currentJob" in task_doc(frame, "ticker")
    ]
    assert percents == sorted(percents)
    assert len(set(percents)) >= 10


async def test_token_in_header_or_query(autojump_clock: MockClock, server: funtask.Server) -> None:
    with trio.fail_after(10):
        async with open_test_client(server, authorized=False) as client:
            missing = await client.get("/events")
            wrong_query = await client.get("/events", params={"token": "wrong"})
            wrong_header = await client.get("/events", headers={"Authorization": "Bearer wrong"})
            empty_query = await client.get("/events?token=")
            async with open_events(client, f"/events?token={TOKEN}") as events:
                first = await events.next()
    for response in (missing, wrong_query, wrong_header, empty_query):
        assert response.status_code == 401
        assert response.json() == {"error": "unauthorized"}
    assert first.doc["name"] == "testsrv"


async def test_503_while_draining(autojump_clock: MockClock, server: funtask.Server) -> None:
    with trio.fail_after(10):
        async with open_test_client(server) as client:
            runtime = server._runtime
            assert runtime is not None
            async with open_events(client) as events:
                assert (await events.next()).doc["status"] == "ok"
                runtime.begin_draining()
                assert (await events.next()).doc["status"] == "draining"
                refused = await client.get("/events")
    assert refused.status_code == 503
    assert refused.json() == {"error": "server is shutting down"}


async def test_max_event_clients_and_client_count(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = build_server(tmp_path, max_event_clients=2)
    with trio.fail_after(10):
        async with open_test_client(server) as client:
            runtime = server._runtime
            assert runtime is not None
            assert runtime.events.clients == 0
            async with open_events(client) as one, open_events(client) as two:
                first_one, first_two = await one.next(), await two.next()
                assert runtime.events.clients == 2
                third = await client.get("/events")
                assert third.status_code == 503
                assert third.json() == {"error": "too many event streams"}
            await wait_until(lambda: runtime.events.clients == 0)
            async with open_events(client) as again:
                await again.next()
                assert runtime.events.clients == 1
            await wait_until(lambda: runtime.events.clients == 0)
    assert first_one.raw == first_two.raw


async def test_drain_ends_open_streams(autojump_clock: MockClock, server: funtask.Server) -> None:
    with trio.fail_after(10):
        async with open_test_client(server) as client:
            runtime = server._runtime
            assert runtime is not None
            async with open_events(client) as first, open_events(client) as second:
                await first.next()
                await second.next()
                drain_at = trio.current_time()
                await runtime.drain()
                rest = await first.rest() + await second.rest()
                ended_at = trio.current_time()
                assert first.read_error is None
                assert second.read_error is None
            assert runtime.events.clients == 0
            assert (await client.get("/events")).status_code == 503
    assert ended_at - drain_at < 1
    assert all(frame.raw != KEEPALIVE for frame in rest)


async def test_leaving_the_test_client_ends_open_streams_promptly(
    autojump_clock: MockClock, server: funtask.Server
) -> None:
    followed = trio.Event()
    done = trio.Event()

    async def follow(client: httpx.AsyncClient) -> None:
        async with open_events(client) as events:
            await events.next()
            followed.set()
            await events.ended.wait()
        done.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with open_test_client(server) as client:
                runtime = server._runtime
                assert runtime is not None
                nursery.start_soon(follow, client)
                await followed.wait()
                assert runtime.events.clients == 1
                left_at = trio.current_time()
            closed_at = trio.current_time()
            await done.wait()
    assert closed_at - left_at < 1
    assert runtime.events.clients == 0


async def test_many_clients_share_a_slower_clock_but_see_a_job_end_at_once(
    autojump_clock: MockClock, server: funtask.Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Four clients with a budget of 20 progress frames/s in all: each may have
    # one every 0.2 s, on ticks of the 50 ms clock they share.
    monkeypatch.setattr("funtask._events.MAX_PROGRESS_FRAMES_PER_SECOND", 20)
    finish_now = trio.Event()

    async def ticker(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        for i in range(1, 1001):
            run.progress(i, 1000)
            await trio.sleep(0.002)
        await finish_now.wait()
        return funtask.ok("done")

    server.add_task("ticker", ticker)
    with trio.fail_after(60):
        async with open_test_client(server) as client, trio.open_nursery() as nursery:
            streams = []
            for _ in range(4):
                streams.append(await nursery.start(_collect_events, client))
            await trio.sleep(0.3)
            start = trio.current_time()
            nursery.start_soon(partial(client.post, "/run/ticker", json={"jobId": "t1"}))
            await trio.sleep(2.5)
            ended_at = trio.current_time()
            finish_now.set()
            await wait_until(
                lambda: all(
                    any(task_doc(f, "ticker").get("lastJob") for f in s.frames) for s in streams
                )
            )
            nursery.cancel_scope.cancel()

    for stream in streams:
        progress = [
            f
            for f in stream.frames
            if start < f.time < ended_at
            and task_doc(f, "ticker").get("currentJob", {}).get("progress")
        ]
        gaps = [b.time - a.time for a, b in itertools.pairwise(progress)]
        assert len(progress) >= 8  # about 2 s / 0.2 s; never starved
        assert min(gaps) >= 0.2 - 1e-9  # the budget holds per client
        for frame in progress:  # on the shared clock
            assert frame.time / MIN_FRAME_INTERVAL == pytest.approx(
                round(frame.time / MIN_FRAME_INTERVAL)
            )
        final = next(f for f in stream.frames if task_doc(f, "ticker").get("lastJob"))
        assert final.time - ended_at <= MIN_FRAME_INTERVAL  # a job's end is not held back
    # The clients got the same snapshots: one serialisation per tick, shared.
    first = {f.time: f.raw for f in streams[0].frames if start < f.time < ended_at}
    for stream in streams[1:]:
        for frame in stream.frames:
            if frame.time in first:
                assert frame.raw == first[frame.time]


class _Collected:
    def __init__(self) -> None:
        self.frames: list[Frame] = []


async def _collect_events(
    client: httpx.AsyncClient, *, task_status: trio.TaskStatus[_Collected]
) -> None:
    collected = _Collected()
    async with open_events(client) as events:
        collected.frames.append(await events.next_data())
        task_status.started(collected)
        while True:
            collected.frames.append(await events.next_data())
