"""The ASGI apps that ``python -m bench`` serves, each with ``python -m hypercorn -k trio -w 1``.

Floors (the cost of the stack funtask is built on):

- ``raw_asgi``: a bare ASGI callable; ``POST`` reads the whole body and answers
  :data:`FIXED_ANSWER`; ``GET /blob?n=N`` answers ``N`` bytes of JSON (the
  floor for sending a ``/health``-sized document).
- ``quart_app``: a bare quart-trio app with ``POST /run/<task>`` doing the same.

funtask servers (token from ``$FUNTASK_AUTH_TOKEN``, dead letters in
``$FUNTASK_DEAD_LETTER_DIR``, both set by the harness):

- ``overhead``: ``greet0`` … ``greet15``, the ``greet`` task of
  ``examples/counter.py`` under sixteen names (one slot per task, so sixteen
  connections can each run their own); default history (10 per task) and
  metrics on (the default).
- ``overhead_nometrics``: the same with ``metrics=False``.
- ``progress``: ``spin`` (times ``run.progress`` in a loop) and ``fanout``
  (calls ``run.progress`` as fast as it can for a while).
- ``health``: fifty tasks ``t00`` … ``t49`` keeping 100 results each.
- ``callbacks``: ``$BENCH_CALLBACK_TASKS`` tasks (ten unless set) ``a0``,
  ``a1`` … with callbacks allowed to ``$BENCH_CALLBACK_ORIGIN`` (the harness's
  receiver).

``$FUNTASK_BENCH_OTEL`` (read at import, before funtask starts serving) sets
what the server process has of OpenTelemetry: unset, the API as installed
(no SDK configured); ``block``, nothing (a ``sys.meta_path`` finder makes every
``opentelemetry`` import fail, as if the package were not installed);
``sdk``, an SDK ``TracerProvider`` with a ``BatchSpanProcessor`` whose exporter
discards the spans (the cost of making spans, not of shipping them).
"""

from __future__ import annotations

import importlib.abc
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import parse_qs

import trio
from quart import Response, request
from quart_trio import QuartTrio

import funtask
from examples.counter import greet
from funtask._hypercorn_fixes import install_hypercorn_fixes

__all__ = [
    "FIXED_ANSWER",
    "GREET_TASKS",
    "callbacks",
    "health",
    "overhead",
    "overhead_nometrics",
    "progress",
    "quart_app",
    "raw_asgi",
    "raw_asgi_fixed",
]

GREET_TASKS: Final = 16


# -- OpenTelemetry in this process ($FUNTASK_BENCH_OTEL) -------------------------


class _NoOpenTelemetry(importlib.abc.MetaPathFinder):
    """Makes every ``opentelemetry`` import fail, as without the package."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: Any = None) -> None:
        if name.partition(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)


def _configure_opentelemetry(mode: str) -> None:
    if mode == "block":
        sys.meta_path.insert(0, _NoOpenTelemetry())
    elif mode == "sdk":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class Discard(SpanExporter):
            def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Discard()))
        trace.set_tracer_provider(provider)
    elif mode == "import":  # the package imported, funtask's tracing observer left out
        import opentelemetry.trace  # noqa: F401

        import funtask._runtime

        funtask._runtime._tracing_observer = lambda: None  # type: ignore[attr-defined]
    elif mode:
        raise RuntimeError(f"FUNTASK_BENCH_OTEL must be block or sdk, not {mode!r}")


_configure_opentelemetry(os.environ.get("FUNTASK_BENCH_OTEL", ""))

#: What the floors answer: the shape and size of funtask's answer to ``greet``.
FIXED_ANSWER: Final = (
    b'{"jobId":"00000000-0000-4000-8000-000000000000","success":true,'
    b'"message":"Hello, g0!","duration":"0s","durationMs":0,"data":{"name":"g0"}}'
)
_JSON_HEADERS: Final = [(b"content-type", b"application/json")]


# -- floor 1: a raw ASGI callable ---------------------------------------------

_blobs: dict[int, bytes] = {}


def _blob(size: int) -> bytes:
    """``size`` bytes of valid JSON (a string), cached."""
    body = _blobs.get(size)
    if body is None:
        body = _blobs[size] = b'"' + b"x" * max(size - 2, 0) + b'"'
    return body


async def raw_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The floor: read the request body, write a fixed JSON answer."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/sse":
        await _raw_sse(scope, send)
        return
    body = FIXED_ANSWER
    if scope["method"] == "GET" and scope["path"] == "/blob":
        query = parse_qs(scope["query_string"].decode("latin-1"))
        body = _blob(int(query.get("n", ["0"])[0]))
    else:
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def raw_asgi_fixed(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """:func:`raw_asgi` on the hypercorn funtask serves on: its fixes installed at startup.

    funtask replaces hypercorn's per-request keep-alive timer task with one timer
    per connection (``funtask/_hypercorn_fixes.py``); this floor gets the same
    change, so funtask is not measured against a server it has made cheaper.
    """
    if scope["type"] == "lifespan":
        install_hypercorn_fixes()
    await raw_asgi(scope, receive, send)


def _sse_settings(query: dict[str, list[str]]) -> tuple[bytes, float]:
    size = int(query.get("n", ["600"])[0])
    frame = b"data: " + _blob(max(size - 8, 2)) + b"\n\n"
    return frame, float(query.get("interval", ["0.05"])[0])


async def _raw_sse(scope: dict[str, Any], send: Any) -> None:
    """The SSE floor: a frame of ``n`` bytes every ``interval`` seconds, until disconnect."""
    frame, interval = _sse_settings(parse_qs(scope["query_string"].decode("latin-1")))
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    deadline = trio.current_time()
    while True:
        await send({"type": "http.response.body", "body": frame, "more_body": True})
        deadline += interval
        await trio.sleep_until(deadline)


# -- floor 2: a bare quart-trio route ------------------------------------------

quart_app = QuartTrio("bench-floor")


@quart_app.route("/run/<task>", methods=["POST"])
async def quart_run(task: str) -> Response:
    """The quart-trio floor: read the body, answer the fixed JSON."""
    await request.get_data()
    return Response(FIXED_ANSWER, content_type="application/json")


@quart_app.route("/blob", methods=["GET"])
async def quart_blob() -> Response:
    """``n`` bytes of JSON through Quart."""
    return Response(_blob(int(request.args.get("n", "0"))), content_type="application/json")


@quart_app.route("/sse", methods=["GET"])
async def quart_sse() -> Response:
    """The SSE floor through Quart: a streamed async generator, as funtask's /events."""
    frame, interval = _sse_settings({k: request.args.getlist(k) for k in request.args})

    async def frames() -> Any:
        deadline = trio.current_time()
        while True:
            yield frame
            deadline += interval
            await trio.sleep_until(deadline)

    response = Response(frames(), content_type="text/event-stream")
    response.timeout = None
    return response


# -- funtask servers -------------------------------------------------------------


def _server(name: str, **config: Any) -> funtask.Server:
    return funtask.Server(name, dashboard=False, **config)


overhead = _server("bench-overhead")
overhead_nometrics = _server("bench-overhead-nometrics", metrics=False)
for _index in range(GREET_TASKS):
    overhead.add_task(f"greet{_index}", greet, description="Says hello")
    overhead_nometrics.add_task(f"greet{_index}", greet, description="Says hello")


progress = _server("bench-progress", max_event_clients=5000)


@progress.task
async def spin(run: funtask.Run, params: funtask.Params) -> funtask.Result:
    """Time ``n`` calls of ``run.progress``; ``batch`` > 0 yields to Trio between batches.

    Only the calls are timed (``perf_counter_ns`` around each batch), not the
    checkpoints between batches. ``message`` passes a new step message each call.
    """
    n = params.int("n", 1_000_000)
    batch = params.int("batch", 0) or n
    with_message = params.bool("message", False)
    report = run.progress
    messages = [f"item {i}" for i in range(batch)] if with_message else None
    timed = 0
    empty = 0
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        if messages is None:
            begin = time.perf_counter_ns()
            for i in range(start, stop):
                report(i, n)
            timed += time.perf_counter_ns() - begin
        else:
            begin = time.perf_counter_ns()
            for i in range(start, stop):
                report(i, n, messages[i - start])
            timed += time.perf_counter_ns() - begin
        begin = time.perf_counter_ns()
        for _ in range(start, stop):  # the bare loop, for reference
            pass
        empty += time.perf_counter_ns() - begin
        if stop < n:
            await trio.lowlevel.checkpoint()
    return (
        funtask.ok("spun")
        .with_data("calls", n)
        .with_data("ns_per_call", timed / n)
        .with_data("loop_ns_per_iteration", empty / n)
    )


@progress.task
async def fanout(run: funtask.Run, params: funtask.Params) -> funtask.Result:
    """Call ``run.progress`` as fast as possible for ``seconds``, yielding every ``every`` calls.

    Returns the call count, calls per second, the server thread's CPU time and the
    part of it spent in this task's own loop (``task_cpu_seconds``), and
    ``end_monotonic`` (CLOCK_MONOTONIC just before returning) for the fan-out delay.
    """
    seconds = params.float("seconds", 5.0)
    every = params.int("every", 100)
    report = run.progress
    total = 1_000_000_000
    calls = 0
    begin = time.perf_counter()
    deadline = begin + seconds
    cpu_begin = time.thread_time()  # the server's one Trio thread, not just this task
    own_cpu = 0.0  # the thread's CPU time while this task ran (between checkpoints)
    while time.perf_counter() < deadline:
        batch_begin = time.thread_time()
        for _ in range(every):
            calls += 1
            report(calls, total)
        own_cpu += time.thread_time() - batch_begin
        await trio.lowlevel.checkpoint()
    elapsed = time.perf_counter() - begin
    end = time.monotonic()
    return (
        funtask.ok("fanned out")
        .with_data("calls", calls)
        .with_data("seconds", elapsed)
        .with_data("calls_per_second", calls / elapsed)
        .with_data("server_cpu_seconds", time.thread_time() - cpu_begin)
        .with_data("task_cpu_seconds", own_cpu)
        .with_data("end_monotonic", end)
    )


health = _server("bench-health", result_history=100)


async def _trivial(run: funtask.Run, params: funtask.Params) -> funtask.Result:
    return funtask.ok("done")


for _index in range(50):
    health.add_task(f"t{_index:02d}", _trivial)


callbacks = _server(
    "bench-callbacks",
    callback_allowlist=[os.environ.get("BENCH_CALLBACK_ORIGIN", "http://127.0.0.1:9")],
)
for _index in range(int(os.environ.get("BENCH_CALLBACK_TASKS", "10"))):
    callbacks.add_task(f"a{_index}", _trivial)
