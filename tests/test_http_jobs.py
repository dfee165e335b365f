"""Jobs over HTTP: result codes, cancellation, max duration, task kinds, /health, /result.

Every test drives a whole server through ``open_test_client`` under an
autojump ``MockClock``. States are awaited with conditions (``trio.Event``
objects set from the tasks, or ``/health`` polled with virtual-time sleeps),
never with wall-clock sleeps. While a ``def`` task runs in a worker thread the
library holds the autojump clock still, so thread tests wait on events only
(a virtual-time sleep would never end) and every thread loop is capped in
real time so a library bug fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trio
from trio.testing import MockClock

import funtask
from funtask.testing import open_test_client

from _support import (
    TOKEN,
    add_failer,
    add_raiser,
    add_sleeper,
    add_stubborn,
    add_succeeder,
)

MAX_RESULT_SIZE = 10 * 1024 * 1024
ALLOW = ["https://hooks.example.com"]
CALLBACK = "https://hooks.example.com/done"
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z")
THREAD_CAP = 10.0  # real seconds a thread test may loop before giving up


def make_server(tmp_path: Path, **config: Any) -> funtask.Server:
    """A server with a token and a dead-letter dir, and no tasks yet."""
    config.setdefault("auth_token", TOKEN)
    return funtask.Server("jobs", dead_letter_dir=tmp_path, **config)


@dataclass
class Pending:
    """A request running in the background; ``await pending.response()`` waits for it."""

    done: trio.Event = field(default_factory=trio.Event)
    value: httpx.Response | None = None

    async def response(self) -> httpx.Response:
        await self.done.wait()
        assert self.value is not None
        return self.value


def post_soon(
    nursery: trio.Nursery, client: httpx.AsyncClient, url: str, **kwargs: Any
) -> Pending:
    """Start ``client.post(url, **kwargs)`` in ``nursery``."""
    pending = Pending()

    async def send() -> None:
        pending.value = await client.post(url, **kwargs)
        pending.done.set()

    nursery.start_soon(send)
    return pending


async def wait_until_running(client: httpx.AsyncClient, task: str) -> dict[str, Any]:
    """Poll ``/health`` (virtual-time sleeps) until ``task`` has a current job; return it."""
    for _ in range(1000):
        health = (await client.get("/health")).json()
        current = health["tasks"][task].get("currentJob")
        if current is not None:
            return dict(current)
        await trio.sleep(0.01)
    raise AssertionError(f"task {task!r} never started running")


async def wait_for_result(client: httpx.AsyncClient, job_id: str) -> httpx.Response:
    """Poll ``/result/{job_id}`` (one virtual second apart) until it is stored."""
    for _ in range(10_000):
        response = await client.get(f"/result/{job_id}")
        if response.status_code == 200:
            return response
        await trio.sleep(1)
    raise AssertionError(f"no result for {job_id!r}")


def failure(job_id: str, duration: str, ms: int, **error: str) -> dict[str, Any]:
    """The job response of a failed job."""
    return {
        "jobId": job_id,
        "success": False,
        "duration": duration,
        "durationMs": ms,
        "error": error,
    }


def overrun(
    job_id: str, duration: str, ms: int, *, limit: str = "10m0s", **error: str
) -> dict[str, Any]:
    """The job response of a job stopped by its max duration of ``limit``."""
    return failure(
        job_id,
        duration,
        ms,
        code="max_duration_exceeded",
        message=f"job exceeded maximum duration ({limit})",
        **error,
    )


def timestamp(text: str) -> datetime:
    """Check ``text`` is RFC 3339 in UTC with a ``Z`` and return it parsed."""
    assert RFC3339_UTC.fullmatch(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def pop_finished(entry: dict[str, Any]) -> dict[str, Any]:
    """Check and drop the wall-clock ``finished`` timestamp of a /health entry."""
    entry = dict(entry)
    finished = timestamp(entry.pop("finished"))
    assert abs(finished - datetime.now(timezone.utc)) < timedelta(minutes=5)
    return entry


async def run_once(
    server: funtask.Server, task: str, job_id: str = "j1", **kwargs: Any
) -> httpx.Response:
    """Run ``task`` synchronously once on a fresh client."""
    async with open_test_client(server) as client:
        return await client.post(f"/run/{task}", json={"jobId": job_id, **kwargs})


# -- 1. result codes produced by the library ---------------------------------------------


async def test_exception_is_panic_and_traceback_only_in_the_log(
    autojump_clock: MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(tmp_path)
    add_raiser(server, "explode", lambda: ValueError("boom"))
    caplog.set_level(logging.DEBUG, logger="funtask")
    response = await run_once(server, "explode")
    assert response.status_code == 200
    assert response.json() == failure("j1", "0s", 0, code="panic", message="boom")
    assert "Traceback" not in response.text
    assert "ValueError" not in response.text
    logged = [
        record
        for record in caplog.records
        if record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
    ]
    assert logged, caplog.text
    assert all(record.name.startswith("funtask.") for record in logged)
    assert logged[0].levelno == logging.ERROR
    assert str(logged[0].exc_info[1]) == "boom"  # type: ignore[index]
    assert "Traceback" in caplog.text
    assert (logged[0].task, logged[0].job_id) == ("explode", "j1")  # type: ignore[attr-defined]


class Quiet(Exception):
    pass


@pytest.mark.parametrize(
    ("exc", "name"),
    [(Quiet(), "Quiet"), (KeyError(), "KeyError"), (RuntimeError(""), "RuntimeError")],
)
async def test_exception_without_message_reports_its_type_name(
    autojump_clock: MockClock, tmp_path: Path, exc: Exception, name: str
) -> None:
    server = make_server(tmp_path)
    add_raiser(server, "silent", lambda: exc)
    response = await run_once(server, "silent")
    assert response.json() == failure("j1", "0s", 0, code="panic", message=name)


async def test_task_error_gives_code_and_user_message(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path)

    @server.task
    async def query(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("connecting")
        await trio.sleep(1.5)
        raise funtask.TaskError("db_error", "tech detail", user_message="try later")

    response = await run_once(server, "query")
    assert response.json() == failure(
        "j1", "1.5s", 1500, code="db_error", message="try later", step="connecting"
    )
    assert "tech detail" not in response.text


async def test_task_error_without_user_message_uses_its_message(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path)
    add_raiser(server, "query", lambda: funtask.TaskError("db_error", "connection refused"))
    response = await run_once(server, "query")
    assert response.json() == failure("j1", "0s", 0, code="db_error", message="connection refused")


async def test_task_error_inside_a_nursery_keeps_its_code(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path)

    async def failing_child() -> None:
        await trio.sleep(2)
        raise funtask.TaskError("db_error", "tech detail", user_message="try later")

    @server.task
    async def fan_out(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("fanning out")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(failing_child)
        return funtask.ok("unreachable")

    response = await run_once(server, "fan_out")
    assert response.json() == failure(
        "j1", "2s", 2000, code="db_error", message="try later", step="fanning out"
    )


async def test_task_error_among_several_errors_in_a_group(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path)

    # No checkpoint before the raise: both children always fail, so the group holds both.
    async def raise_now(exc: Exception) -> None:
        raise exc

    @server.task
    async def fan_out(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(raise_now, ValueError("other"))
            nursery.start_soon(
                raise_now, funtask.TaskError("db_error", "tech", user_message="try later")
            )
        return funtask.ok("unreachable")

    response = await run_once(server, "fan_out")
    assert response.json() == failure("j1", "0s", 0, code="db_error", message="try later")


class QuotaError(Exception):
    error_code = "quota_exceeded"


async def test_exception_carrying_error_code(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = make_server(tmp_path)
    add_raiser(server, "direct", lambda: QuotaError("over quota"))

    @server.task
    async def chained(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        try:
            raise QuotaError("inner")
        except QuotaError as exc:
            raise RuntimeError("upload failed") from exc

    add_raiser(server, "empty", QuotaError)
    async with open_test_client(server) as client:
        one = await client.post("/run/direct", json={"jobId": "a"})
        two = await client.post("/run/chained", json={"jobId": "b"})
        three = await client.post("/run/empty", json={"jobId": "c"})
    assert one.json() == failure("a", "0s", 0, code="quota_exceeded", message="over quota")
    assert two.json() == failure("b", "0s", 0, code="quota_exceeded", message="upload failed")
    assert three.json() == failure("c", "0s", 0, code="quota_exceeded", message="QuotaError")


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(None, "NoneType"), ({"success": True}, "dict"), ("ok", "str"), (True, "bool")],
)
async def test_non_result_is_invalid_result(
    autojump_clock: MockClock, tmp_path: Path, value: object, type_name: str
) -> None:
    server = make_server(tmp_path)

    @server.task
    async def sloppy(run: funtask.Run, params: funtask.Params) -> Any:
        run.step("returning")
        return value

    response = await run_once(server, "sloppy")
    assert response.json() == failure(
        "j1",
        "0s",
        0,
        code="invalid_result",
        message=f"task returned {type_name}, not a Result",
        step="returning",
    )


def _circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


def _deep() -> list[Any]:
    nested: list[Any] = []
    for _ in range(100_000):
        nested = [nested]
    return nested


@pytest.mark.parametrize(
    "make_value",
    [
        lambda: {1, 2},
        lambda: float("nan"),
        lambda: float("inf"),
        lambda: float("-inf"),
        lambda: [1.0, {"x": math.nan}],
        object,
        lambda: b"bytes",
        lambda: {(1, 2): "tuple key"},
        lambda: 10**5000,
        _circular,
        _deep,
    ],
    ids=[
        "set",
        "nan",
        "inf",
        "-inf",
        "nested-nan",
        "object",
        "bytes",
        "tuple-key",
        "huge-int",
        "circular",
        "deep",
    ],
)
async def test_unserialisable_data(
    autojump_clock: MockClock, tmp_path: Path, make_value: Callable[[], object]
) -> None:
    server = make_server(tmp_path)

    @server.task
    async def produce(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("packing")
        return funtask.ok("done").with_data("value", make_value()).with_data("n", 1)

    async with open_test_client(server) as client:
        response = await client.post("/run/produce", json={"jobId": "j1"})
        stored = await client.get("/result/j1")
    assert response.status_code == 200
    expected = failure(
        "j1",
        "0s",
        0,
        code="result_serialization_failed",
        message="result could not be serialized",
        step="packing",
    )
    assert response.json() == expected
    assert stored.json() == expected


def _size_of_success(data: str) -> int:
    doc = {"jobId": "big", "success": True, "duration": "0s", "durationMs": 0, "data": {"s": data}}
    return len(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode())


async def test_result_of_exactly_the_maximum_size_is_sent(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path)
    overhead = _size_of_success("")
    text = "x" * (MAX_RESULT_SIZE - overhead)
    assert _size_of_success(text) == MAX_RESULT_SIZE

    @server.task
    async def big(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        return funtask.ok().with_data("s", text)

    response = await run_once(server, "big", job_id="big")
    assert len(response.content) == MAX_RESULT_SIZE
    assert response.json()["success"] is True
    assert response.json()["data"]["s"] == text


@pytest.mark.parametrize(
    "make_text",
    [
        lambda overhead: "x" * (MAX_RESULT_SIZE - overhead + 1),
        # Fewer than 10 Mi characters, but more than 10 MiB of UTF-8.
        lambda overhead: "\u00e9" * (MAX_RESULT_SIZE // 2),
    ],
    ids=["one-byte-over", "multibyte"],
)
async def test_result_over_10_mib_is_result_too_large(
    autojump_clock: MockClock, tmp_path: Path, make_text: Callable[[int], str]
) -> None:
    server = make_server(tmp_path)
    text = make_text(_size_of_success(""))
    assert _size_of_success(text) > MAX_RESULT_SIZE
    assert len(text) < MAX_RESULT_SIZE

    @server.task
    async def big(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("exporting")
        return funtask.ok("exported").with_data("s", text)

    async with open_test_client(server) as client:
        response = await client.post("/run/big", json={"jobId": "big"})
        health = (await client.get("/health")).json()
    expected = failure(
        "big",
        "0s",
        0,
        code="result_too_large",
        message="result exceeds maximum size (10 MB)",
        step="exporting",
    )
    assert response.json() == expected
    assert pop_finished(health["tasks"]["big"]["results"][0]) == {
        "jobId": "big",
        "success": False,
        "duration": "0s",
        "message": "result exceeds maximum size (10 MB)",
        "error": {
            "code": "result_too_large",
            "message": "result exceeds maximum size (10 MB)",
            "step": "exporting",
        },
    }


async def test_error_step_is_the_last_step_reported(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path)

    @server.task
    async def steps(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("fetching")
        run.progress(1, 3, "parsing")
        run.progress(2, 3)  # keeps the step
        return funtask.fail("bad_input", "row 7 is broken")

    @server.task
    async def own_step(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("fetching")
        return funtask.Result(False, "nope", "bad_input", last_step="explicit")

    add_failer(server, "no_step", "bad_input", "no steps at all")
    async with open_test_client(server) as client:
        one = (await client.post("/run/steps", json={"jobId": "a"})).json()
        two = (await client.post("/run/own_step", json={"jobId": "b"})).json()
        three = (await client.post("/run/no_step", json={"jobId": "c"})).json()
    assert one == failure(
        "a", "0s", 0, code="bad_input", message="row 7 is broken", step="parsing"
    )
    assert two == failure("b", "0s", 0, code="bad_input", message="nope", step="explicit")
    assert three == failure("c", "0s", 0, code="bad_input", message="no steps at all")
    assert "step" not in three["error"]


async def test_success_omits_empty_message_and_data(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path)
    add_sleeper(server, "bare", seconds=1.234, step="working", message="")

    @server.task
    async def data_only(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        return funtask.ok().with_data("count", 3)

    add_succeeder(server, "message_only", "done")
    async with open_test_client(server) as client:
        bare_body = (await client.post("/run/bare", json={"jobId": "a"})).json()
        data_body = (await client.post("/run/data_only", json={"jobId": "b"})).json()
        message_body = (await client.post("/run/message_only", json={"jobId": "c"})).json()
    assert bare_body == {"jobId": "a", "success": True, "duration": "1.234s", "durationMs": 1234}
    assert data_body == {
        "jobId": "b",
        "success": True,
        "duration": "0s",
        "durationMs": 0,
        "data": {"count": 3},
    }
    assert message_body == {
        "jobId": "c",
        "success": True,
        "message": "done",
        "duration": "0s",
        "durationMs": 0,
    }


# -- 2. cancellation -------------------------------------------------------------------


async def test_stop_during_a_sync_run(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = make_server(tmp_path)
    add_sleeper(server)
    async with open_test_client(server) as client, trio.open_nursery() as nursery:
        pending = post_soon(nursery, client, "/run/sleeper", json={"jobId": "s1"})
        current = await wait_until_running(client, "sleeper")
        assert current["jobId"] == "s1"
        await trio.sleep(2.5)
        start = trio.current_time()
        stop = await client.post("/stop/sleeper")
        assert stop.status_code == 200
        assert stop.json() == {
            "task": "sleeper",
            "jobId": "s1",
            "message": "Cancellation requested",
        }
        response = await pending.response()
        assert trio.current_time() == start
        stored = await client.get("/result/s1")
        health = (await client.get("/health")).json()
    assert response.status_code == 200
    body = response.json()
    assert body["error"] == {
        "code": "cancelled",
        "message": "job cancelled via /stop",
        "step": "sleeping",
    }
    assert body["success"] is False
    assert body["jobId"] == "s1"
    assert stored.json() == body
    assert health["tasks"]["sleeper"]["status"] == "idle"
    assert health["tasks"]["sleeper"]["lastJob"]["error"]["code"] == "cancelled"


async def test_stop_with_nothing_running_and_unknown_task(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path)
    add_succeeder(server, "x")
    async with open_test_client(server) as client:
        idle = await client.post("/stop/x")
        await client.post("/run/x")
        after = await client.post("/stop/x")
        unknown = await client.post("/stop/nope")
        quoted = await client.post('/stop/a"b')
    assert idle.status_code == 200
    assert idle.json() == {"task": "x", "message": "No running job"}
    assert after.json() == {"task": "x", "message": "No running job"}
    assert unknown.status_code == 404
    assert unknown.json() == {"error": 'task "nope" not found'}
    assert quoted.status_code == 404
    assert quoted.json() == {"error": 'task "a\\"b" not found'}


async def test_stop_requires_auth(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = make_server(tmp_path)
    add_succeeder(server, "x")
    async with open_test_client(server, authorized=False) as client:
        response = await client.post("/stop/x")
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}


async def test_task_that_catches_cancellation_returns_its_own_result(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path)
    started = trio.Event()

    @server.task
    async def careful(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("working")
        started.set()
        try:
            await trio.sleep(3600)
        except trio.Cancelled:
            return funtask.ok("stopped cleanly").with_data("saved", 3)
        return funtask.ok("finished")

    async with open_test_client(server) as client, trio.open_nursery() as nursery:
        pending = post_soon(nursery, client, "/run/careful", json={"jobId": "c1"})
        await started.wait()
        await trio.sleep(4)
        await client.post("/stop/careful")
        response = await pending.response()
    assert response.json() == {
        "jobId": "c1",
        "success": True,
        "message": "stopped cleanly",
        "duration": "4s",
        "durationMs": 4000,
        "data": {"saved": 3},
    }


async def test_first_reason_wins_stop_then_sync_timeout(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path, sync_timeout=10)
    started = trio.Event()
    add_stubborn(server, shielded=30, started=started)

    async with open_test_client(server) as client, trio.open_nursery() as nursery:
        pending = post_soon(nursery, client, "/run/stubborn", json={"jobId": "f1"})
        await started.wait()
        start = trio.current_time()
        stop = await client.post("/stop/stubborn")
        assert stop.json()["message"] == "Cancellation requested"
        again = await client.post("/stop/stubborn")
        assert again.json() == {
            "task": "stubborn",
            "jobId": "f1",
            "message": "Cancellation requested",
        }
        response = await pending.response()
        assert trio.current_time() - start == pytest.approx(10)
        assert response.status_code == 504
        assert response.json() == {
            "error": "Sync mode timeout exceeded (10s). Use callbackUrl for long-running tasks.",
            "jobId": "f1",
        }
        stored = await wait_for_result(client, "f1")
    assert stored.json() == failure(
        "f1",
        "30s",
        30000,
        code="cancelled",
        message="job cancelled via /stop",
        step="stubborn",
    )


async def test_first_reason_wins_sync_timeout_then_stop(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path, sync_timeout=10)
    started = trio.Event()
    add_stubborn(server, shielded=30, started=started)

    async with open_test_client(server) as client:
        response = await client.post("/run/stubborn", json={"jobId": "f2"})
        assert response.status_code == 504
        stop = await client.post("/stop/stubborn")
        assert stop.json() == {
            "task": "stubborn",
            "jobId": "f2",
            "message": "Cancellation requested",
        }
        stored = await wait_for_result(client, "f2")
    assert stored.json()["error"] == {
        "code": "cancelled",
        "message": "job cancelled: sync timeout",
        "step": "stubborn",
    }


# -- 3. max_duration ---------------------------------------------------------------------


@pytest.mark.parametrize("max_duration", [600, 600.0, timedelta(minutes=10)])
async def test_max_duration_async_run(
    autojump_clock: MockClock, tmp_path: Path, max_duration: float | timedelta
) -> None:
    server = make_server(tmp_path, max_duration=max_duration, callback_allowlist=ALLOW)
    add_sleeper(server)
    async with open_test_client(server) as client:
        start = trio.current_time()
        accepted = await client.post("/run/sleeper", json={"jobId": "m1", "callbackUrl": CALLBACK})
        assert accepted.status_code == 202
        assert accepted.json() == {"jobId": "m1"}
        await trio.sleep(599.5)
        assert (await client.get("/result/m1")).status_code == 404
        assert (await wait_until_running(client, "sleeper"))["running"] == "10m0s"
        await trio.sleep(1)
        stored = await client.get("/result/m1")
        health = (await client.get("/health")).json()
        assert trio.current_time() - start == pytest.approx(600.5)
    assert stored.status_code == 200
    assert stored.json() == overrun("m1", "10m0s", 600_000, step="sleeping")
    assert pop_finished(health["tasks"]["sleeper"]["lastJob"]) == {
        "jobId": "m1",
        "success": False,
        "duration": "10m0s",
        "error": {
            "code": "max_duration_exceeded",
            "message": "job exceeded maximum duration (10m0s)",
            "step": "sleeping",
        },
    }


@pytest.mark.parametrize("max_duration", [600, timedelta(minutes=10)])
async def test_max_duration_sync_run(
    autojump_clock: MockClock, tmp_path: Path, max_duration: float | timedelta
) -> None:
    server = make_server(tmp_path, max_duration=max_duration, sync_timeout=900)
    add_sleeper(server)
    async with open_test_client(server) as client:
        start = trio.current_time()
        response = await client.post("/run/sleeper", json={"jobId": "m2"})
        assert trio.current_time() - start == 600
    assert response.status_code == 200
    assert response.json() == overrun("m2", "10m0s", 600_000, step="sleeping")


@pytest.mark.parametrize(
    ("max_duration", "text", "ms"),
    [(1.5, "1.5s", 1500), (90, "1m30s", 90_000), (timedelta(hours=2), "2h0m0s", 7_200_000)],
)
async def test_max_duration_message_formats(
    autojump_clock: MockClock, tmp_path: Path, max_duration: float | timedelta, text: str, ms: int
) -> None:
    server = make_server(tmp_path, max_duration=max_duration, sync_timeout=3 * 3600)
    add_sleeper(server, seconds=math.inf, step=None)
    response = await run_once(server, "sleeper")
    assert response.json() == overrun("j1", text, ms, limit=text)


async def test_max_duration_overrides_after_a_504(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    """The sync caller gets its 504 at 60 s; the job outlives the max duration."""
    server = make_server(tmp_path, max_duration=600, sync_timeout=60)
    add_stubborn(server, shielded=1000)
    async with open_test_client(server) as client:
        start = trio.current_time()
        response = await client.post("/run/stubborn", json={"jobId": "m3"})
        assert trio.current_time() - start == pytest.approx(60)
        assert response.status_code == 504
        stored = await wait_for_result(client, "m3")
    assert stored.json() == overrun("m3", "17m40s", 1_060_000, step="stubborn")


async def test_max_duration_overrides_what_the_task_returned(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path, max_duration=600, callback_allowlist=ALLOW)
    add_stubborn(server, shielded=5, returns=True)
    async with open_test_client(server) as client:
        await client.post("/run/stubborn", json={"jobId": "m4", "callbackUrl": CALLBACK})
        await trio.sleep(602)
        # Still running: it ignores the cancellation for 5 s.
        assert (await client.get("/result/m4")).status_code == 404
        await trio.sleep(4)
        stored = await client.get("/result/m4")
    assert stored.json() == overrun("m4", "10m5s", 605_000, step="stubborn")


async def test_max_duration_overrides_an_earlier_stop(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path, max_duration=600, sync_timeout=3600)
    started = trio.Event()
    add_stubborn(server, shielded=700, started=started, returns=True)
    async with open_test_client(server) as client, trio.open_nursery() as nursery:
        pending = post_soon(nursery, client, "/run/stubborn", json={"jobId": "m5"})
        await started.wait()
        await trio.sleep(1)
        await client.post("/stop/stubborn")
        response = await pending.response()
    assert response.json() == overrun("m5", "11m41s", 701_000, step="stubborn")


async def test_job_finishing_before_max_duration_is_untouched(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path, max_duration=600, sync_timeout=900)
    add_sleeper(server, "quick", seconds=599.999, step=None, message="in time")
    response = await run_once(server, "quick")
    assert response.json() == {
        "jobId": "j1",
        "success": True,
        "message": "in time",
        "duration": "9m59.999s",
        "durationMs": 599_999,
    }


# -- 4. task kinds -----------------------------------------------------------------------


async def test_plain_def_runs_in_a_worker_thread(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path)
    seen: list[threading.Thread] = []

    @server.task
    def blocking(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        seen.append(threading.current_thread())
        run.step("in a thread")
        return funtask.ok(f"hello {params.str('name')}").with_data("n", 1)

    response = await run_once(server, "blocking", params={"name": "thread"})
    assert response.json() == {
        "jobId": "j1",
        "success": True,
        "message": "hello thread",
        "duration": "0s",
        "durationMs": 0,
        "data": {"n": 1},
    }
    assert len(seen) == 1
    assert seen[0] is not threading.main_thread()
    assert seen[0] is not threading.current_thread()


async def test_plain_def_exception_is_panic(
    autojump_clock: MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(tmp_path)

    @server.task
    def blocking(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("parsing")
        raise ValueError("boom")

    @server.task
    def coded(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        raise funtask.TaskError("db_error", "tech", user_message="try later")

    @server.task
    def sloppy(run: funtask.Run, params: funtask.Params) -> Any:
        return {"success": True}

    async with open_test_client(server) as client:
        one = await client.post("/run/blocking", json={"jobId": "a"})
        two = await client.post("/run/coded", json={"jobId": "b"})
        three = await client.post("/run/sloppy", json={"jobId": "c"})
    assert one.json() == failure("a", "0s", 0, code="panic", message="boom", step="parsing")
    assert two.json() == failure("b", "0s", 0, code="db_error", message="try later")
    assert three.json() == failure(
        "c", "0s", 0, code="invalid_result", message="task returned dict, not a Result"
    )
    assert "Traceback" in caplog.text


async def test_plain_def_polling_run_cancelled_returns_its_own_result(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path)
    started = trio.Event()

    @server.task
    def polling(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("looping")
        trio.from_thread.run_sync(started.set)
        limit = time.monotonic() + THREAD_CAP
        while not run.cancelled:
            if time.monotonic() > limit:
                return funtask.fail("never_cancelled", "run.cancelled never became true")
            time.sleep(0.01)
        return funtask.ok("stopped early")

    async with open_test_client(server) as client, trio.open_nursery() as nursery:
        pending = post_soon(nursery, client, "/run/polling", json={"jobId": "p1"})
        await started.wait()
        stop = await client.post("/stop/polling")
        assert stop.json() == {
            "task": "polling",
            "jobId": "p1",
            "message": "Cancellation requested",
        }
        response = await pending.response()
    assert response.json() == {
        "jobId": "p1",
        "success": True,
        "message": "stopped early",
        "duration": "0s",
        "durationMs": 0,
    }


async def test_plain_def_check_cancelled_is_cancelled(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path)
    started = trio.Event()

    @server.task
    def checking(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("checking")
        trio.from_thread.run_sync(started.set)
        limit = time.monotonic() + THREAD_CAP
        while time.monotonic() < limit:
            run.check_cancelled()
            time.sleep(0.01)
        return funtask.fail("never_cancelled", "check_cancelled never raised")

    async with open_test_client(server) as client, trio.open_nursery() as nursery:
        pending = post_soon(nursery, client, "/run/checking", json={"jobId": "k1"})
        await started.wait()
        await client.post("/stop/checking")
        response = await pending.response()
    assert response.json() == failure(
        "k1", "0s", 0, code="cancelled", message="job cancelled via /stop", step="checking"
    )


async def test_plain_def_progress_shows_on_health(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path)
    reported = trio.Event()
    release = threading.Event()

    @server.task
    def counting(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.progress(3, 5, "T-3")
        trio.from_thread.run_sync(reported.set)
        if not release.wait(THREAD_CAP):
            return funtask.fail("never_released", "the test never released the thread")
        run.progress(5, 5, "T-0")
        return funtask.ok("counted")

    async with open_test_client(server) as client, trio.open_nursery() as nursery:
        pending = post_soon(nursery, client, "/run/counting", json={"jobId": "t1"})
        await reported.wait()
        try:
            current = (await client.get("/health")).json()["tasks"]["counting"]["currentJob"]
        finally:
            release.set()
        response = await pending.response()
    last_step_at = timestamp(current.pop("lastStepAt"))
    assert abs(last_step_at - datetime.now(timezone.utc)) < timedelta(minutes=5)
    assert current == {
        "jobId": "t1",
        "running": "0s",
        "currentStep": "T-3",
        "progress": {"current": 3, "total": 5, "percent": 60},
    }
    assert response.json()["message"] == "counted"


async def test_anyio_sleep_is_cancelled_by_stop(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = make_server(tmp_path)

    @server.task
    async def anyio_sleeper(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("anyio sleeping")
        await anyio.sleep(3600)
        return funtask.ok("slept")

    async with open_test_client(server) as client, trio.open_nursery() as nursery:
        pending = post_soon(nursery, client, "/run/anyio_sleeper", json={"jobId": "a1"})
        await wait_until_running(client, "anyio_sleeper")
        stop = await client.post("/stop/anyio_sleeper")
        assert stop.json()["jobId"] == "a1"
        response = await pending.response()
    body = response.json()
    assert body["error"] == {
        "code": "cancelled",
        "message": "job cancelled via /stop",
        "step": "anyio sleeping",
    }


async def test_anyio_task_group_is_cancelled_by_stop(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path)
    started = trio.Event()
    finished_children: list[int] = []

    async def child(index: int) -> None:
        await anyio.sleep(3600)
        finished_children.append(index)

    @server.task
    async def anyio_group(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("fanned out")
        async with anyio.create_task_group() as group:
            for index in range(3):
                group.start_soon(child, index)
            started.set()
        return funtask.ok("all done")

    async with open_test_client(server) as client, trio.open_nursery() as nursery:
        pending = post_soon(nursery, client, "/run/anyio_group", json={"jobId": "g1"})
        await started.wait()
        await trio.sleep(7)
        await client.post("/stop/anyio_group")
        response = await pending.response()
    assert response.json() == failure(
        "g1", "7s", 7000, code="cancelled", message="job cancelled via /stop", step="fanned out"
    )
    assert finished_children == []


async def test_anyio_task_error_in_task_group_keeps_its_code(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path)

    async def failing() -> None:
        await anyio.sleep(1)
        raise funtask.TaskError("upstream_down", "502 from upstream", user_message="later")

    @server.task
    async def anyio_group(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.sleep, 3600)
            group.start_soon(failing)
        return funtask.ok("unreachable")

    response = await run_once(server, "anyio_group")
    assert response.json() == failure("j1", "1s", 1000, code="upstream_down", message="later")


class AsyncCallable:
    """A task object whose ``__call__`` is a coroutine function."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    async def __call__(self, run: funtask.Run, params: funtask.Params) -> funtask.Result:
        self.threads.append(threading.current_thread())
        await trio.sleep(2)
        return funtask.ok("called")


async def test_object_with_async_call_is_async(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = make_server(tmp_path)
    task = AsyncCallable()
    server.add_task("callable", task)
    response = await run_once(server, "callable")
    assert response.json() == {
        "jobId": "j1",
        "success": True,
        "message": "called",
        "duration": "2s",
        "durationMs": 2000,
    }
    assert task.threads == [threading.main_thread()]


# -- 5. /health during and after jobs -----------------------------------------------------


async def test_health_while_a_job_runs(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = make_server(tmp_path)
    started = trio.Event()
    add_sleeper(
        server,
        "countdown",
        progress=(3, 5, "T-3"),
        started=started,
        description="Counts down",
        example={"start": 5},
    )
    async with open_test_client(server) as client, trio.open_nursery() as nursery:
        pending = post_soon(nursery, client, "/run/countdown", json={"jobId": "c1"})
        await started.wait()
        await trio.sleep(2.4)
        early = (await client.get("/health")).json()
        await trio.sleep(0.2)
        later = (await client.get("/health")).json()
        await client.post("/stop/countdown")
        await pending.response()
        after = (await client.get("/health")).json()

    for doc, running in ((early, "2s"), (later, "3s")):
        current = doc["tasks"]["countdown"]["currentJob"]
        timestamp(current.pop("lastStepAt"))
        assert doc == {
            "name": "jobs",
            "status": "ok",
            "uptime": running,
            "tasks": {
                "countdown": {
                    "status": "running",
                    "description": "Counts down",
                    "example": {"start": 5},
                    "currentJob": {
                        "jobId": "c1",
                        "running": running,
                        "currentStep": "T-3",
                        "progress": {"current": 3, "total": 5, "percent": 60},
                    },
                }
            },
        }
    task = after["tasks"]["countdown"]
    assert after["uptime"] == "3s"
    assert "currentJob" not in task
    assert task["status"] == "idle"
    assert pop_finished(task["lastJob"]) == {
        "jobId": "c1",
        "success": False,
        "duration": "2.6s",
        "error": {"code": "cancelled", "message": "job cancelled via /stop", "step": "T-3"},
    }
    assert [pop_finished(entry) for entry in task["results"]] == [
        {
            "jobId": "c1",
            "success": False,
            "duration": "2.6s",
            "message": "job cancelled via /stop",
            "error": {"code": "cancelled", "message": "job cancelled via /stop", "step": "T-3"},
        }
    ]


async def test_health_progress_only_when_total_is_positive(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path)
    started = trio.Event()
    add_sleeper(server, "warming", progress=(0, 0, "warming up"), started=started)
    add_sleeper(server, "stepping", step=None)
    async with open_test_client(server) as client, trio.open_nursery() as nursery:
        first = post_soon(nursery, client, "/run/warming", json={"jobId": "w"})
        second = post_soon(nursery, client, "/run/stepping", json={"jobId": "s"})
        await started.wait()
        await wait_until_running(client, "stepping")
        tasks = (await client.get("/health")).json()["tasks"]
        await client.post("/stop/warming")
        await client.post("/stop/stepping")
        await first.response()
        await second.response()
    warming_job = tasks["warming"]["currentJob"]
    timestamp(warming_job.pop("lastStepAt"))
    assert warming_job == {"jobId": "w", "running": "0s", "currentStep": "warming up"}
    # No step reported at all: no currentStep, progress or lastStepAt.
    assert tasks["stepping"]["currentJob"] == {"jobId": "s", "running": "0s"}


async def test_health_history_newest_first_and_bounded(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path, result_history=3)

    async def numbered(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        n = params.int("n")
        await trio.sleep(n)
        if n == 4:
            run.step("checking")
            return funtask.fail("odd_failure", f"job {n} failed")
        return funtask.ok(f"job {n}")

    server.add_task("default", numbered)
    server.add_task("few", numbered, keep_results=2)
    server.add_task("many", numbered, keep_results=4)

    async with open_test_client(server) as client:
        for task in ("default", "few", "many"):
            for n in range(1, 6):
                response = await client.post(
                    f"/run/{task}", json={"jobId": f"{task}-{n}", "params": {"n": n}}
                )
                assert response.status_code == 200
        health = (await client.get("/health")).json()
        evicted = await client.get("/result/few-3")
        kept = await client.get("/result/many-2")

    def entry(task: str, n: int) -> dict[str, Any]:
        if n == 4:
            return {
                "jobId": f"{task}-4",
                "success": False,
                "duration": "4s",
                "message": "job 4 failed",
                "error": {"code": "odd_failure", "message": "job 4 failed", "step": "checking"},
            }
        return {
            "jobId": f"{task}-{n}",
            "success": True,
            "message": f"job {n}",
            "duration": f"{n}s",
        }

    for task, kept_numbers in (("default", [5, 4, 3]), ("few", [5, 4]), ("many", [5, 4, 3, 2])):
        doc = health["tasks"][task]
        assert doc["status"] == "idle"
        assert [pop_finished(e) for e in doc["results"]] == [entry(task, n) for n in kept_numbers]
        assert pop_finished(doc["lastJob"]) == {
            "jobId": f"{task}-5",
            "success": True,
            "duration": "5s",
        }
    assert evicted.status_code == 404
    assert kept.status_code == 200
    assert kept.json()["message"] == "job 2"


async def test_health_last_job_of_a_failure(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = make_server(tmp_path)

    @server.task
    async def broken(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        await trio.sleep(0.012)
        raise funtask.TaskError("db_error", "tech", user_message="try later")

    async with open_test_client(server) as client:
        await client.post("/run/broken", json={"jobId": "b1"})
        task = (await client.get("/health")).json()["tasks"]["broken"]
    assert pop_finished(task["lastJob"]) == {
        "jobId": "b1",
        "success": False,
        "duration": "12ms",
        "error": {"code": "db_error", "message": "try later"},
    }
    assert [pop_finished(e) for e in task["results"]] == [
        {
            "jobId": "b1",
            "success": False,
            "duration": "12ms",
            "message": "try later",
            "error": {"code": "db_error", "message": "try later"},
        }
    ]


@pytest.mark.parametrize(
    ("seconds", "uptime"), [(0, "0s"), (2.4, "2s"), (2.6, "3s"), (62.5, "1m3s"), (3600, "1h0m0s")]
)
async def test_health_uptime_is_rounded_to_the_second(
    autojump_clock: MockClock, tmp_path: Path, seconds: float, uptime: str
) -> None:
    server = make_server(tmp_path)
    add_sleeper(server)
    async with open_test_client(server) as client:
        await trio.sleep(seconds)
        health = (await client.get("/health")).json()
    assert health == {
        "name": "jobs",
        "status": "ok",
        "uptime": uptime,
        "tasks": {"sleeper": {"status": "idle"}},
    }


async def test_health_uptime_follows_the_clock_between_requests(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    """Repeated /health on an idle server: each answer's uptime is rounded, not stale."""
    server = make_server(tmp_path)
    add_sleeper(server)
    seen = []
    async with open_test_client(server) as client:
        for delay in (2.4, 0.2, 0.2, 0.7, 0.1):
            await trio.sleep(delay)
            seen.append((await client.get("/health")).json()["uptime"])
    # At 2.4, 2.6, 2.8, 3.5 and 3.6 virtual seconds.
    assert seen == ["2s", "3s", "3s", "4s", "4s"]


async def test_health_status_draining(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = make_server(tmp_path)
    add_sleeper(server)
    async with open_test_client(server) as client:
        before = (await client.get("/health")).json()
        assert server._runtime is not None
        server._runtime.begin_draining()
        during = (await client.get("/health")).json()
        stop = await client.post("/stop/sleeper")
    assert before["status"] == "ok"
    assert during == {
        "name": "jobs",
        "status": "draining",
        "uptime": "0s",
        "tasks": {"sleeper": {"status": "idle"}},
    }
    assert stop.json() == {"task": "sleeper", "message": "No running job"}


async def test_health_requires_auth(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = make_server(tmp_path)
    add_sleeper(server)
    async with open_test_client(server, authorized=False) as client:
        response = await client.get("/health")
        wrong = await client.get("/health", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert wrong.status_code == 401
    assert response.json() == {"error": "unauthorized"}


# -- 6. GET /result/{jobId} -------------------------------------------------------------


def _echo_server(tmp_path: Path) -> funtask.Server:
    server = make_server(tmp_path)

    @server.task
    async def first(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        await trio.sleep(params.float("wait", 0))
        return funtask.ok("from first")

    @server.task
    async def second(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        await trio.sleep(params.float("wait", 0))
        return funtask.ok("from second")

    return server


async def test_result_returns_the_stored_job_response(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = _echo_server(tmp_path)
    async with open_test_client(server) as client:
        response = await client.post("/run/first", json={"jobId": "r1", "params": {"wait": 1.5}})
        stored = await client.get("/result/r1")
        missing = await client.get("/result/nope")
    assert stored.status_code == 200
    assert stored.headers["content-type"] == "application/json"
    assert stored.content == response.content
    assert stored.json() == {
        "jobId": "r1",
        "success": True,
        "message": "from first",
        "duration": "1.5s",
        "durationMs": 1500,
    }
    assert missing.status_code == 404
    assert missing.json() == {"error": "result not found"}


async def test_result_of_a_running_job_is_not_found(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path, callback_allowlist=ALLOW)
    add_sleeper(server)
    async with open_test_client(server) as client:
        await client.post("/run/sleeper", json={"jobId": "busy", "callbackUrl": CALLBACK})
        await wait_until_running(client, "sleeper")
        response = await client.get("/result/busy")
        await client.post("/stop/sleeper")
        stored = await wait_for_result(client, "busy")
    assert response.status_code == 404
    assert response.json() == {"error": "result not found"}
    assert stored.json()["error"]["code"] == "cancelled"


@pytest.mark.parametrize(
    ("job_id", "path"),
    [
        ("a/b", "a%2Fb"),
        ("a/b", "a%2fb"),
        ("a%2Fb", "a%252Fb"),
        ("../x", "..%2Fx"),
        ("ünï 🎉", "%C3%BCn%C3%AF%20%F0%9F%8E%89"),
        ("a b", "a%20b"),
        ("q?x", "q%3Fx"),
    ],
)
async def test_result_job_id_is_one_percent_encoded_segment(
    autojump_clock: MockClock, tmp_path: Path, job_id: str, path: str
) -> None:
    server = _echo_server(tmp_path)
    async with open_test_client(server) as client:
        await client.post("/run/first", json={"jobId": job_id})
        stored = await client.get(f"/result/{path}")
    assert stored.status_code == 200
    assert stored.json()["jobId"] == job_id


async def test_result_literal_slash_is_not_the_job_id(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = _echo_server(tmp_path)
    async with open_test_client(server) as client:
        await client.post("/run/first", json={"jobId": "a/b"})
        response = await client.get("/result/a/b")
    assert response.status_code == 404


async def test_result_newest_match_wins(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = _echo_server(tmp_path)
    async with open_test_client(server) as client:
        # "x": first, then second (the later-registered task stored last).
        await client.post("/run/first", json={"jobId": "x"})
        await trio.sleep(1)
        await client.post("/run/second", json={"jobId": "x"})
        # "y": second, then first (the earlier-registered task stored last).
        await client.post("/run/second", json={"jobId": "y"})
        await trio.sleep(1)
        await client.post("/run/first", json={"jobId": "y"})
        x = await client.get("/result/x")
        y = await client.get("/result/y")
    assert x.json()["message"] == "from second"
    assert y.json()["message"] == "from first"


async def test_result_newest_match_wins_for_concurrent_jobs(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    """Two tasks run the same jobId at once; the one that finishes later wins."""
    server = _echo_server(tmp_path)
    async with open_test_client(server) as client, trio.open_nursery() as nursery:
        slow = post_soon(nursery, client, "/run/first", json={"jobId": "z", "params": {"wait": 5}})
        fast = post_soon(
            nursery, client, "/run/second", json={"jobId": "z", "params": {"wait": 1}}
        )
        assert (await fast.response()).json()["message"] == "from second"
        assert (await client.get("/result/z")).json()["message"] == "from second"
        assert (await slow.response()).json()["message"] == "from first"
        stored = await client.get("/result/z")
    assert stored.json()["message"] == "from first"


async def test_result_requires_auth(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = _echo_server(tmp_path)
    async with open_test_client(server) as client:
        await client.post("/run/first", json={"jobId": "secret"})
        missing = await client.get("/result/secret", headers={"Authorization": ""})
        wrong = await client.get("/result/secret", headers={"Authorization": "Bearer nope"})
        query = await client.get(f"/result/secret?token={TOKEN}", headers={"Authorization": ""})
        unknown = await client.get("/result/unknown", headers={"Authorization": "Bearer nope"})
    for response in (missing, wrong, query, unknown):
        assert response.status_code == 401
        assert response.json() == {"error": "unauthorized"}


# -- robustness: whatever the task does, the server answers and survives --------------------


@pytest.mark.parametrize(("args", "message"), [((3,), "3"), ((), "SystemExit")])
async def test_task_calling_sys_exit_is_panic(
    autojump_clock: MockClock, tmp_path: Path, args: tuple[int, ...], message: str
) -> None:
    server = make_server(tmp_path)
    add_raiser(server, "quitter", lambda: SystemExit(*args))

    @server.task
    def thread_quitter(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        raise SystemExit(*args)

    async with open_test_client(server) as client:
        one = await client.post("/run/quitter", json={"jobId": "a"})
        two = await client.post("/run/thread_quitter", json={"jobId": "b"})
    assert one.json() == failure("a", "0s", 0, code="panic", message=message)
    assert two.json() == failure("b", "0s", 0, code="panic", message=message)


class Abort(BaseException):
    """A BaseException that is neither Cancelled, KeyboardInterrupt nor SystemExit."""


async def test_task_raising_a_base_exception_subclass_is_panic(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    """SPEC 1: "Produced by the library, whatever the task does" -- one task must not
    take the whole server (every other job and the HTTP layer) down with it."""
    server = make_server(tmp_path)
    add_raiser(server, "aborting", lambda: Abort("stop everything"), step="aborting")
    add_succeeder(server, "healthy", "still here")
    async with open_test_client(server) as client:
        response = await client.post("/run/aborting", json={"jobId": "ab"})
        after = await client.post("/run/healthy", json={"jobId": "ok"})
    assert response.json() == failure(
        "ab", "0s", 0, code="panic", message="stop everything", step="aborting"
    )
    assert after.json()["message"] == "still here"


async def test_serialisation_failure_log_carries_the_cause(
    autojump_clock: MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(tmp_path)

    @server.task
    async def produce(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        return funtask.ok().with_data("value", {1, 2})

    response = await run_once(server, "produce")
    assert response.json()["error"]["code"] == "result_serialization_failed"
    records = [
        r for r in caplog.records if r.getMessage().endswith("result could not be serialized")
    ]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], TypeError), records[0].exc_info
    assert "NoneType: None" not in caplog.text


async def test_step_with_a_lone_surrogate_breaks_neither_health_nor_the_server(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    """A step text UTF-8 cannot encode (a lone surrogate, e.g. from a badly decoded file
    name) must neither make /health a 500 nor crash the job runner when the job ends."""
    server = make_server(tmp_path)
    started = trio.Event()

    @server.task
    async def odd_step(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("reading \udcff.csv")
        started.set()
        await trio.sleep(5)
        return funtask.fail("bad_input", "unreadable file")

    add_succeeder(server, "healthy", "still here")
    async with open_test_client(server) as client, trio.open_nursery() as nursery:
        pending = post_soon(nursery, client, "/run/odd_step", json={"jobId": "s"})
        await started.wait()
        health = await client.get("/health")
        response = await pending.response()
        after = await client.post("/run/healthy", json={"jobId": "ok"})
    assert health.status_code == 200
    assert health.json()["tasks"]["odd_step"]["currentJob"]["jobId"] == "s"
    assert response.status_code == 200
    body = response.json()
    assert body["jobId"] == "s"
    assert body["success"] is False
    assert body["error"]["code"] in ("bad_input", "result_serialization_failed")
    assert after.json()["message"] == "still here"


async def test_job_id_with_a_lone_surrogate_escape_does_not_crash_the_server(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    """``{"jobId": "\\ud800"}`` is valid JSON that decodes to a str UTF-8 cannot encode.

    Go's decoder turns it into U+FFFD; refusing it as an invalid jobId would do too.
    Either way the answer is a clean 200 or 400 and the server keeps serving.
    """
    server = make_server(tmp_path)
    add_succeeder(server, "greet", "hello")
    async with open_test_client(server) as client:
        response = await client.post("/run/greet", content=b'{"jobId": "\\ud800"}')
        after = await client.post("/run/greet", json={"jobId": "next"})
        health = await client.get("/health")
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json() == {"error": "invalid jobId"}
    else:
        assert response.json()["success"] is True
    assert after.json()["message"] == "hello"
    assert health.status_code == 200
