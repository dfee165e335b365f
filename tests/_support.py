"""Shared builders for the server tests (imported by the test modules)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias

import httpx
import trio

import funtask

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
