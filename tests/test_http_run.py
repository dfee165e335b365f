"""POST /run over HTTP: every check of SPEC 1 in order, sync and async runs."""

from __future__ import annotations

import json
import uuid
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.lowlevel
from trio.testing import MockClock

import funtask
from funtask.testing import open_test_client

from _support import TOKEN, build_server

ALLOW = ["https://hooks.example.com/hooks"]


@pytest.fixture
def server(tmp_path: Path) -> funtask.Server:
    return build_server(tmp_path, callback_allowlist=ALLOW)


async def test_sync_run_returns_the_result(
    autojump_clock: MockClock, server: funtask.Server
) -> None:
    async with open_test_client(server) as client:
        response = await client.post("/run/greet", json={"params": {"name": "Ada"}})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    uuid.UUID(body["jobId"], version=4)
    assert body["success"] is True
    assert body["message"] == "Hello, Ada!"
    assert body["data"] == {"name": "Ada"}
    assert body["duration"] == "0s"
    assert body["durationMs"] == 0


@pytest.mark.parametrize(
    "auth", [None, "Bearer wrong", "Basic dGVzdA==", "Bearer", "Bearer t\u00e9st".encode()]
)
async def test_run_requires_the_token(
    autojump_clock: MockClock, server: funtask.Server, auth: str | bytes | None
) -> None:
    headers = {} if auth is None else {"Authorization": auth}
    async with open_test_client(server, authorized=False) as client:
        response = await client.post("/run/greet", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}


async def test_any_of_several_tokens_is_accepted(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = build_server(tmp_path, auth_token=["old", "new"])
    async with open_test_client(server, authorized=False) as client:
        for token in ("old", "new", "bearer-case"):
            scheme = "bearer" if token == "bearer-case" else "Bearer"
            value = "new" if token == "bearer-case" else token
            response = await client.post(
                "/run/greet", headers={"Authorization": f"{scheme} {value}"}
            )
            assert response.status_code == 200, token


async def test_draining_comes_first(autojump_clock: MockClock, server: funtask.Server) -> None:
    async with open_test_client(server) as client:
        assert server._runtime is not None
        server._runtime.begin_draining()
        for path in ("/run/greet", "/run/no-such-task"):
            response = await client.post(path, content=b"not json")
            assert response.status_code == 503
            assert response.json() == {"error": "Server is shutting down"}


async def test_unknown_task_before_body(autojump_clock: MockClock, server: funtask.Server) -> None:
    async with open_test_client(server) as client:
        response = await client.post("/run/nope", content=b"[")
    assert response.status_code == 404
    assert response.json() == {"error": 'task "nope" not found'}


@pytest.mark.parametrize(
    "body",
    [
        b"[",
        b"[]",
        b'"text"',
        b"42",
        b'{"params": []}',
        b'{"params": "x"}',
        b'{"jobId": 5}',
        b'{"callbackUrl": true}',
        b'{"params": {}} trailing',
        b'{"params": {}}{"params": {}}',
        b'{"params": {"x": NaN}}',
        b'{"params": {"x": Infinity}}',
        b'{"params": {"x": -Infinity}}',
        b'{"params": {"x": ' + b"9" * 5000 + b"}}",
        b'{"params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"\xff\xfe{",
        b'{"params": {"x": "\xff"}}',
    ],
)
async def test_invalid_bodies_are_400(
    autojump_clock: MockClock, server: funtask.Server, body: bytes
) -> None:
    async with open_test_client(server) as client:
        response = await client.post("/run/greet", content=body)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid request body"}


@pytest.mark.parametrize(
    "body",
    [b"", b"  \n\t ", b"null", b'{"jobId": null, "callbackUrl": null, "params": null}', b"{}"],
)
async def test_absent_bodies_and_null_fields(
    autojump_clock: MockClock, server: funtask.Server, body: bytes
) -> None:
    async with open_test_client(server) as client:
        response = await client.post("/run/greet", content=body)
    assert response.status_code == 200
    assert response.json()["message"] == "Hello, World!"


async def test_body_is_json_whatever_the_content_type(
    autojump_clock: MockClock, server: funtask.Server
) -> None:
    async with open_test_client(server) as client:
        response = await client.post(
            "/run/greet",
            content=b'{"params": {"name": "curl"}}',
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert response.json()["message"] == "Hello, curl!"


async def test_go_style_key_matching(autojump_clock: MockClock, server: funtask.Server) -> None:
    async with open_test_client(server) as client:
        response = await client.post(
            "/run/greet", json={"JOBID": "k1", "Params": {"name": "Go"}, "unknown": 1}
        )
        assert response.json()["jobId"] == "k1"
        assert response.json()["message"] == "Hello, Go!"
        exact_wins = await client.post("/run/greet", json={"jobid": "lower", "jobId": "exact"})
        assert exact_wins.json()["jobId"] == "exact"
        response = await client.post(
            "/run/greet", json={"callbackURL": "https://evil.example.com/"}
        )
        assert response.status_code == 400
        assert response.json() == {"error": "callback URL not allowed"}


async def test_callback_without_allowlist(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_test_client(build_server(tmp_path)) as client:
        response = await client.post(
            "/run/greet", json={"callbackUrl": "https://hooks.example.com/hooks"}
        )
    assert response.status_code == 400
    assert response.json() == {"error": "callback URLs not allowed (no allowlist configured)"}


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/hooks-evil",
        "https://hooks.example.com/hooks/../admin",
        "http://hooks.example.com/hooks",
        "https://user@hooks.example.com/hooks",
        "https://hooks.example.com:8443/hooks",
        "ftp://hooks.example.com/hooks",
        "not a url",
    ],
)
async def test_callback_not_allowed(
    autojump_clock: MockClock, server: funtask.Server, url: str
) -> None:
    async with open_test_client(server) as client:
        response = await client.post("/run/greet", json={"callbackUrl": url})
    assert response.status_code == 400
    assert response.json() == {"error": "callback URL not allowed"}


async def test_callback_check_comes_before_job_id_check(
    autojump_clock: MockClock, server: funtask.Server
) -> None:
    async with open_test_client(server) as client:
        response = await client.post(
            "/run/greet", json={"jobId": " ", "callbackUrl": "https://evil.example.com"}
        )
    assert response.json() == {"error": "callback URL not allowed"}


@pytest.mark.parametrize("job_id", ["x" * 257, " ", "\t\n", "a\x00b", "a\x1fb", "a\x7fb", "\n"])
async def test_invalid_job_ids(
    autojump_clock: MockClock, server: funtask.Server, job_id: str
) -> None:
    async with open_test_client(server) as client:
        response = await client.post("/run/greet", json={"jobId": job_id})
    assert response.status_code == 400
    assert response.json() == {"error": "invalid jobId"}


@pytest.mark.parametrize("job_id", ["x" * 256, "a/b", "..", "../../etc/passwd", "ünï 🎉", "a b"])
async def test_unusual_job_ids_are_accepted(
    autojump_clock: MockClock, server: funtask.Server, job_id: str
) -> None:
    async with open_test_client(server) as client:
        response = await client.post("/run/greet", json={"jobId": job_id})
    assert response.status_code == 200
    assert response.json()["jobId"] == job_id


async def test_empty_job_id_gets_a_uuid(autojump_clock: MockClock, server: funtask.Server) -> None:
    async with open_test_client(server) as client:
        first = (await client.post("/run/greet", json={"jobId": ""})).json()["jobId"]
        second = (await client.post("/run/greet")).json()["jobId"]
    assert uuid.UUID(first).version == 4
    assert first != second


async def test_duplicate_of_a_stored_result(
    autojump_clock: MockClock, server: funtask.Server
) -> None:
    async with open_test_client(server) as client:
        first = await client.post("/run/greet", json={"jobId": "o-1", "params": {"name": "A"}})
        again = await client.post("/run/greet", json={"jobId": "o-1", "params": {"name": "B"}})
        health = (await client.get("/health")).json()
    assert again.status_code == 200
    assert again.json() == first.json()
    assert len(health["tasks"]["greet"]["results"]) == 1


async def test_duplicate_of_the_running_job_and_busy(
    autojump_clock: MockClock, server: funtask.Server
) -> None:
    async with open_test_client(server) as client, trio.open_nursery() as nursery:
        nursery.start_soon(partial(client.post, "/run/sleeper", json={"jobId": "long"}))
        await trio.sleep(3.4)
        same = await client.post("/run/sleeper", json={"jobId": "long"})
        assert same.status_code == 200
        assert same.json() == {
            "jobId": "long",
            "status": "running",
            "running": "3s",
            "currentStep": "sleeping",
        }
        other = await client.post("/run/sleeper", json={"jobId": "other"})
        assert other.status_code == 409
        assert other.json() == {
            "error": "Task is busy with a different job",
            "task": "sleeper",
            "currentJob": {"jobId": "long", "running": "3s"},
        }
        generated = await client.post("/run/sleeper")
        assert generated.status_code == 409
        # A different task runs concurrently.
        assert (await client.post("/run/greet")).status_code == 200
        await client.post("/stop/sleeper")


async def test_async_run_answers_202_at_once(
    autojump_clock: MockClock, server: funtask.Server
) -> None:
    async with open_test_client(server) as client:
        start = trio.current_time()
        response = await client.post(
            "/run/sleeper",
            json={"jobId": "a1", "callbackUrl": "https://hooks.example.com/hooks/done"},
        )
        assert trio.current_time() == start
        assert response.status_code == 202
        assert response.json() == {"jobId": "a1"}
        health = (await client.get("/health")).json()
        assert health["tasks"]["sleeper"]["currentJob"]["jobId"] == "a1"
        await client.post("/stop/sleeper")


async def test_sync_timeout_is_504_and_result_is_stored(
    autojump_clock: MockClock, server: funtask.Server
) -> None:
    async with open_test_client(server) as client:
        start = trio.current_time()
        response = await client.post("/run/sleeper", json={"jobId": "slow"})
        assert trio.current_time() - start == pytest.approx(120)
        assert response.status_code == 504
        assert response.json() == {
            "error": "Sync mode timeout exceeded (2m0s). Use callbackUrl for long-running tasks.",
            "jobId": "slow",
        }
        stored = await client.get("/result/slow")
    assert stored.status_code == 200
    assert stored.json()["error"] == {
        "code": "cancelled",
        "message": "job cancelled: sync timeout",
        "step": "sleeping",
    }


async def test_custom_sync_timeout(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = build_server(tmp_path, sync_timeout=1.5)
    async with open_test_client(server) as client:
        response = await client.post("/run/sleeper")
    assert response.status_code == 504
    assert "(1.5s)" in response.json()["error"]


async def test_sync_run_that_ends_just_before_the_timeout(
    autojump_clock: MockClock, server: funtask.Server
) -> None:
    async with open_test_client(server) as client:
        response = await client.post("/run/sleeper", json={"params": {"seconds": 119.9}})
    assert response.status_code == 200
    assert response.json()["duration"] == "1m59.9s"


async def test_client_disconnect_cancels_the_job(
    autojump_clock: MockClock, server: funtask.Server
) -> None:
    async with open_test_client(server) as client:
        with trio.move_on_after(5):
            await client.post("/run/sleeper", json={"jobId": "gone"})
        for _ in range(10):
            stored = await client.get("/result/gone")
            if stored.status_code == 200:
                break
            await trio.lowlevel.checkpoint()
    assert stored.json()["error"]["message"] == "job cancelled: client disconnected"
    assert stored.json()["duration"] == "5s"


async def test_request_body_too_large(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = build_server(tmp_path, max_body_size=100)
    async with open_test_client(server) as client:
        big = json.dumps({"params": {"x": "y" * 200}}).encode()
        response = await client.post("/run/greet", content=big)
        assert response.status_code == 413
        assert response.json() == {"error": "request body too large"}

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(50):
                yield b"          "

        streamed = await client.post("/run/greet", content=chunks())
        assert streamed.status_code == 413
        small = await client.post("/run/greet", content=b"{}")
        assert small.status_code == 200


async def test_a_stalled_body_times_out_with_408(
    autojump_clock: MockClock, server: funtask.Server
) -> None:
    async def stalled():  # type: ignore[no-untyped-def]
        yield b'{"params": '
        await trio.sleep(3600)
        yield b"{}}"

    async with open_test_client(server) as client:
        start = trio.current_time()
        response = await client.post("/run/greet", content=stalled())
        assert trio.current_time() - start == pytest.approx(60)
        assert response.status_code == 408
        assert response.json() == {"error": "request timeout"}
        assert response.headers["connection"] == "close"
        health = (await client.get("/health")).json()
    assert health["tasks"]["greet"]["status"] == "idle"
    assert "results" not in health["tasks"]["greet"]


async def test_a_slow_body_within_the_timeout_is_read(
    autojump_clock: MockClock, server: funtask.Server
) -> None:
    async def slow():  # type: ignore[no-untyped-def]
        for piece in (b'{"params": ', b'{"name": ', b'"Slow"}}'):
            await trio.sleep(19)
            yield piece

    async with open_test_client(server) as client:
        response = await client.post("/run/greet", content=slow())
    assert response.status_code == 200
    assert response.json()["message"] == "Hello, Slow!"


async def test_default_body_limit_is_10_mib(
    autojump_clock: MockClock, server: funtask.Server
) -> None:
    async with open_test_client(server) as client:
        body = b'{"params": {"x": "' + b"y" * (10 * 1024 * 1024) + b'"}}'
        response = await client.post("/run/greet", content=body)
    assert response.status_code == 413


async def test_run_token_in_header_only(autojump_clock: MockClock, server: funtask.Server) -> None:
    async with open_test_client(server, authorized=False) as client:
        response = await client.post(f"/run/greet?token={TOKEN}")
    assert response.status_code == 401
