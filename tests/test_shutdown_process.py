"""SIGTERM against real worker processes (tests/shutdown_app.py), on the real clock.

Three ways to run a worker:

- ``python tests/shutdown_app.py BIND`` (a script calling ``server.run``),
- ``python -m funtask serve tests.shutdown_app:server`` (the recommended entry),
- ``python -m hypercorn -k trio -w 1 tests.shutdown_app:server`` (plain hypercorn:
  its parent process owns the signal; the app hears of the shutdown through
  ASGI lifespan after hypercorn's ``--graceful-timeout``).

For each: SIGTERM during a sync job, during an async job (result delivered to a
callback receiver running in the test, or dead-lettered when the receiver
refuses it), and during jobs that ignore cancellation for longer than the
shutdown timeout (an ``async def`` shielding itself, a ``def`` thread ignoring
``run.cancelled``). Every test checks what the caller sees, the dead-letter
files left behind, the exit code and the time from SIGTERM to exit. No test
sleeps to wait for a state: it polls ``/health`` or the receiver, inside
``trio.fail_after`` safety nets.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import hypercorn.trio
import pytest
import trio
from hypercorn.config import Config

from _support import LISTENING, WorkerProcess, worker_env, worker_process

TOKEN = "shutdown-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

SHUTDOWN_TIMEOUT = 2.0  # the worker's shutdown_timeout (seconds)
STUCK_SECONDS = 30.0  # how long the `stuck` thread ignores run.cancelled (it must be abandoned)
GRACE = 1  # --graceful-timeout for most plain-hypercorn tests (hypercorn takes an int)
# How long `stubborn` shields itself from cancellation: past the end of the drain
# (SIGTERM + shutdown_timeout; under plain hypercorn + GRACE too) by 1-1.5 s.
IGNORE_SECONDS = SHUTDOWN_TIMEOUT + 1.0
HYPERCORN_IGNORE_SECONDS = GRACE + SHUTDOWN_TIMEOUT + 1.5
HYPERCORN_DEFAULT_GRACE = 3  # hypercorn's default --graceful-timeout
QUICK_EXIT = 3.0  # seconds from SIGTERM to exit when nothing ignores cancellation
LIMIT = 60.0  # safety net for a whole test; never a wait for a state
EXIT_LIMIT = GRACE + SHUTDOWN_TIMEOUT + 12  # longest any worker may take to exit

CANCELLED_BY_SHUTDOWN = {
    "code": "cancelled",
    "message": "job cancelled: server shutting down",
    "step": "sleeping",
}
WORKER_SHUTDOWN = {
    "code": "worker_shutdown",
    "message": "server is shutting down",
    "step": "ignoring",
}

HYPERCORN_RUNNING = r"Running on (http://\S+)"
ENTRY_POINTS = {
    "script": ([sys.executable, "tests/shutdown_app.py", "127.0.0.1:0"], LISTENING),
    "cli": (
        [
            sys.executable, "-m", "funtask", "serve", "tests.shutdown_app:server",
            "--bind", "127.0.0.1:0",
        ],
        LISTENING,
    ),
}  # fmt: skip


def hypercorn_args(*options: str) -> list[str]:
    """The plain-hypercorn command line, with extra ``options`` before the app."""
    return [
        sys.executable, "-m", "hypercorn", "-k", "trio", *options,
        "--bind", "127.0.0.1:0", "tests.shutdown_app:server",
    ]  # fmt: skip


# -- the callback receiver ----------------------------------------------------


@dataclass
class Callback:
    path: str
    body: dict[str, Any]
    at: float  # trio.current_time() on arrival


class Receiver:
    """A raw ASGI app recording callback POSTs: ``/ok/...`` answers 200, anything else 503."""

    def __init__(self) -> None:
        self.calls: list[Callback] = []
        self.url = ""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.calls.append(Callback(scope["path"], json.loads(body), trio.current_time()))
        status = 200 if scope["path"].startswith("/ok/") else 503
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b"{}"})

    def to(self, path: str) -> list[Callback]:
        """The callbacks received on ``path``."""
        return [call for call in self.calls if call.path == path]


@pytest.fixture
async def receiver(nursery: trio.Nursery) -> Receiver:
    app = Receiver()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.5
    binds = await nursery.start(partial(hypercorn.trio.serve, app, config))
    app.url = binds[0]
    return app


# -- worker processes ---------------------------------------------------------


@dataclass
class Worker(WorkerProcess):
    dead_letter_dir: Path

    def dead_letters(self) -> dict[str, dict[str, Any]]:
        """The dead-letter files by name, each parsed (temporary files skipped)."""
        letters = {}
        for path in sorted(self.dead_letter_dir.iterdir()):
            if path.name.startswith("."):
                continue
            assert path.stat().st_mode & 0o777 == 0o600, path
            letters[path.name] = json.loads(path.read_text())
        return letters


@contextlib.asynccontextmanager
async def worker(
    args: list[str],
    pattern: str,
    tmp_path: Path,
    receiver: Receiver | None = None,
    *,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
) -> AsyncIterator[Worker]:
    """Start a worker (tests/shutdown_app.py) in its own process group; yield it once serving."""
    dead_letter_dir = tmp_path / "dead-letters"
    dead_letter_dir.mkdir()
    env = worker_env(
        FUNTASK_AUTH_TOKEN=TOKEN,
        FUNTASK_DEAD_LETTER_DIR=str(dead_letter_dir),
        SHUTDOWN_APP_SHUTDOWN_TIMEOUT=str(shutdown_timeout),
        SHUTDOWN_APP_CALLBACK_ALLOWLIST=receiver.url if receiver else "",
    )
    async with worker_process(args, env=env, pattern=pattern, startup_limit=LIMIT / 2) as proc:
        yield Worker(proc.process, proc.url, proc.lines, dead_letter_dir)


def client(url: str, **options: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers=AUTH, timeout=LIMIT, **options)


async def wait_until(predicate: Callable[[], Awaitable[bool] | bool]) -> None:
    """Poll ``predicate`` every 20 ms until true (callers bound it with fail_after)."""
    while True:
        outcome = predicate()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        await trio.sleep(0.02)


async def wait_running(http: httpx.AsyncClient, steps: dict[str, str]) -> None:
    """Wait until each task in ``steps`` is running and has reported its step."""

    async def all_running() -> bool:
        tasks = (await http.get("/health")).json()["tasks"]
        return all(
            tasks[task]["status"] == "running"
            and tasks[task].get("currentJob", {}).get("currentStep") == step
            for task, step in steps.items()
        )

    await wait_until(all_running)


async def wait_draining(http: httpx.AsyncClient) -> None:
    """Wait until ``/health`` reports ``draining``."""

    async def draining() -> bool:
        return bool((await http.get("/health")).json()["status"] == "draining")

    await wait_until(draining)


async def read_response(stream: trio.SocketStream) -> tuple[str, dict[str, str], bytes] | None:
    """Read one Content-Length framed HTTP/1.1 response; None if the server closed first."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines)
        }
        while len(body) < int(headers.get("content-length", "0")):
            chunk = await stream.receive_some(65536)
            if not chunk:
                return None
            body += chunk
    except trio.BrokenResourceError:
        return None
    return status, headers, body


@dataclass
class SyncCall:
    """A sync ``/run`` in the background: its response or transport error, and when it ended."""

    response: httpx.Response | None = None
    error: httpx.TransportError | None = None
    at: float = 0.0
    done: trio.Event = field(default_factory=trio.Event)

    def body(self) -> dict[str, Any]:
        assert self.error is None, f"connection failed: {self.error!r}"
        assert self.response is not None
        assert self.response.status_code == 200, self.response.text
        body: dict[str, Any] = self.response.json()
        return body


def start_sync_call(
    nursery: trio.Nursery, http: httpx.AsyncClient, task: str, body: dict[str, Any]
) -> SyncCall:
    call = SyncCall()

    async def run() -> None:
        try:
            call.response = await http.post(f"/run/{task}", json=body)
        except httpx.TransportError as exc:
            call.error = exc
        finally:
            call.at = trio.current_time()
            call.done.set()

    nursery.start_soon(run)
    return call


async def start_async_job(
    http: httpx.AsyncClient, task: str, job_id: str, callback_url: str, **params: Any
) -> None:
    response = await http.post(
        f"/run/{task}", json={"jobId": job_id, "callbackUrl": callback_url, "params": params}
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"jobId": job_id}


def without_meta(letter: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in letter.items() if key != "deadLetter"}


# -- server.run() and python -m funtask serve -----------------------------------


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
async def test_sigterm_during_sync_jobs(entry: str, tmp_path: Path) -> None:
    args, pattern = ENTRY_POINTS[entry]
    with trio.fail_after(LIMIT):
        async with (
            worker(args, pattern, tmp_path) as proc,
            client(proc.url) as http,
            trio.open_nursery() as nursery,
        ):
            slow = start_sync_call(nursery, http, "slow", {"jobId": "sync-slow"})
            blocking = start_sync_call(nursery, http, "blocking", {"jobId": "sync-blocking"})
            await wait_running(http, {"slow": "sleeping", "blocking": "working"})
            sent = proc.sigterm()
            await slow.done.wait()
            await blocking.done.wait()
            elapsed = await proc.exit_after(sent, EXIT_LIMIT)

    assert slow.body() == {
        "jobId": "sync-slow",
        "success": False,
        "duration": slow.body()["duration"],
        "durationMs": slow.body()["durationMs"],
        "error": CANCELLED_BY_SHUTDOWN,
    }
    # The def task saw run.cancelled and returned its own result, which wins.
    assert blocking.body()["success"] is True
    assert blocking.body()["message"] == "stopped"
    assert slow.at - sent < 1.5 and blocking.at - sent < 1.5
    assert proc.dead_letters() == {}  # both answered: nothing to keep
    assert elapsed < QUICK_EXIT, proc.log()


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
async def test_sigterm_during_async_jobs(entry: str, tmp_path: Path, receiver: Receiver) -> None:
    args, pattern = ENTRY_POINTS[entry]
    with trio.fail_after(LIMIT):
        async with worker(args, pattern, tmp_path, receiver) as proc, client(proc.url) as http:
            await start_async_job(http, "slow", "async-slow", f"{receiver.url}/ok/slow")
            await start_async_job(
                http, "blocking", "async-blocking", f"{receiver.url}/fail/blocking"
            )
            await wait_running(http, {"slow": "sleeping", "blocking": "working"})
            sent = proc.sigterm()
            elapsed = await proc.exit_after(sent, EXIT_LIMIT)

    [delivered] = receiver.to("/ok/slow")
    assert delivered.body["jobId"] == "async-slow"
    assert delivered.body["error"] == CANCELLED_BY_SHUTDOWN
    # While draining a delivery is one attempt: the refusing receiver saw exactly one.
    [refused] = receiver.to("/fail/blocking")
    assert refused.body["jobId"] == "async-blocking"
    assert refused.body["success"] is True and refused.body["message"] == "stopped"
    # Delivered: its dead letter is gone. Refused: kept, with the attempt recorded.
    letters = proc.dead_letters()
    assert set(letters) == {"async-blocking.json"}, letters
    letter = letters["async-blocking.json"]
    assert without_meta(letter) == refused.body
    assert letter["deadLetter"]["task"] == "blocking"
    assert letter["deadLetter"]["callbackUrl"] == f"{receiver.url}/fail/blocking"
    assert letter["deadLetter"]["attempts"] == 1
    assert letter["deadLetter"]["lastError"] == "HTTP 503"
    assert elapsed < QUICK_EXIT, proc.log()


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
async def test_sigterm_during_sync_jobs_that_ignore_cancellation(
    entry: str, tmp_path: Path
) -> None:
    args, pattern = ENTRY_POINTS[entry]
    with trio.fail_after(LIMIT):
        async with (
            worker(args, pattern, tmp_path) as proc,
            client(proc.url) as http,
            trio.open_nursery() as nursery,
        ):
            stubborn = start_sync_call(
                nursery, http, "stubborn", {"jobId": "s1", "params": {"seconds": IGNORE_SECONDS}}
            )
            stuck = start_sync_call(
                nursery, http, "stuck", {"jobId": "s2", "params": {"seconds": STUCK_SECONDS}}
            )
            await wait_running(http, {"stubborn": "ignoring", "stuck": "ignoring"})
            sent = proc.sigterm()

            # Draining, while the two jobs hold on: no new work, probes say so.
            await wait_draining(http)
            readyz = await http.get("/readyz")
            assert (readyz.status_code, readyz.json()) == (
                503,
                {"error": "server is shutting down"},
            )
            tasks = (await http.get("/health")).json()["tasks"]
            assert tasks["stubborn"]["status"] == tasks["stuck"]["status"] == "running"
            # Last request on this client: the 503 may close its connection (see
            # test_refused_runs_while_draining_leave_keep_alive_connections_usable).
            refused = await http.post("/run/slow", json={"jobId": "too-late"})
            assert (refused.status_code, refused.json()) == (
                503,
                {"error": "Server is shutting down"},
            )
            assert stubborn.at == stuck.at == 0.0, "answered before the shutdown timeout"

            await stubborn.done.wait()
            await stuck.done.wait()
            elapsed = await proc.exit_after(sent, EXIT_LIMIT)

    for call, job_id in ((stubborn, "s1"), (stuck, "s2")):
        body = call.body()
        assert body["jobId"] == job_id
        assert body["error"] == WORKER_SHUTDOWN
        assert SHUTDOWN_TIMEOUT - 0.5 <= call.at - sent < SHUTDOWN_TIMEOUT + 3
    # Step 4 of the shutdown writes every worker_shutdown result to the dead-letter dir.
    letters = proc.dead_letters()
    assert set(letters) == {"s1.json", "s2.json"}, letters
    assert without_meta(letters["s1.json"]) == stubborn.body()
    assert without_meta(letters["s2.json"]) == stuck.body()
    # The thread is abandoned at the timeout; the shielded async task, which gives
    # up 1 s later, delays the exit until then (one that holds on for longer is
    # left behind: test_sigterm_ends_the_process_while_shielded_tasks_go_on).
    assert SHUTDOWN_TIMEOUT - 0.5 <= elapsed < SHUTDOWN_TIMEOUT + 10, proc.log()
    assert elapsed < STUCK_SECONDS - 5, "the stuck thread was not abandoned"


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
async def test_sigterm_during_async_jobs_that_ignore_cancellation(
    entry: str, tmp_path: Path, receiver: Receiver
) -> None:
    args, pattern = ENTRY_POINTS[entry]
    with trio.fail_after(LIMIT):
        async with worker(args, pattern, tmp_path, receiver) as proc, client(proc.url) as http:
            await start_async_job(
                http, "stubborn", "a1", f"{receiver.url}/ok/stubborn", seconds=IGNORE_SECONDS
            )
            await start_async_job(
                http, "stuck", "a2", f"{receiver.url}/fail/stuck", seconds=STUCK_SECONDS
            )
            await wait_running(http, {"stubborn": "ignoring", "stuck": "ignoring"})
            sent = proc.sigterm()
            elapsed = await proc.exit_after(sent, EXIT_LIMIT)

    # One callback each (the stubborn task's late return sends nothing more).
    [delivered] = receiver.to("/ok/stubborn")
    [refused] = receiver.to("/fail/stuck")
    assert len(receiver.calls) == 2, receiver.calls
    for call, job_id in ((delivered, "a1"), (refused, "a2")):
        assert call.body["jobId"] == job_id
        assert call.body["error"] == WORKER_SHUTDOWN
        assert SHUTDOWN_TIMEOUT - 0.5 <= call.at - sent < SHUTDOWN_TIMEOUT + 3
    letters = proc.dead_letters()
    assert set(letters) == {"a2.json"}, letters
    assert without_meta(letters["a2.json"]) == refused.body
    assert letters["a2.json"]["deadLetter"]["attempts"] == 1
    assert SHUTDOWN_TIMEOUT - 0.5 <= elapsed < SHUTDOWN_TIMEOUT + 10, proc.log()
    assert elapsed < STUCK_SECONDS - 5, "the stuck thread was not abandoned"


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
async def test_sigterm_ends_the_process_while_shielded_tasks_go_on(
    entry: str, tmp_path: Path, receiver: Receiver
) -> None:
    # Where funtask owns the process, tasks that shield themselves from
    # cancellation for a minute cannot keep it: once their worker_shutdown
    # results are settled, it names them in one error line and exits (code 0)
    # within shutdown_timeout + 5 s.
    args, pattern = ENTRY_POINTS[entry]
    with trio.fail_after(LIMIT):
        async with (
            worker(args, pattern, tmp_path, receiver, shutdown_timeout=1) as proc,
            client(proc.url) as http,
            trio.open_nursery() as nursery,
        ):
            sync_call = start_sync_call(
                nursery, http, "stubborn", {"jobId": "held-sync", "params": {"seconds": 60}}
            )
            await start_async_job(
                http, "stubborn-too", "held-async", f"{receiver.url}/ok/held", seconds=60
            )
            await wait_running(http, {"stubborn": "ignoring", "stubborn-too": "ignoring"})
            sent = proc.sigterm()
            elapsed = await proc.exit_after(sent, 1 + 5)
            await sync_call.done.wait()

    assert elapsed < 6, proc.log()
    # The sync result is dead-lettered (its task never returned), and the
    # caller, still connected when it was settled, got it too.
    letters = proc.dead_letters()
    assert set(letters) == {"held-sync.json"}, letters
    assert letters["held-sync.json"]["error"] == WORKER_SHUTDOWN
    assert without_meta(letters["held-sync.json"]) == sync_call.body()
    # The callback receiver got the async job's worker_shutdown result once.
    [delivered] = receiver.to("/ok/held")
    assert len(receiver.calls) == 1, receiver.calls
    assert delivered.body["jobId"] == "held-async"
    assert delivered.body["error"] == WORKER_SHUTDOWN
    # One error line names both jobs; the normal end ("stopped after") never came.
    [error] = [line for line in proc.lines if " ERROR " in line]
    assert "stubborn 'held-sync'" in error and "stubborn-too 'held-async'" in error, error
    assert "ignored cancellation" in error
    assert not any("stopped after" in line for line in proc.lines), proc.log()


async def test_refused_runs_while_draining_leave_keep_alive_connections_usable(
    tmp_path: Path,
) -> None:
    # An orchestrator POSTing /run to a draining worker gets 503, and its HTTP
    # client reuses the keep-alive connection for the next request (here
    # /readyz). That request must not fail: the server either keeps the
    # connection usable or announces that it closes it ("Connection: close").
    args, pattern = ENTRY_POINTS["script"]
    attempts = 0
    failures: list[str] = []
    with trio.fail_after(LIMIT):
        async with (
            worker(args, pattern, tmp_path) as proc,
            client(proc.url) as http,
            client(proc.url) as orchestrator,
            trio.open_nursery() as nursery,
        ):
            stuck = start_sync_call(
                nursery,
                http,
                "stuck",
                {"jobId": "keeps-draining", "params": {"seconds": STUCK_SECONDS}},
            )
            await wait_running(http, {"stuck": "ignoring"})
            sent = proc.sigterm()
            await wait_draining(orchestrator)
            while trio.current_time() - sent < SHUTDOWN_TIMEOUT - 0.5 and attempts < 200:
                attempts += 1
                stage = f"POST /run #{attempts}"
                try:
                    refused = await orchestrator.post(
                        "/run/slow", json={"jobId": f"late-{attempts}"}, timeout=0.5
                    )
                    assert refused.status_code == 503, refused.text
                    stage = f"GET /readyz after POST /run #{attempts}"
                    readyz = await orchestrator.get("/readyz", timeout=0.5)
                    assert readyz.status_code == 503, readyz.text
                except httpx.TransportError as exc:
                    failures.append(f"{stage}: {exc!r}")
            await stuck.done.wait()
            await proc.exit_after(sent, EXIT_LIMIT)

    assert stuck.body()["error"] == WORKER_SHUTDOWN
    assert attempts >= 3, attempts
    assert not failures, (
        f"{len(failures)} of {attempts} rounds failed on a reused keep-alive connection: "
        + "; ".join(failures)
    )


# -- plain hypercorn -----------------------------------------------------------
#
# SIGTERM goes to hypercorn's parent, which tells its worker to stop: the worker
# stops accepting, gives in-flight requests --graceful-timeout, cuts them, and
# only then sends lifespan.shutdown, which runs funtask's drain.


async def test_hypercorn_sync_callers_are_cut_after_the_graceful_period(
    tmp_path: Path,
) -> None:
    args = hypercorn_args("-w", "1", "--graceful-timeout", str(GRACE))
    with trio.fail_after(LIMIT):
        async with (
            worker(args, HYPERCORN_RUNNING, tmp_path) as proc,
            client(proc.url) as http,
            trio.open_nursery() as nursery,
        ):
            slow = start_sync_call(nursery, http, "slow", {"jobId": "h-slow"})
            blocking = start_sync_call(nursery, http, "blocking", {"jobId": "h-blocking"})
            await wait_running(http, {"slow": "sleeping", "blocking": "working"})
            sent = proc.sigterm()
            await slow.done.wait()
            await blocking.done.wait()
            elapsed = await proc.exit_after(sent, EXIT_LIMIT)

    # What the caller sees: the connection closes without a response at the end
    # of the graceful period (httpx: RemoteProtocolError "Server disconnected").
    for call in (slow, blocking):
        assert call.response is None, call.response.text if call.response else ""
        assert isinstance(call.error, httpx.RemoteProtocolError), repr(call.error)
        assert GRACE - 0.2 <= call.at - sent < GRACE + 2
    # Nothing lost: both results are in the dead-letter dir.
    letters = proc.dead_letters()
    assert set(letters) == {"h-slow.json", "h-blocking.json"}, letters
    slow_result = letters["h-slow.json"]
    assert slow_result["success"] is False
    assert slow_result["error"]["code"] == "cancelled"
    assert slow_result["error"]["step"] == "sleeping"
    # The server cut the connection; either reason describes it.
    assert slow_result["error"]["message"] in {
        "job cancelled: client disconnected",
        "job cancelled: server shutting down",
    }
    assert slow_result["deadLetter"]["callbackUrl"] == ""
    blocking_result = letters["h-blocking.json"]
    assert blocking_result["success"] is True and blocking_result["message"] == "stopped"
    assert elapsed < GRACE + QUICK_EXIT, proc.log()


async def test_hypercorn_in_flight_sync_job_finishing_within_the_graceful_period(
    tmp_path: Path,
) -> None:
    args = hypercorn_args("-w", "1")  # hypercorn's default graceful timeout (3 s)
    with trio.fail_after(LIMIT):
        async with (
            worker(args, HYPERCORN_RUNNING, tmp_path) as proc,
            client(proc.url) as http,
            trio.open_nursery() as nursery,
        ):
            call = start_sync_call(
                nursery, http, "slow", {"jobId": "in-flight", "params": {"seconds": 1}}
            )
            await wait_running(http, {"slow": "sleeping"})
            sent = proc.sigterm()
            await call.done.wait()
            elapsed = await proc.exit_after(sent, EXIT_LIMIT)

    body = call.body()
    assert body["jobId"] == "in-flight"
    assert body["success"] is True and body["message"] == "slept"
    assert call.at - sent < HYPERCORN_DEFAULT_GRACE
    assert proc.dead_letters() == {}
    assert elapsed < HYPERCORN_DEFAULT_GRACE + QUICK_EXIT, proc.log()


async def test_hypercorn_async_jobs_drain_after_the_graceful_period(
    tmp_path: Path, receiver: Receiver
) -> None:
    args = hypercorn_args("-w", "1", "--graceful-timeout", str(GRACE))
    with trio.fail_after(LIMIT):
        async with (
            worker(args, HYPERCORN_RUNNING, tmp_path, receiver) as proc,
            client(proc.url) as http,
        ):
            await start_async_job(http, "slow", "ha-slow", f"{receiver.url}/ok/slow")
            await start_async_job(http, "blocking", "ha-blocking", f"{receiver.url}/fail/b")
            await wait_running(http, {"slow": "sleeping", "blocking": "working"})
            sent = proc.sigterm()
            elapsed = await proc.exit_after(sent, EXIT_LIMIT)

    [delivered] = receiver.to("/ok/slow")
    assert delivered.body["jobId"] == "ha-slow"
    assert delivered.body["error"] == CANCELLED_BY_SHUTDOWN
    [refused] = receiver.to("/fail/b")
    assert refused.body["jobId"] == "ha-blocking"
    assert refused.body["success"] is True and refused.body["message"] == "stopped"
    letters = proc.dead_letters()
    assert set(letters) == {"ha-blocking.json"}, letters
    assert without_meta(letters["ha-blocking.json"]) == refused.body
    assert letters["ha-blocking.json"]["deadLetter"]["attempts"] == 1
    assert elapsed < GRACE + QUICK_EXIT, proc.log()


async def test_hypercorn_jobs_that_ignore_cancellation(tmp_path: Path, receiver: Receiver) -> None:
    args = hypercorn_args("-w", "1", "--graceful-timeout", str(GRACE))
    with trio.fail_after(LIMIT):
        async with (
            worker(args, HYPERCORN_RUNNING, tmp_path, receiver) as proc,
            client(proc.url) as http,
            trio.open_nursery() as nursery,
        ):
            sync_call = start_sync_call(
                nursery,
                http,
                "stubborn",
                {"jobId": "hs1", "params": {"seconds": HYPERCORN_IGNORE_SECONDS}},
            )
            await start_async_job(
                http, "stuck", "hs2", f"{receiver.url}/ok/stuck", seconds=STUCK_SECONDS
            )
            await wait_running(http, {"stubborn": "ignoring", "stuck": "ignoring"})
            sent = proc.sigterm()
            await sync_call.done.wait()
            elapsed = await proc.exit_after(sent, EXIT_LIMIT)

    drain_end = GRACE + SHUTDOWN_TIMEOUT  # lifespan.shutdown comes after the graceful period
    # The sync caller is cut at the end of the graceful period...
    assert isinstance(sync_call.error, httpx.RemoteProtocolError), repr(sync_call.error)
    assert GRACE - 0.2 <= sync_call.at - sent < GRACE + 2
    # ... and its worker_shutdown result is dead-lettered once, at the shutdown timeout.
    letters = proc.dead_letters()
    assert set(letters) == {"hs1.json"}, letters
    assert letters["hs1.json"]["jobId"] == "hs1"
    assert letters["hs1.json"]["error"] == WORKER_SHUTDOWN
    # The async job's worker_shutdown result is delivered (so its dead letter is gone).
    [delivered] = receiver.to("/ok/stuck")
    assert delivered.body["jobId"] == "hs2"
    assert delivered.body["error"] == WORKER_SHUTDOWN
    assert drain_end - 0.5 <= delivered.at - sent < drain_end + 3
    assert drain_end - 0.5 <= elapsed < drain_end + 10, proc.log()


async def test_hypercorn_new_connections_are_not_served_during_the_graceful_period(
    tmp_path: Path,
) -> None:
    args = hypercorn_args("-w", "1", "--graceful-timeout", "2")
    late: dict[str, Any] = {}
    with trio.fail_after(LIMIT):
        async with (
            worker(args, HYPERCORN_RUNNING, tmp_path) as proc,
            client(proc.url) as http,
            # A fresh connection per request, so that "new connection" is what is tested.
            client(proc.url, limits=httpx.Limits(max_keepalive_connections=0)) as fresh,
            trio.open_nursery() as nursery,
        ):
            in_flight = start_sync_call(nursery, http, "slow", {"jobId": "keeps-grace-open"})
            await wait_running(http, {"slow": "sleeping"})
            sent = proc.sigterm()

            async def stopped_serving_new_connections() -> bool:
                try:
                    await fresh.get("/livez", timeout=0.25)
                except httpx.TransportError:
                    return True
                return False

            await wait_until(stopped_serving_new_connections)
            assert in_flight.at == 0.0, "the graceful period is over already"
            started = trio.current_time()
            try:
                response = await fresh.post("/run/blocking", json={"jobId": "late"}, timeout=1.0)
                late["outcome"] = f"HTTP {response.status_code} {response.text}"
            except httpx.TransportError as exc:
                late["outcome"] = exc
            late["seconds"] = trio.current_time() - started
            await in_flight.done.wait()
            await proc.exit_after(sent, EXIT_LIMIT)

    # Nothing lost: the late request started no job; the cut caller's result is kept.
    assert set(proc.dead_letters()) == {"keeps-grace-open.json"}
    # The hypercorn parent still holds the listening socket, so the kernel accepts the
    # connection, but nothing serves it (README, "Plain hypercorn"): the caller gets a
    # transport error, never an answer, and no job runs.
    assert isinstance(late["outcome"], httpx.TransportError), late["outcome"]


async def test_hypercorn_sigterm_to_the_whole_process_group_drains_at_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    # systemd's KillMode=control-group signals the parent and the worker alike.
    args = hypercorn_args("-w", "1")  # default graceful timeout: 3 s
    with trio.fail_after(LIMIT):
        async with (
            worker(args, HYPERCORN_RUNNING, tmp_path, receiver) as proc,
            client(proc.url) as http,
            trio.open_nursery() as nursery,
        ):
            call = start_sync_call(nursery, http, "slow", {"jobId": "cg-slow"})
            await start_async_job(http, "blocking", "cg-blocking", f"{receiver.url}/ok/b")
            await wait_running(http, {"slow": "sleeping", "blocking": "working"})
            sent = proc.sigterm(group=True)
            await call.done.wait()
            elapsed = await proc.exit_after(sent, EXIT_LIMIT)

    # The worker drained on its own SIGTERM: the sync caller got its cancelled result.
    body = call.body()
    assert body["jobId"] == "cg-slow"
    assert body["error"] == CANCELLED_BY_SHUTDOWN
    assert call.at - sent < 1.5
    [delivered] = receiver.to("/ok/b")
    assert delivered.body["jobId"] == "cg-blocking"
    assert delivered.body["success"] is True and delivered.body["message"] == "stopped"
    assert proc.dead_letters() == {}
    assert elapsed < HYPERCORN_DEFAULT_GRACE + QUICK_EXIT, proc.log()


async def test_hypercorn_single_process_mode_drains_and_exits_on_sigterm(
    tmp_path: Path,
) -> None:
    # -w 0: hypercorn runs the app in its own process and installs no signal
    # handler, so SIGTERM reaches funtask's lifespan handler directly.
    args = hypercorn_args("-w", "0")
    with trio.fail_after(LIMIT):
        async with (
            worker(args, HYPERCORN_RUNNING, tmp_path) as proc,
            client(proc.url) as http,
            trio.open_nursery() as nursery,
        ):
            call = start_sync_call(nursery, http, "slow", {"jobId": "w0-slow"})
            await wait_running(http, {"slow": "sleeping"})
            sent = proc.sigterm()
            await call.done.wait()
            body = call.body()
            assert body["error"] == CANCELLED_BY_SHUTDOWN
            elapsed = await proc.exit_after(sent, HYPERCORN_DEFAULT_GRACE + QUICK_EXIT)

    assert proc.dead_letters() == {}
    assert elapsed < HYPERCORN_DEFAULT_GRACE + QUICK_EXIT, proc.log()
