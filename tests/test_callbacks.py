"""Async mode end to end: callbacks, retries, dead letters and draining, on a mock clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio
from trio.testing import MockClock

import funtask
from funtask.testing import open_test_client

from _support import CallbackReceiver, build_server, wait_idle, wait_until

HOOK = "https://hooks.example.com/hooks/done"


def make_server(tmp_path: Path, **config: Any) -> funtask.Server:
    config.setdefault("callback_allowlist", ["https://hooks.example.com/hooks"])
    server = build_server(tmp_path, **config)

    @server.task
    async def quick(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("working")
        return funtask.ok("done").with_data("n", params.int("n", 1))

    return server


def dead_letters(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix == ".json")


async def start_async(client: httpx.AsyncClient, task: str, job_id: str, **body: Any) -> None:
    response = await client.post(
        f"/run/{task}", json={"jobId": job_id, "callbackUrl": HOOK, **body}
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"jobId": job_id}


async def deliver(
    server: funtask.Server, receiver: CallbackReceiver, job_id: str, **body: Any
) -> tuple[float, dict[str, Any]]:
    """Run ``quick`` as ``job_id`` in async mode until its delivery ends.

    Returns when the job was started and its stored result.
    """
    async with open_test_client(server, callback_transport=receiver.transport()) as client:
        start = trio.current_time()
        await start_async(client, "quick", job_id, **body)
        await wait_idle(client, "quick")
        stored = (await client.get(f"/result/{quote(job_id, safe='')}")).json()
    return start, stored


async def test_result_is_posted_and_dead_letter_removed(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    seen_files: list[list[Path]] = []

    def answer(request: httpx.Request) -> int:
        seen_files.append(dead_letters(tmp_path))
        return 200

    receiver = CallbackReceiver(answer)
    server = make_server(tmp_path)
    _, stored = await deliver(server, receiver, "job-1", params={"n": 7})
    assert len(receiver.attempts) == 1
    _, request, body = receiver.attempts[0]
    assert str(request.url) == HOOK
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(body) == stored
    assert stored["data"] == {"n": 7}
    # The dead letter was on disk during the attempt and is gone after the 2xx.
    assert seen_files == [[tmp_path / "job-1.json"]]
    assert dead_letters(tmp_path) == []


async def test_retry_schedule_in_virtual_seconds(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    receiver = CallbackReceiver([500, 500, 500, 500, 200])
    server = make_server(tmp_path)
    start, _ = await deliver(server, receiver, "r")
    assert receiver.times(start) == [0, 1, 6, 21, 81]
    assert dead_letters(tmp_path) == []


async def test_final_failure_keeps_the_dead_letter(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    receiver = CallbackReceiver(500)
    server = make_server(tmp_path, callback_retries=7)
    start, stored = await deliver(server, receiver, "lost?")
    assert receiver.times(start) == [0, 1, 6, 21, 81, 201, 321]
    [letter] = dead_letters(tmp_path)
    assert letter.name == "lost%3F.json"
    assert stat.S_IMODE(os.stat(letter).st_mode) == 0o600
    content = json.loads(letter.read_text())
    meta = content.pop("deadLetter")
    assert content == stored
    assert meta["task"] == "quick"
    assert meta["callbackUrl"] == HOOK
    assert meta["attempts"] == 7
    assert meta["lastError"] == "HTTP 500"
    assert meta["createdAt"].endswith("Z")


@pytest.mark.parametrize(("header", "expected_gap"), [("30", 30), ("1000", 120), ("soon", 1)])
async def test_retry_after_is_honoured_and_capped(
    autojump_clock: MockClock, tmp_path: Path, header: str, expected_gap: float
) -> None:
    receiver = CallbackReceiver([httpx.Response(429, headers={"Retry-After": header}), 200])
    server = make_server(tmp_path)
    start, _ = await deliver(server, receiver, "ra")
    assert receiver.times(start) == [0, expected_gap]


async def test_redirects_are_failures(autojump_clock: MockClock, tmp_path: Path) -> None:
    receiver = CallbackReceiver(
        httpx.Response(307, headers={"Location": "https://evil.example.com/"})
    )
    server = make_server(tmp_path, callback_retries=2)
    await deliver(server, receiver, "redir")
    assert receiver.urls == [HOOK, HOOK]
    meta = json.loads(dead_letters(tmp_path)[0].read_text())["deadLetter"]
    assert meta["lastError"] == "HTTP 307"


async def test_per_attempt_timeout(autojump_clock: MockClock, tmp_path: Path) -> None:
    receiver = CallbackReceiver(delay=3600)
    server = make_server(tmp_path, callback_retries=2, callback_timeout=10)
    async with open_test_client(server, callback_transport=receiver.transport()) as client:
        start = trio.current_time()
        await start_async(client, "quick", "slow")
        await wait_idle(client, "quick")
        end = trio.current_time()
    assert receiver.times(start) == [0, 11]
    assert 21 <= end - start <= 21.25  # idle is polled every 0.25 virtual seconds
    meta = json.loads(dead_letters(tmp_path)[0].read_text())["deadLetter"]
    assert meta["lastError"] == "timed out after 10s"


async def test_transport_errors_are_retried(autojump_clock: MockClock, tmp_path: Path) -> None:
    refused = httpx.ConnectError("connection refused")
    receiver = CallbackReceiver([refused, refused, 204])
    server = make_server(tmp_path)
    await deliver(server, receiver, "ce")
    assert len(receiver.attempts) == 3
    assert dead_letters(tmp_path) == []


async def test_slot_busy_and_result_visible_during_delivery(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    receiver = CallbackReceiver(500)
    server = make_server(tmp_path)
    async with open_test_client(server, callback_transport=receiver.transport()) as client:
        await start_async(client, "quick", "d1")
        await trio.sleep(3)  # between the 2nd and 3rd attempts
        assert len(receiver.attempts) == 2
        health = (await client.get("/health")).json()["tasks"]["quick"]
        assert health["status"] == "running"
        assert health["currentJob"]["jobId"] == "d1"
        assert health["lastJob"]["jobId"] == "d1"
        busy = await client.post("/run/quick", json={"jobId": "d2"})
        assert busy.status_code == 409
        assert busy.json()["currentJob"]["jobId"] == "d1"
        duplicate = await client.post("/run/quick", json={"jobId": "d1", "callbackUrl": HOOK})
        assert duplicate.status_code == 200
        assert duplicate.json()["message"] == "done"
        assert (await client.get("/result/d1")).status_code == 200
        # /stop ends the retry schedule; the dead letter stays for replay.
        stop = await client.post("/stop/quick")
        assert stop.json() == {
            "task": "quick",
            "jobId": "d1",
            "message": "Cancellation requested",
        }
        await wait_idle(client, "quick")
        assert len(receiver.attempts) == 2
        assert (await client.post("/run/quick", json={"jobId": "d2"})).status_code == 200
    [letter] = dead_letters(tmp_path)
    assert json.loads(letter.read_text())["deadLetter"]["attempts"] == 2


async def test_no_callback_without_a_dead_letter(
    autojump_clock: MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = CallbackReceiver()
    directory = tmp_path / "dl"
    directory.mkdir()
    server = make_server(directory)
    async with open_test_client(server, callback_transport=receiver.transport()) as client:
        directory.rmdir()
        with caplog.at_level(logging.ERROR, logger="funtask"):
            await start_async(client, "quick", "nowhere")
            await wait_idle(client, "quick")
        assert (await client.get("/result/nowhere")).status_code == 200
    assert receiver.attempts == []
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("nowhere" in m and "NOT attempted" in m for m in messages)


async def test_unsent_sync_result_is_dead_lettered(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path)
    async with open_test_client(server) as client:
        response = await client.post("/run/sleeper", json={"jobId": "late"})
        assert response.status_code == 504
        await wait_idle(client, "sleeper")
        await wait_until(lambda: dead_letters(tmp_path), interval=0.001)
    [letter] = dead_letters(tmp_path)
    content = json.loads(letter.read_text())
    assert content["jobId"] == "late"
    assert content["error"]["code"] == "cancelled"
    assert content["deadLetter"]["callbackUrl"] == ""
    assert content["deadLetter"]["lastError"] == "sync timeout"


async def test_disconnected_sync_result_is_dead_lettered(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path)
    async with open_test_client(server) as client:
        with trio.move_on_after(2):
            await client.post("/run/sleeper", json={"jobId": "gone"})
        await wait_until(lambda: dead_letters(tmp_path), interval=0.001)
    content = json.loads((tmp_path / "gone.json").read_text())
    assert content["error"]["message"] == "job cancelled: client disconnected"
    assert content["deadLetter"]["lastError"] == "client disconnected"


def verify_standard_webhook(secret: bytes, headers: httpx.Headers, body: bytes) -> bool:
    """An independent Standard Webhooks verifier, as a receiver would write it."""
    signed = b".".join(
        [headers["webhook-id"].encode(), headers["webhook-timestamp"].encode(), body]
    )
    expected = base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()
    return any(
        part.startswith("v1,") and hmac.compare_digest(part[3:], expected)
        for part in headers["webhook-signature"].split(" ")
    )


@pytest.mark.parametrize(
    ("configured", "key"),
    [
        ("plain-secret", b"plain-secret"),
        ("whsec_" + base64.b64encode(b"\x00binary key\xff").decode(), b"\x00binary key\xff"),
        (b"raw-bytes", b"raw-bytes"),
    ],
)
async def test_signed_callbacks(
    autojump_clock: MockClock, tmp_path: Path, configured: str | bytes, key: bytes
) -> None:
    receiver = CallbackReceiver([500, 200])
    server = make_server(tmp_path, callback_signing_secret=configured)
    await deliver(server, receiver, "signed/1")
    assert len(receiver.attempts) == 2
    ids = set()
    for _, request, body in receiver.attempts:
        assert verify_standard_webhook(key, request.headers, body)
        assert not verify_standard_webhook(b"wrong", request.headers, body)
        assert "." not in request.headers["webhook-id"]  # SPEC 5, rule 7
        assert request.headers["webhook-timestamp"].isdigit()
        ids.add(request.headers["webhook-id"])
    assert len(ids) == 1  # stable across attempts


async def test_unsigned_callbacks_carry_no_signature(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    receiver = CallbackReceiver()
    server = make_server(tmp_path)
    await deliver(server, receiver, "plain")
    assert "webhook-signature" not in receiver.attempts[0][1].headers


async def test_draining_makes_the_next_attempt_at_once_and_last(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    receiver = CallbackReceiver(500)
    server = make_server(tmp_path)
    async with open_test_client(server, callback_transport=receiver.transport()) as client:
        start = trio.current_time()
        await start_async(client, "quick", "drained")
        await trio.sleep(3)  # waiting 5 s before attempt 3
        assert server._runtime is not None
        drained_at = trio.current_time()
        await server._runtime.drain()
        assert trio.current_time() == drained_at
    assert receiver.times(start) == [0, 1, 3]
    meta = json.loads((tmp_path / "drained.json").read_text())["deadLetter"]
    assert meta["attempts"] == 3


async def test_shutdown_cancels_and_delivers_once(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    receiver = CallbackReceiver(503)
    server = make_server(tmp_path)
    async with open_test_client(server, callback_transport=receiver.transport()) as client:
        await start_async(client, "sleeper", "running")
        await trio.sleep(5)
        assert server._runtime is not None
        await server._runtime.drain()
    [(_, _, body)] = receiver.attempts
    assert json.loads(body)["error"] == {
        "code": "cancelled",
        "message": "job cancelled: server shutting down",
        "step": "sleeping",
    }
    assert [p.name for p in dead_letters(tmp_path)] == ["running.json"]


async def test_job_ignoring_cancellation_becomes_worker_shutdown(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    receiver = CallbackReceiver()
    server = make_server(tmp_path, shutdown_timeout=10)

    @server.task
    async def stubborn(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("ignoring you")
        with trio.CancelScope(shield=True):
            await trio.sleep(60)
        return funtask.ok("finally")

    async with open_test_client(server, callback_transport=receiver.transport()) as client:
        await start_async(client, "stubborn", "stuck")
        assert server._runtime is not None
        began = trio.current_time()
        await server._runtime.drain()
        assert trio.current_time() - began == pytest.approx(10)
        stored = (await client.get("/result/stuck")).json()
    assert stored["error"] == {
        "code": "worker_shutdown",
        "message": "server is shutting down",
        "step": "ignoring you",
    }
    [(_, _, body)] = receiver.attempts
    assert json.loads(body) == stored
    assert dead_letters(tmp_path) == []  # delivered, so removed
