"""Shared builders for the server tests (imported by the test modules)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeAlias

import httpx
import trio

import funtask
from funtask._stores.sqlite import SQLiteStore

TOKEN = "test-token"


def build_server(dead_letter_dir: Path, **config: Any) -> funtask.Server:
    """A server with the tasks most tests use."""
    config.setdefault("auth_token", TOKEN)
    server = funtask.Server("testsrv", dead_letter_dir=dead_letter_dir, **config)

    @server.task(description="Says hello", example={"name": "World"})
    async def greet(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        name = params.str("name", "World")
        run.step("greeting")
        return funtask.ok(f"Hello, {name}!").with_data("name", name)

    @server.task
    async def sleeper(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        seconds = params.float("seconds", 3600)
        run.progress(1, 4, "sleeping")
        await trio.sleep(seconds)
        return funtask.ok("slept")

    return server


# -- task factories --------------------------------------------------------------------
#
# The little tasks many tests register. Each call adds one task to ``server`` and
# passes ``options`` (``description=``, ``example=``, ``keep_results=``) to
# ``Server.add_task``; a test then defines only the task that is special to it.


def add_sleeper(
    server: funtask.Server,
    name: str = "sleeper",
    *,
    seconds: float = 3600,
    step: str | None = "sleeping",
    progress: tuple[int, int, str] | None = None,
    started: trio.Event | None = None,
    message: str = "slept",
    **options: Any,
) -> None:
    """Add a task that reports ``step`` (or ``progress``), sets ``started``, then sleeps.

    It sleeps ``seconds`` (``math.inf``: until cancelled) and returns ``ok(message)``.
    """

    async def sleeper(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        if progress is not None:
            run.progress(*progress)
        elif step is not None:
            run.step(step)
        if started is not None:
            started.set()
        await trio.sleep(seconds)
        return funtask.ok(message)

    server.add_task(name, sleeper, **options)


def add_succeeder(server: funtask.Server, name: str, message: str = "", **options: Any) -> None:
    """Add a task that returns ``ok(message)`` at once."""

    async def succeed(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        return funtask.ok(message)

    server.add_task(name, succeed, **options)


def add_failer(
    server: funtask.Server,
    name: str,
    code: str,
    message: str,
    *,
    step: str | None = None,
    **options: Any,
) -> None:
    """Add a task that reports ``step`` (if any) and returns ``fail(code, message)``."""

    async def fail(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        if step is not None:
            run.step(step)
        return funtask.fail(code, message)

    server.add_task(name, fail, **options)


def add_raiser(
    server: funtask.Server,
    name: str,
    error: Callable[[], BaseException],
    *,
    step: str | None = None,
    **options: Any,
) -> None:
    """Add a task that reports ``step`` (if any) and raises a fresh ``error()`` each run."""

    async def raise_(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        if step is not None:
            run.step(step)
        raise error()

    server.add_task(name, raise_, **options)


def add_stubborn(
    server: funtask.Server,
    name: str = "stubborn",
    *,
    shielded: float,
    started: trio.Event | None = None,
    returns: bool = False,
) -> None:
    """Add a task that survives its first cancellation for ``shielded`` seconds.

    It reports the step ``"stubborn"``, sets ``started`` and sleeps an hour; once
    cancelled it sleeps ``shielded`` seconds more, shielded, and then re-raises the
    cancellation or, with ``returns``, returns ``ok("finished anyway")``.
    """

    async def stubborn(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("stubborn")
        if started is not None:
            started.set()
        try:
            await trio.sleep(3600)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await trio.sleep(shielded)
            if returns:
                return funtask.ok("finished anyway")
            raise
        return funtask.ok("slept an hour")

    server.add_task(name, stubborn)


# -- callback receivers ------------------------------------------------------------------

#: How a receiver answers one callback: a status code, a whole response, or an
#: exception to raise (an ``httpx.TransportError`` reads as a network failure).
Answer: TypeAlias = "int | httpx.Response | Exception"


class Attempt(NamedTuple):
    """One callback POST as a :class:`CallbackReceiver` saw it."""

    at: float  # trio.current_time() in process; time.monotonic() on a socket
    request: httpx.Request
    body: bytes


class CallbackReceiver:
    """Records the callbacks it receives and answers each one from ``answers``.

    ``answers`` is one answer for every request, a list of answers (one a request,
    the last repeating), or a function of the request. Each answer is given after
    ``delay`` seconds. Pass :meth:`transport` as a server's ``callback_transport``
    (in process, on the mock clock), or :meth:`listen` on a real loopback port.
    """

    def __init__(
        self,
        answers: Answer | list[Answer] | Callable[[httpx.Request], Answer] = 200,
        *,
        delay: float = 0.0,
    ) -> None:
        self.answers = answers
        self.delay = delay
        self.attempts: list[Attempt] = []

    @property
    def urls(self) -> list[str]:
        """The URL of each attempt, in order."""
        return [str(attempt.request.url) for attempt in self.attempts]

    @property
    def payloads(self) -> list[Any]:
        """The JSON body of each attempt, in order."""
        return [json.loads(attempt.body) for attempt in self.attempts]

    def times(self, origin: float) -> list[float]:
        """When each attempt arrived, in seconds after ``origin`` (to the millisecond)."""
        return [round(attempt.at - origin, 3) for attempt in self.attempts]

    def transport(self) -> httpx.MockTransport:
        """An in-process transport delivering to this receiver."""
        return httpx.MockTransport(self._handle)

    @contextmanager
    def listen(self, path: str = "/hook") -> Iterator[str]:
        """Receive on a loopback port (a thread) for the block; yields the URL of ``path``.

        An exception answer closes the connection without a response.
        """
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                url = f"http://{self.headers.get('Host', 'localhost')}{self.path}"
                request = httpx.Request("POST", url, headers=self.headers.items(), content=body)
                try:
                    response = receiver._answer(Attempt(time.monotonic(), request, body))
                except Exception:
                    self.close_connection = True
                    return
                time.sleep(receiver.delay)
                self.send_response(response.status_code)
                for name, value in response.headers.items():
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                if response.status_code not in (204, 304):  # the two that have no body
                    self.send_header("Content-Length", str(len(response.content)))
                self.end_headers()
                self.wfile.write(response.content)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=httpd.serve_forever, name="receiver", daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}{path}"
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(10)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        response = self._answer(Attempt(trio.current_time(), request, body))
        await trio.sleep(self.delay)
        return response

    def _answer(self, attempt: Attempt) -> httpx.Response:
        self.attempts.append(attempt)
        answers = self.answers
        if callable(answers):
            answer = answers(attempt.request)
        elif isinstance(answers, list):
            answer = answers[min(len(self.attempts), len(answers)) - 1]
        else:
            answer = answers
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):  # a fresh copy: a response is sent only once
            return httpx.Response(
                answer.status_code, headers=answer.headers, content=answer.content
            )
        return httpx.Response(answer)


# -- waiting on a server -------------------------------------------------------------------


def no_jobs(server: funtask.Server) -> bool:
    """Whether ``server`` runs and has no job left (deliveries included)."""
    return server._runtime is not None and not server._runtime.runner.jobs()


async def wait_idle(client: httpx.AsyncClient, *tasks: str, interval: float = 0.25) -> None:
    """Poll ``/health`` until ``tasks`` (default: every task) are idle, ``interval`` apart."""

    async def idle() -> bool:
        health = (await client.get("/health")).json()["tasks"]
        return all(health[task]["status"] == "idle" for task in tasks or health)

    await wait_until(idle, interval=interval)


async def first_frame(response: httpx.Response) -> bytes:
    """The first SSE frame of a streaming response (read in a task, then cancelled)."""
    frames: list[bytes] = []

    async def pump(cancel_scope: trio.CancelScope) -> None:
        buffer = b""
        async for chunk in response.aiter_raw():
            buffer += chunk
            if b"\n\n" in buffer:
                frames.append(buffer.partition(b"\n\n")[0])
                cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, nursery.cancel_scope)
    return frames[0]


async def wait_until(predicate: Any, *, interval: float = 0.01) -> None:
    """Poll ``predicate`` (sync or async) until it is true, sleeping ``interval`` between tries."""
    while True:
        outcome = predicate()
        if hasattr(outcome, "__await__"):
            outcome = await outcome
        if outcome:
            return
        await trio.sleep(interval)


# == Worker processes ============================================================
# The launcher for tests that need a real worker process (signals, exit codes,
# what reaches stderr): test_serving.py, test_shutdown_process.py and
# test_process.py. Kept apart from the builders above.

REPO: Final = Path(__file__).resolve().parent.parent
LISTENING: Final = r"listening on (http://\S+)"  # funtask's line once the socket is bound
WORKER_STARTUP_LIMIT: Final = 30.0  # seconds; a safety net, never a wait for a state


def worker_env(**settings: str) -> dict[str, str]:
    """This environment without ``FUNTASK_*`` variables, unbuffered, plus ``settings``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FUNTASK_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


@dataclass
class WorkerProcess:
    """A worker process started by :func:`worker_process`, serving at ``url``."""

    process: trio.Process
    url: str
    lines: list[str]  # its stdout and stderr, merged, line by line

    def log(self, last: int = 80) -> str:
        """The worker's recent output, for assertion messages."""
        return "\n".join(self.lines[-last:])

    def send(self, signum: int = signal.SIGTERM, *, group: bool = False) -> float:
        """Send ``signum`` to the worker (or its whole process group); return the time sent."""
        sent = trio.current_time()
        if group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)
        return sent

    def sigterm(self, *, group: bool = False) -> float:
        """Send SIGTERM (see :meth:`send`)."""
        return self.send(signal.SIGTERM, group=group)

    async def exit_after(self, sent: float, limit: float, *, code: int = 0) -> float:
        """Wait up to ``limit`` s after ``sent`` for the exit with ``code``; return the seconds."""
        with trio.move_on_after(max(sent + limit - trio.current_time(), 0)):
            await self.process.wait()
        elapsed = trio.current_time() - sent
        assert self.process.returncode is not None, (
            f"worker still running {elapsed:.1f}s after the signal; output:\n{self.log()}"
        )
        assert self.process.returncode == code, (
            f"exit code {self.process.returncode}, not {code}; output:\n{self.log()}"
        )
        return elapsed


@asynccontextmanager
async def worker_process(
    args: list[str],
    *,
    env: dict[str, str],
    pattern: str = LISTENING,
    startup_limit: float = WORKER_STARTUP_LIMIT,
) -> AsyncIterator[WorkerProcess]:
    """Start ``args`` in the repository, in a process group of its own.

    Yields once an output line matches ``pattern``, whose group 1 is the URL;
    fails if the worker exits first. On leaving, the whole group is killed (a
    plain-hypercorn worker is its parent's child).
    """
    lines: list[str] = []
    found = trio.Event()
    url = ""
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                args,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                check=False,
            )
        )

        async def read_output() -> None:
            nonlocal url
            buffer = b""
            assert process.stdout is not None
            async for chunk in process.stdout:
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for raw in complete:
                    line = raw.decode(errors="replace")
                    lines.append(line)
                    match = re.search(pattern, line)
                    if match and not found.is_set():
                        url = match.group(1)
                        found.set()
            found.set()  # end of output: the worker is gone

        nursery.start_soon(read_output)
        try:
            with trio.fail_after(startup_limit):
                await found.wait()
            assert url, "worker exited before it was serving:\n" + "\n".join(lines)
            yield WorkerProcess(process, url, lines)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            nursery.cancel_scope.cancel()


# == SQLite store outages ======================================================


def sqlite_store(server: funtask.Server) -> SQLiteStore:
    runtime = server._runtime
    assert runtime is not None
    store = runtime.store
    assert isinstance(store, SQLiteStore)
    return store


def break_store(server: funtask.Server) -> None:
    """Make SQLite refuse every statement on the store's connection (an outage)."""
    conn = sqlite_store(server)._conn
    assert conn is not None
    conn.set_authorizer(lambda *args: sqlite3.SQLITE_DENY)


def mend_store(server: funtask.Server) -> None:
    conn = sqlite_store(server)._conn
    assert conn is not None
    # Allow everything again (``set_authorizer(None)`` needs Python 3.11).
    conn.set_authorizer(lambda *args: sqlite3.SQLITE_OK)
