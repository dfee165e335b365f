"""The SQLite store with real worker processes: ``kill -9`` and restart (SPEC 5, rules 5 and 11).

The worker is ``tests/shutdown_app.py`` with ``$FUNTASK_STORE`` pointing at
an SQLite file; callbacks go to a :class:`CallbackReceiver` on a loopback
port. Real time throughout: a ``kill -9`` cannot be mocked.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from funtask._deadletters import scan_dead_letters

from _support import CallbackReceiver, wait_until, worker_env, worker_process

TOKEN = "store-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ARGS = [sys.executable, "tests/shutdown_app.py", "127.0.0.1:0"]
LIMIT = 30.0  # safety net for each wait; never a wait for a state
# A caller's W3C trace context: a recovered delivery still carries it (SPEC 6).
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACED = {**AUTH, "traceparent": TRACEPARENT, "tracestate": "vendor=abc"}

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and flock")


def env_for(tmp_path: Path, hook: str = "http://127.0.0.1:1/hook") -> dict[str, str]:
    letters = tmp_path / "letters"
    letters.mkdir(exist_ok=True)
    origin = hook.rsplit("/", 1)[0]
    return worker_env(
        FUNTASK_AUTH_TOKEN=TOKEN,
        FUNTASK_DEAD_LETTER_DIR=str(letters),
        FUNTASK_STORE=f"sqlite://{tmp_path}/jobs.db",
        SHUTDOWN_APP_CALLBACK_ALLOWLIST=origin,
    )


def stored_step(tmp_path: Path, job_id: str) -> str | None:
    """The last step the store holds for ``job_id`` (read on a connection of our own)."""
    conn = sqlite3.connect(f"file:{tmp_path}/jobs.db?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT last_step FROM jobs WHERE job_id = ?", (job_id.encode(),)
        ).fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


async def poll(predicate: Any, *, interval: float = 0.05) -> None:
    with trio.fail_after(LIMIT):
        await wait_until(predicate, interval=interval)


async def kill_9(worker: Any) -> None:
    worker.send(signal.SIGKILL)
    with trio.fail_after(LIMIT):
        await worker.process.wait()
    assert worker.process.returncode == -signal.SIGKILL


async def test_kill_9_mid_job_gives_one_worker_lost_result(tmp_path: Path) -> None:
    receiver = CallbackReceiver(200)
    with receiver.listen() as hook:
        env = env_for(tmp_path, hook)
        async with worker_process(ARGS, env=env) as worker:
            async with httpx.AsyncClient(base_url=worker.url, headers=TRACED) as client:
                started = await client.post("/run/slow", json={"jobId": "k1", "callbackUrl": hook})
                assert started.status_code == 202, started.text
            # The heartbeat stamps the last step into the store (once a second).
            await poll(lambda: stored_step(tmp_path, "k1") == "sleeping")
            await kill_9(worker)
        assert receiver.attempts == []
        async with worker_process(ARGS, env=env) as worker:
            await poll(lambda: receiver.attempts)
            await trio.sleep(1.5)  # nothing more comes
            async with httpx.AsyncClient(base_url=worker.url, headers=AUTH) as client:
                stored = await client.get("/result/k1")
                duplicate = await client.post(
                    "/run/slow", json={"jobId": "k1", "callbackUrl": hook}
                )
                ready = await client.get("/readyz")
            assert len(receiver.attempts) == 1, worker.log()
            payload = receiver.payloads[0]
            assert payload["jobId"] == "k1"
            assert payload["success"] is False
            assert payload["error"] == {
                "code": "worker_lost",
                "message": "worker stopped while the job was running",
                "step": "sleeping",
            }
            assert 0 <= payload["durationMs"] < 60_000
            headers = receiver.attempts[0].request.headers
            assert headers["traceparent"] == TRACEPARENT
            assert headers["tracestate"] == "vendor=abc"
            assert stored.status_code == 200
            assert stored.json() == payload
            assert duplicate.status_code == 200  # stored: never run again
            assert duplicate.json() == payload
            assert ready.status_code == 200
            await poll(lambda: not scan_dead_letters(tmp_path / "letters")[0])
            assert "worker stopped while the job was running" in worker.log()


async def test_kill_9_during_a_retry_wait_resumes_the_delivery(tmp_path: Path) -> None:
    # The first attempt is refused with a long Retry-After: the worker waits.
    refuse = httpx.Response(503, headers={"Retry-After": "100"})
    receiver = CallbackReceiver([refuse, 200])
    with receiver.listen() as hook:
        env = env_for(tmp_path, hook)
        letters = tmp_path / "letters"
        async with worker_process(ARGS, env=env) as worker:
            async with httpx.AsyncClient(base_url=worker.url, headers=TRACED) as client:
                started = await client.post(
                    "/run/slow",
                    json={"jobId": "r1", "callbackUrl": hook, "params": {"seconds": 0}},
                )
                assert started.status_code == 202, started.text
            await poll(lambda: len(receiver.attempts) == 1)
            await trio.sleep(0.3)
            await kill_9(worker)
        (letter,) = scan_dead_letters(letters)[0]
        assert letter.job_id == "r1"
        async with worker_process(ARGS, env=env) as worker:
            await poll(lambda: len(receiver.attempts) == 2)
            await poll(lambda: not scan_dead_letters(letters)[0])  # adopted, then removed
            await trio.sleep(0.5)
            assert len(receiver.attempts) == 2, worker.log()
            assert receiver.payloads[0] == receiver.payloads[1]
            for attempt in receiver.attempts:
                assert attempt.request.headers["traceparent"] == TRACEPARENT
            assert receiver.payloads[1]["message"] == "slept"
            assert not list(letters.glob("*~2.json"))
            async with httpx.AsyncClient(base_url=worker.url, headers=AUTH) as client:
                stored = await client.get("/result/r1")
            assert stored.json() == receiver.payloads[1]


async def test_results_answer_after_a_restart(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    async with worker_process(ARGS, env=env) as worker:
        async with httpx.AsyncClient(base_url=worker.url, headers=AUTH) as client:
            first = await client.post(
                "/run/slow", json={"jobId": "before", "params": {"seconds": 0}}
            )
            assert first.status_code == 200
        await kill_9(worker)
    async with (
        worker_process(ARGS, env=env) as worker,
        httpx.AsyncClient(base_url=worker.url, headers=AUTH) as client,
    ):
        again = await client.get("/result/before")
        health = (await client.get("/health")).json()
    assert again.status_code == 200
    assert again.content == first.content
    assert health["store"] == "ok"
    assert health["tasks"]["slow"]["lastJob"]["jobId"] == "before"


async def test_a_second_process_on_the_same_file_is_refused(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    async with worker_process(ARGS, env=env) as worker:
        second = await trio.run_process(
            ARGS,
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        pid = worker.process.pid
    output = second.stderr.decode() + second.stdout.decode()
    assert second.returncode == 2, output
    assert f"sqlite store {tmp_path}/jobs.db is in use by " in output
    assert f":{pid} (pid {pid})" in output
