"""Traces (SPEC section 6): job and callback spans, trace context forwarding, no-package mode.

Spans are recorded by the SDK's in-memory exporter on a ``TracerProvider`` that
the ``sdk`` fixture hands out as the global provider for one test only
(``opentelemetry.trace.get_tracer_provider`` is patched; the API lets a
process *set* the global provider just once). Without the fixture the global
provider is the API's proxy: no SDK is configured.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from trio.testing import MockClock

import funtask
from funtask._app import open_quart
from funtask._asgi_client import ASGIStreamTransport
from funtask._jobs import Job
from funtask._logjson import JSONFormatter
from funtask._observe import Observer, combine_observers
from funtask._params import Params
from funtask._replay import replay_dead_letters
from funtask._run import Run
from funtask._serving import without_lifespan
from funtask._tasks import TaskDef
from funtask._tracecontext import valid_traceparent, valid_tracestate
from funtask.testing import open_test_client

from _support import CallbackReceiver, add_failer, add_raiser, build_server, wait_idle

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
HOOK = "https://hooks.example.com/hooks/done"


class Recorded:
    """The spans a test's SDK exported, by name."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter
        self.provider: TracerProvider | None = None

    def spans(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    def job(self) -> ReadableSpan:
        (span,) = self.spans("funtask.job")
        return span


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    """An SDK with an in-memory exporter as the global tracer provider, for this test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    recorded = Recorded(exporter)
    recorded.provider = provider
    yield recorded
    provider.shutdown()


def make_server(tmp_path: Path, **config: Any) -> funtask.Server:
    config.setdefault("callback_allowlist", ["https://hooks.example.com/hooks"])
    return build_server(tmp_path, **config)


def hexes(span: ReadableSpan) -> tuple[str, str]:
    """A span's trace id and span id as in a ``traceparent``."""
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def parent_id(span: ReadableSpan) -> str:
    assert span.parent is not None
    return f"{span.parent.span_id:016x}"


def step_messages(span: ReadableSpan) -> list[Any]:
    return [e.attributes["funtask.step"] for e in span.events if e.name == "funtask.step"]


# -- the job span --------------------------------------------------------------------------


async def test_job_span_continues_the_incoming_traceparent(
    autojump_clock: MockClock, tmp_path: Path, sdk: Recorded
) -> None:
    async with open_test_client(make_server(tmp_path)) as client:
        response = await client.post(
            "/run/greet",
            json={"jobId": "j1", "params": {"name": "Ada"}},
            headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE},
        )
        assert response.status_code == 200
    span = sdk.job()
    assert hexes(span)[0] == TRACE_ID
    assert parent_id(span) == PARENT_ID
    assert span.kind is SpanKind.INTERNAL
    assert dict(span.attributes or {}) == {
        "funtask.task": "greet",
        "funtask.job_id": "j1",
        "funtask.outcome": "success",
    }
    assert step_messages(span) == ["greeting"]
    assert span.status.status_code is StatusCode.UNSET
    assert span.get_span_context().trace_state.to_header() == TRACESTATE


async def test_job_without_incoming_context_starts_a_trace(
    autojump_clock: MockClock, tmp_path: Path, sdk: Recorded
) -> None:
    async with open_test_client(make_server(tmp_path)) as client:
        response = await client.post(
            "/run/greet", json={}, headers={"traceparent": "00-garbage-01"}
        )
        assert response.status_code == 200
    assert sdk.job().parent is None


async def test_step_events_stop_at_100(
    autojump_clock: MockClock, tmp_path: Path, sdk: Recorded
) -> None:
    server = make_server(tmp_path)

    @server.task
    async def chatty(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        for i in range(150):
            run.step(f"s{i}")
        run.progress(2, 3, "last")
        return funtask.ok()

    async with open_test_client(server) as client:
        assert (await client.post("/run/chatty")).status_code == 200
    assert step_messages(sdk.job()) == [f"s{i}" for i in range(100)]


async def test_failure_sets_error_status_and_code_without_a_traceback(
    autojump_clock: MockClock, tmp_path: Path, sdk: Recorded
) -> None:
    server = make_server(tmp_path)
    add_failer(server, "failer", "db_error", "connection refused", step="connecting")
    add_raiser(server, "refuser", lambda: funtask.TaskError("quota", "over quota"))
    async with open_test_client(server) as client:
        assert (await client.post("/run/failer")).json()["error"]["code"] == "db_error"
        assert (await client.post("/run/refuser")).json()["error"]["code"] == "quota"
    spans = {s.attributes["funtask.task"]: s for s in sdk.spans("funtask.job")}
    for task, code in (("failer", "db_error"), ("refuser", "quota")):
        span = spans[task]
        assert span.attributes is not None
        assert span.attributes["funtask.outcome"] == "failure"
        assert span.attributes["funtask.error.code"] == code
        assert span.status.status_code is StatusCode.ERROR
        assert [e.name for e in span.events if e.name == "exception"] == []


async def test_panic_records_the_exception(
    autojump_clock: MockClock, tmp_path: Path, sdk: Recorded
) -> None:
    server = make_server(tmp_path)
    add_raiser(server, "boom", lambda: RuntimeError("kaput"), step="exploding")
    async with open_test_client(server) as client:
        assert (await client.post("/run/boom")).json()["error"]["code"] == "panic"
    span = sdk.job()
    assert span.attributes is not None
    assert span.attributes["funtask.error.code"] == "panic"
    assert span.status.status_code is StatusCode.ERROR
    (event,) = [e for e in span.events if e.name == "exception"]
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "RuntimeError"
    assert event.attributes["exception.message"] == "kaput"
    assert "raise error()" in str(event.attributes["exception.stacktrace"])
    assert step_messages(span) == ["exploding"]


async def test_the_job_span_is_current_in_the_task_its_nursery_and_its_thread(
    autojump_clock: MockClock, tmp_path: Path, sdk: Recorded
) -> None:
    server = make_server(tmp_path)
    tracer = trace.get_tracer_provider().get_tracer("task-code")

    @server.task
    async def nested(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        async def child() -> None:
            with tracer.start_as_current_span("in-nursery"):
                await trio.sleep(1)

        with tracer.start_as_current_span("in-task"):
            pass
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
        return funtask.ok()

    @server.task
    def threaded(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        with tracer.start_as_current_span("in-thread"):
            run.step("threaded step")
        return funtask.ok()

    async with open_test_client(server) as client:
        assert (await client.post("/run/nested")).status_code == 200
        assert (await client.post("/run/threaded")).status_code == 200
    jobs = {s.attributes["funtask.task"]: s for s in sdk.spans("funtask.job")}
    for name, task in (("in-task", "nested"), ("in-nursery", "nested"), ("in-thread", "threaded")):
        (inner,) = sdk.spans(name)
        assert parent_id(inner) == hexes(jobs[task])[1], name
        assert hexes(inner)[0] == hexes(jobs[task])[0]
    assert step_messages(jobs["threaded"]) == ["threaded step"]
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing leaked into the test


@asynccontextmanager
async def open_instrumented_client(server: funtask.Server) -> AsyncIterator[httpx.AsyncClient]:
    """Like ``open_test_client``, behind an ASGI middleware that makes a SERVER span current."""
    tracer = trace.get_tracer_provider().get_tracer("asgi-instrumentation")
    app = without_lifespan(server)

    async def instrumented(scope: Any, receive: Any, send: Any) -> None:
        with tracer.start_as_current_span("POST /run", kind=SpanKind.SERVER):
            await app(scope, receive, send)

    async with trio.open_nursery() as requests:
        async with server._open_runtime() as runtime, open_quart(server._app()):
            token = runtime.tokens[0].decode()
            async with httpx.AsyncClient(
                transport=ASGIStreamTransport(instrumented, requests),
                base_url="http://funtask.test",
                headers={"Authorization": f"Bearer {token}"},
            ) as client:
                yield client
        requests.cancel_scope.cancel()


async def test_a_recording_request_span_is_the_parent(
    autojump_clock: MockClock, tmp_path: Path, sdk: Recorded
) -> None:
    async with open_instrumented_client(make_server(tmp_path)) as client:
        response = await client.post("/run/greet", headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200
    (request,) = sdk.spans("POST /run")
    job = sdk.job()
    assert parent_id(job) == hexes(request)[1]
    assert hexes(job)[0] == hexes(request)[0] != TRACE_ID  # the request span won


# -- callbacks and dead letters ---------------------------------------------------------------


async def test_each_callback_attempt_is_a_client_span_whose_context_the_post_carries(
    autojump_clock: MockClock, tmp_path: Path, sdk: Recorded
) -> None:
    receiver = CallbackReceiver([500, 200])
    async with open_test_client(
        make_server(tmp_path), callback_transport=receiver.transport()
    ) as client:
        response = await client.post(
            "/run/greet",
            json={"jobId": "cb", "callbackUrl": HOOK + "?secret=1#frag"},
            headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE},
        )
        assert response.status_code == 202
        await wait_idle(client, "greet")
    job = sdk.job()
    attempts = sdk.spans("funtask.callback")
    assert len(attempts) == len(receiver.attempts) == 2
    for span, attempt in zip(attempts, receiver.attempts, strict=True):
        assert span.kind is SpanKind.CLIENT
        assert hexes(span)[0] == TRACE_ID
        assert parent_id(span) == hexes(job)[1]
        headers = attempt.request.headers
        assert headers["traceparent"] == f"00-{TRACE_ID}-{hexes(span)[1]}-01"
        assert headers["tracestate"] == TRACESTATE
        assert span.attributes is not None
        assert span.attributes["url.full"] == HOOK
        assert span.attributes["http.request.method"] == "POST"
        assert span.attributes["funtask.job_id"] == "cb"
    assert [s.attributes["http.response.status_code"] for s in attempts] == [500, 200]
    assert [s.status.status_code for s in attempts] == [StatusCode.ERROR, StatusCode.UNSET]
    assert attempts[0].status.description == "HTTP 500"


async def test_the_dead_letter_keeps_the_trace_context_and_replay_sends_it(
    autojump_clock: MockClock, tmp_path: Path, sdk: Recorded
) -> None:
    receiver = CallbackReceiver(503)
    async with open_test_client(
        make_server(tmp_path, callback_retries=2), callback_transport=receiver.transport()
    ) as client:
        response = await client.post(
            "/run/greet",
            json={"jobId": "dl", "callbackUrl": HOOK},
            headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE},
        )
        assert response.status_code == 202
        await wait_idle(client, "greet")
    job_span_id = hexes(sdk.job())[1]
    kept = f"00-{TRACE_ID}-{job_span_id}-01"
    (letter,) = tmp_path.glob("*.json")
    meta = json.loads(letter.read_text())["deadLetter"]
    assert meta["traceparent"] == kept
    assert meta["tracestate"] == TRACESTATE
    assert meta["attempts"] == 2
    replayed = CallbackReceiver(200)
    report = await replay_dead_letters(
        str(tmp_path), to=None, timeout=5, transport=replayed.transport()
    )
    assert len(report.delivered) == 1
    (attempt,) = replayed.attempts
    assert attempt.request.headers["traceparent"] == kept
    assert attempt.request.headers["tracestate"] == TRACESTATE
    assert "deadLetter" not in json.loads(attempt.body)


async def test_an_attempt_cut_short_by_stop_ends_its_span_as_an_error(
    autojump_clock: MockClock, tmp_path: Path, sdk: Recorded
) -> None:
    receiver = CallbackReceiver(200, delay=60)
    async with open_test_client(
        make_server(tmp_path), callback_transport=receiver.transport()
    ) as client:
        response = await client.post("/run/greet", json={"jobId": "s", "callbackUrl": HOOK})
        assert response.status_code == 202
        await trio.sleep(1)  # the POST is waiting for its answer
        assert len(receiver.attempts) == 1
        assert (await client.post("/stop/greet")).status_code == 200
        await wait_idle(client, "greet")
    (span,) = sdk.spans("funtask.callback")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "attempt cut short"
    assert parent_id(span) == hexes(sdk.job())[1]


async def test_an_unsent_sync_result_keeps_the_trace_context_in_its_dead_letter(
    autojump_clock: MockClock, tmp_path: Path, sdk: Recorded
) -> None:
    async with open_test_client(make_server(tmp_path, sync_timeout=1)) as client:
        response = await client.post(
            "/run/sleeper", json={"jobId": "slow"}, headers={"traceparent": TRACEPARENT}
        )
        assert response.status_code == 504
    (letter,) = tmp_path.glob("*.json")
    meta = json.loads(letter.read_text())["deadLetter"]
    assert meta["lastError"] == "sync timeout"
    assert meta["traceparent"] == f"00-{TRACE_ID}-{hexes(sdk.job())[1]}-01"
    assert "tracestate" not in meta


async def test_replay_drops_an_invalid_kept_traceparent(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    body = {"jobId": "x", "success": True, "duration": "0s"}
    meta = {
        "task": "t",
        "callbackUrl": HOOK,
        "attempts": 1,
        "lastError": "HTTP 500",
        "createdAt": "2026-01-01T00:00:00Z",
        "traceparent": "00-" + "0" * 32 + "-" + PARENT_ID + "-01",
        "tracestate": TRACESTATE,
    }
    (tmp_path / "x.json").write_text(json.dumps({**body, "deadLetter": meta}))
    receiver = CallbackReceiver(200)
    await replay_dead_letters(str(tmp_path), to=None, timeout=5, transport=receiver.transport())
    (attempt,) = receiver.attempts
    assert "traceparent" not in attempt.request.headers
    assert "tracestate" not in attempt.request.headers


# -- no SDK: forwarding only -----------------------------------------------------------------


async def post_async(
    tmp_path: Path, headers: list[tuple[str, str]], **config: Any
) -> CallbackReceiver:
    """Run ``greet`` in async mode with request ``headers``; return what the receiver got."""
    receiver = CallbackReceiver(200)
    async with open_test_client(
        make_server(tmp_path, **config), callback_transport=receiver.transport()
    ) as client:
        response = await client.post(
            "/run/greet", json={"callbackUrl": HOOK}, headers=httpx.Headers(headers)
        )
        assert response.status_code == 202
        await wait_idle(client, "greet")
    assert len(receiver.attempts) == 1
    return receiver


def trace_headers(receiver: CallbackReceiver) -> dict[str, str]:
    headers = receiver.attempts[0].request.headers
    return {k: v for k, v in headers.items() if k in ("traceparent", "tracestate")}


async def test_without_an_sdk_valid_headers_are_forwarded_verbatim(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    state = "rojo=00f067aa0ba902b7 ,, congo=t61rcWkgMzE"  # odd but valid: kept as it is
    headers = [("traceparent", TRACEPARENT), ("tracestate", state)]
    receiver = await post_async(tmp_path, headers)
    assert trace_headers(receiver) == {"traceparent": TRACEPARENT, "tracestate": state}


async def test_without_an_sdk_several_tracestate_fields_are_combined(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    headers = [("traceparent", TRACEPARENT), ("tracestate", "a=1"), ("tracestate", "b=2")]
    receiver = await post_async(tmp_path, headers)
    assert trace_headers(receiver) == {"traceparent": TRACEPARENT, "tracestate": "a=1,b=2"}


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", TRACEPARENT.upper())],
        [("traceparent", f"00-{'0' * 32}-{PARENT_ID}-01")],
        [("traceparent", f"00-{TRACE_ID}-{'0' * 16}-01")],
        [("traceparent", f"ff-{TRACE_ID}-{PARENT_ID}-01")],
        [("traceparent", f"{TRACEPARENT}-extra")],
        [("traceparent", TRACEPARENT[:-1])],
        [("traceparent", TRACEPARENT), ("traceparent", TRACEPARENT)],
        [("tracestate", TRACESTATE)],
    ],
    ids=[
        "uppercase",
        "zero-trace",
        "zero-parent",
        "version-ff",
        "00-suffix",
        "short",
        "two",
        "no-parent",
    ],
)
async def test_without_an_sdk_invalid_headers_are_dropped(
    autojump_clock: MockClock, tmp_path: Path, headers: list[tuple[str, str]]
) -> None:
    receiver = await post_async(tmp_path, [*headers, ("tracestate", TRACESTATE)])
    assert trace_headers(receiver) == {}


async def test_without_an_sdk_an_invalid_tracestate_is_dropped_alone(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    headers = [("traceparent", TRACEPARENT), ("tracestate", "Upper=1")]
    receiver = await post_async(tmp_path, headers)
    assert trace_headers(receiver) == {"traceparent": TRACEPARENT}


def test_traceparent_syntax() -> None:
    assert valid_traceparent(TRACEPARENT)
    assert valid_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-00")
    assert valid_traceparent(f"01-{TRACE_ID}-{PARENT_ID}-09-future-fields")  # a later version
    assert not valid_traceparent(f"01-{TRACE_ID}-{PARENT_ID}-09future")
    assert not valid_traceparent(f"0-{TRACE_ID}-{PARENT_ID}-01")
    assert not valid_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-1")
    assert not valid_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-0g")
    assert not valid_traceparent(f" {TRACEPARENT}")
    assert not valid_traceparent("")


def test_tracestate_syntax() -> None:
    assert valid_tracestate(TRACESTATE)
    assert valid_tracestate("tenant@vendor=v a l u e")
    assert valid_tracestate(",".join(f"k{i}=v" for i in range(32)))
    assert not valid_tracestate(",".join(f"k{i}=v" for i in range(33)))
    assert not valid_tracestate("a=1,a=2")  # a key twice
    assert not valid_tracestate("a=")
    assert not valid_tracestate("a=b=c")
    assert not valid_tracestate("a=b\tc")  # a tab inside a value
    assert not valid_tracestate("1a=b")
    assert not valid_tracestate("")
    assert not valid_tracestate(" , ")
    assert not valid_tracestate("a=" + "x" * 600)


# -- logs ------------------------------------------------------------------------------------


async def test_json_log_lines_inside_a_job_carry_its_trace_and_span_ids(
    autojump_clock: MockClock, tmp_path: Path, sdk: Recorded
) -> None:
    lines: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(JSONFormatter().format(record)))

    server = make_server(tmp_path)

    @server.task
    async def talker(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.log.warning("inside the job")
        return funtask.ok()

    handler = Collect()
    logger = logging.getLogger("funtask.task")
    logger.addHandler(handler)
    try:
        async with open_test_client(server) as client:
            response = await client.post(
                "/run/talker", json={"jobId": "t1"}, headers={"traceparent": TRACEPARENT}
            )
            assert response.status_code == 200
    finally:
        logger.removeHandler(handler)
    (line,) = [line for line in lines if line["message"] == "inside the job"]
    trace_id, span_id = hexes(sdk.job())
    assert (line["traceId"], line["spanId"], line["jobId"]) == (trace_id, span_id, "t1")
    assert line["instance"] and line["task"] == "talker"


# -- without the package -----------------------------------------------------------------------

WITHOUT_OPENTELEMETRY = textwrap.dedent(
    """
    import sys
    import importlib.abc

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())

    import httpx
    import trio
    import funtask
    from funtask.testing import open_test_client

    server = funtask.Server("plain", callback_allowlist=["https://hooks.example.com/"])

    @server.task
    async def greet(run, params):
        run.step("greeting")
        return funtask.ok("hi")

    seen = []

    def receive(request):
        seen.append(request)
        return httpx.Response(200)

    async def main():
        async with open_test_client(
            server, callback_transport=httpx.MockTransport(receive)
        ) as client:
            traced = {"traceparent": "00-%s-%s-01" % ("1" * 32, "2" * 16)}
            response = await client.post("/run/greet", headers=traced)
            assert response.json()["message"] == "hi", response.text
            body = {"callbackUrl": "https://hooks.example.com/x"}
            response = await client.post("/run/greet", json=body, headers=traced)
            assert response.status_code == 202, response.text
            while not seen or server._runtime.runner.jobs():
                await trio.sleep(0.01)

    trio.run(main)
    assert "traceparent" not in seen[0].headers
    leaked = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
    assert not leaked, leaked
    print("ok")
    """
)


def test_without_opentelemetry_nothing_is_imported_and_jobs_run() -> None:
    finished = subprocess.run(
        [sys.executable, "-c", WITHOUT_OPENTELEMETRY],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert finished.stdout.strip() == "ok"


# -- the step hook -------------------------------------------------------------------------


class StepTaker(Observer):
    def __init__(self, seen: list[str], wanted: bool = True) -> None:
        self.seen = seen
        self.wanted = wanted

    def job_steps(self, job: Job) -> Callable[[str], None] | None:
        return self.seen.append if self.wanted else None


async def test_step_listeners_are_combined_and_absent_when_nobody_wants_steps() -> None:
    job = Job(
        TaskDef("t", lambda run, params: funtask.ok()),
        "j",
        Params({}),
        Run("t", "j"),
        callback_url=None,
        max_duration=None,
    )
    first: list[str] = []
    second: list[str] = []
    assert combine_observers([Observer(), StepTaker([], wanted=False)]).job_steps(job) is None
    listener = combine_observers([StepTaker(first), Observer(), StepTaker(second)]).job_steps(job)
    assert listener is not None
    listener("a")
    assert first == second == ["a"]
    assert combine_observers([StepTaker(first), Observer()]).job_steps(job) == first.append
