"""Tests for funtask._asgi_client.ASGIStreamTransport."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from funtask._asgi_client import (
    ASGIApp,
    ASGIStreamTransport,
    Message,
    Receive,
    Scope,
    Send,
)

BASE_URL = "http://testserver"


@asynccontextmanager
async def open_client(app: Any, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client wired to *app*; the app tasks live in a local nursery."""
    async with trio.open_nursery() as nursery:
        transport = ASGIStreamTransport(app, nursery, **kwargs)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            yield client


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        body += bytes(message.get("body", b""))
        if not message.get("more_body", False):
            return body


async def read_chunks(response: httpx.Response, count: int) -> list[bytes]:
    """Read *count* raw chunks, leaving httpx's iterators properly finalized.

    Breaking out of ``async for`` would leave httpx's nested async generators
    suspended, and Trio warns when they are garbage collected; cancelling the
    next ``__anext__`` instead unwinds them all.
    """
    chunks: list[bytes] = []
    with trio.CancelScope() as cancel_scope:
        async for chunk in response.aiter_raw():
            chunks.append(chunk)
            if len(chunks) == count:
                cancel_scope.cancel()
    return chunks


async def send_json(send: Send, data: Any, status: int = 200) -> None:
    payload = json.dumps(data).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def jsonable_scope(scope: Scope) -> dict[str, Any]:
    return {
        "type": scope["type"],
        "asgi": scope["asgi"],
        "http_version": scope["http_version"],
        "method": scope["method"],
        "scheme": scope["scheme"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "root_path": scope["root_path"],
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "client": list(scope["client"]),
        "server": list(scope["server"]),
        "state": scope.get("state"),
    }


async def scope_echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    body = await read_body(receive)
    await send_json(send, {"scope": jsonable_scope(scope), "body": body.decode()})


# --------------------------------------------------------------------------
# scope and round trips


async def test_get_round_trip_scope() -> None:
    async with open_client(scope_echo_app) as client:
        response = await client.get("/hello", headers={"X-Custom": "Yes"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    scope = response.json()["scope"]
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.3"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/hello"
    assert scope["raw_path"] == "/hello"
    assert scope["query_string"] == ""
    assert scope["root_path"] == ""
    assert scope["client"] == ["127.0.0.1", 123]
    assert scope["server"] == ["testserver", 80]
    assert scope["state"] is None
    headers = scope["headers"]
    assert all(name == name.lower() for name, _ in headers)
    assert ["host", "testserver"] in headers
    assert ["x-custom", "Yes"] in headers


async def test_post_json_round_trip() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        data = json.loads(await read_body(receive))
        await send_json(send, {"method": scope["method"], "sum": sum(data["numbers"])}, 201)

    async with open_client(app) as client:
        response = await client.post("/add", json={"numbers": [1, 2, 3]})
    assert response.status_code == 201
    assert response.json() == {"method": "POST", "sum": 6}


async def test_percent_encoded_path_and_query_string() -> None:
    async with open_client(scope_echo_app) as client:
        response = await client.get("/result/a%2Fb?x=1%202&y=%C3%A9&z")
        unicode_response = await client.get("/caf%C3%A9/x%20y")
    scope = response.json()["scope"]
    assert scope["path"] == "/result/a/b"
    assert scope["raw_path"] == "/result/a%2Fb"
    assert scope["query_string"] == "x=1%202&y=%C3%A9&z"
    unicode_scope = unicode_response.json()["scope"]
    assert unicode_scope["path"] == "/café/x y"
    assert unicode_scope["raw_path"] == "/caf%C3%A9/x%20y"


async def test_raw_path_is_bytes() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await send_json(send, None)

    async with open_client(app) as client:
        await client.get("/result/a%2Fb?q=1")
    assert seen[0]["raw_path"] == b"/result/a%2Fb"
    assert seen[0]["query_string"] == b"q=1"
    assert isinstance(seen[0]["headers"][0][0], bytes)


async def test_custom_client_root_path_state_and_https() -> None:
    state = {"db": "fake"}
    async with open_client(
        scope_echo_app, client=("10.0.0.7", 5555), root_path="/api", state=state
    ) as client:
        response = await client.get("https://example.org:8443/api/items")
        default_port = await client.get("https://example.org/x")
    scope = response.json()["scope"]
    assert scope["client"] == ["10.0.0.7", 5555]
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/items"
    assert scope["scheme"] == "https"
    assert scope["server"] == ["example.org", 8443]
    assert ["host", "example.org:8443"] in scope["headers"]
    assert scope["state"] == {"db": "fake"}
    assert default_port.json()["scope"]["server"] == ["example.org", 443]


async def test_state_is_copied_per_request() -> None:
    states: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"]["touched"] = True
        states.append(scope["state"])
        await send_json(send, None)

    shared: dict[str, Any] = {}
    async with open_client(app, state=shared) as client:
        await client.get("/")
        await client.get("/")
    assert shared == {}
    assert states[0] is not states[1]


# --------------------------------------------------------------------------
# request bodies


def recording_app(messages: list[Message]) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            messages.append(message)
            if not message.get("more_body", False):
                break
        await send_json(send, len(messages))

    return app


async def test_request_body_is_streamed_in_chunks(autojump_clock: trio.abc.Clock) -> None:
    messages: list[Message] = []
    first_chunk_seen = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            messages.append(message)
            if message["body"] == b"first":
                first_chunk_seen.set()
            if not message["more_body"]:
                break
        await send_json(send, "ok")

    async def content() -> AsyncIterator[bytes]:
        yield b"first"
        # Only proceeds if the app got the first chunk while we were still
        # producing the body: the body is streamed, not buffered.
        await first_chunk_seen.wait()
        yield b""
        yield b"second"
        await trio.sleep(1)
        yield b"third"

    with trio.fail_after(10):
        async with open_client(app) as client:
            response = await client.post("/upload", content=content())
    assert response.json() == "ok"
    assert [(m["type"], m["body"], m["more_body"]) for m in messages] == [
        ("http.request", b"first", True),
        ("http.request", b"second", True),
        ("http.request", b"third", True),
        ("http.request", b"", False),
    ]


async def test_request_body_with_content_length_ends_on_last_chunk() -> None:
    messages: list[Message] = []
    async with open_client(recording_app(messages)) as client:
        await client.post("/upload", content=b"hello world")
    assert messages == [{"type": "http.request", "body": b"hello world", "more_body": False}]


async def test_get_without_body_gets_one_empty_message() -> None:
    messages: list[Message] = []
    async with open_client(recording_app(messages)) as client:
        await client.get("/")
    assert messages == [{"type": "http.request", "body": b"", "more_body": False}]


async def test_receive_after_body_blocks_until_disconnect(
    autojump_clock: trio.abc.Clock,
) -> None:
    got: list[tuple[Message, float]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        got.append((await receive(), trio.current_time()))
        # Sends after the disconnect are silently dropped.
        await send({"type": "http.response.body", "body": b"late", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async with open_client(app) as client, client.stream("GET", "/") as response:
        assert await read_chunks(response, 1) == [b"partial"]
        await trio.sleep(5)
        assert got == []
        closed_at = trio.current_time()
    assert got == [({"type": "http.disconnect"}, closed_at)]


async def test_request_stream_error_reaches_client_and_app_sees_disconnect() -> None:
    app_messages: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        app_messages.append(await receive())
        app_messages.append(await receive())
        await send_json(send, "never seen")

    async def content() -> AsyncIterator[bytes]:
        yield b"part"
        raise ValueError("client-side body failure")

    async with open_client(app) as client:
        with pytest.raises(ValueError, match="client-side body failure"):
            await client.post("/", content=content())
    assert app_messages == [
        {"type": "http.request", "body": b"part", "more_body": True},
        {"type": "http.disconnect"},
    ]


# --------------------------------------------------------------------------
# streaming responses


async def test_endless_sse_read_incrementally_then_closed(
    autojump_clock: trio.abc.Clock,
) -> None:
    disconnected = trio.Event()
    sent: list[int] = []

    async def sse_app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        async with trio.open_nursery() as nursery:

            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                disconnected.set()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_disconnect)
            event_id = 0
            while True:
                data = f"id: {event_id}\ndata: tick {event_id}\n\n".encode()
                await send({"type": "http.response.body", "body": data, "more_body": True})
                sent.append(event_id)
                event_id += 1
                await trio.sleep(1)

    received: list[tuple[bytes, float]] = []
    with trio.fail_after(60):
        async with open_client(sse_app) as client:
            start = trio.current_time()
            async with client.stream("GET", "/events") as response:
                assert response.status_code == 200
                assert response.headers["content-type"] == "text/event-stream"
                with trio.CancelScope() as cancel_scope:
                    async for chunk in response.aiter_raw():
                        received.append((chunk, trio.current_time() - start))
                        if len(received) == 3:
                            cancel_scope.cancel()  # see read_chunks()
            await disconnected.wait()
    assert received == [
        (b"id: 0\ndata: tick 0\n\n", 0),
        (b"id: 1\ndata: tick 1\n\n", 1),
        (b"id: 2\ndata: tick 2\n\n", 2),
    ]
    # The app was never more than a few events ahead of the client.
    assert len(sent) <= 5


async def test_backpressure_blocks_app_when_client_does_not_read() -> None:
    sent: list[int] = []
    finished = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(50):
            await send({"type": "http.response.body", "body": b"%d," % i, "more_body": True})
            sent.append(i)
        await send({"type": "http.response.body", "body": b"end"})
        finished.set()

    async with open_client(app) as client, client.stream("GET", "/") as response:
        await trio.testing.wait_all_tasks_blocked()
        assert len(sent) < 5
        assert not finished.is_set()
        body = await response.aread()
    assert body == b"".join(b"%d," % i for i in range(50)) + b"end"
    assert finished.is_set()


async def test_ignored_disconnect_never_blocks_app() -> None:
    sends_done = trio.Event()
    after_disconnect: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(1000):  # far more than any buffer; must not block or raise
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        sends_done.set()
        after_disconnect.append(await receive())
        after_disconnect.append(await receive())

    with trio.fail_after(5):
        async with open_client(app) as client:
            async with client.stream("GET", "/") as response:
                assert await read_chunks(response, 1) == [b"x"]
            await sends_done.wait()
    assert after_disconnect[-1] == {"type": "http.disconnect"}


async def test_closing_client_disconnects_unclosed_responses() -> None:
    disconnected = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        assert (await receive())["type"] == "http.disconnect"
        disconnected.set()

    with trio.fail_after(5):
        async with open_client(app) as client:
            request_ = client.build_request("GET", "/")
            response = await client.send(request_, stream=True)
            assert response.status_code == 200
            # Leaving the client without closing the response disconnects it.
    assert disconnected.is_set()


# --------------------------------------------------------------------------
# cancellation and errors


async def test_cancel_before_response_start_disconnects_app(
    autojump_clock: trio.abc.Clock,
) -> None:
    seen: list[Message] = []
    app_done = trio.Event()
    late_response_sent = False

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal late_response_sent
        try:
            seen.append(await receive())
            seen.append(await receive())  # blocks until the client goes away
            # Responding after the disconnect must not raise in the app.
            await send_json(send, "too late")
            late_response_sent = True
        finally:
            app_done.set()

    with trio.fail_after(60):
        async with open_client(app) as client:
            with trio.move_on_after(1) as cancel_scope:
                await client.post("/slow", content=b"payload")
            assert cancel_scope.cancelled_caught
            await app_done.wait()
            assert trio.current_time() == pytest.approx(1)
    assert seen == [
        {"type": "http.request", "body": b"payload", "more_body": False},
        {"type": "http.disconnect"},
    ]
    assert late_response_sent


async def test_app_error_after_disconnect_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        raise ZeroDivisionError("after disconnect")

    async with open_client(app) as client, client.stream("GET", "/") as response:
        assert response.status_code == 200
    [record] = [r for r in caplog.records if r.name == "funtask._asgi_client"]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ZeroDivisionError)


async def test_transport_used_directly_and_closed_before_response_start() -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(await receive())
        seen.append(await receive())
        await send_json(send, "ignored")

    async with trio.open_nursery() as nursery:
        transport = ASGIStreamTransport(app, nursery)
        outcome: list[BaseException] = []

        async def call() -> None:
            try:
                await transport.handle_async_request(httpx.Request("GET", "http://t/"))
            except httpx.ReadError as exc:
                outcome.append(exc)

        nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        await transport.aclose()
    assert len(outcome) == 1
    assert seen[-1] == {"type": "http.disconnect"}


async def test_app_cancelled_before_response() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as outer:
        app_nursery_scope = trio.CancelScope()

        async def run_app_nursery(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with app_nursery_scope:
                async with trio.open_nursery() as app_nursery:
                    task_status.started(app_nursery)
                    await trio.sleep_forever()

        app_nursery = await outer.start(run_app_nursery)
        transport = ASGIStreamTransport(app, app_nursery)
        async with httpx.AsyncClient(transport=transport) as client:
            outer.start_soon(lambda: _cancel_later(app_nursery_scope))
            with pytest.raises(RuntimeError, match="aborted"):
                await client.get("http://t/")


async def _cancel_later(cancel_scope: trio.CancelScope) -> None:
    await trio.testing.wait_all_tasks_blocked()
    cancel_scope.cancel()


async def test_app_exception_before_response_is_raised() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/boom":
            raise ValueError("boom")
        await send_json(send, "fine")

    async with open_client(app) as client:
        with pytest.raises(ValueError, match="boom"):
            await client.get("/boom")
        # The nursery survived; the client is still usable.
        assert (await client.get("/ok")).json() == "fine"


async def test_app_returning_without_response_raises_runtime_error() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)

    async with open_client(app) as client:
        with pytest.raises(RuntimeError, match="returned without sending a response"):
            await client.get("/")


async def test_app_exception_after_response_start_is_a_read_error() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        raise KeyError("mid-stream")

    async with open_client(app) as client, client.stream("GET", "/") as response:
        chunks = []
        with pytest.raises(httpx.ReadError) as exc_info:
            async for chunk in response.aiter_raw():
                chunks.append(chunk)
    assert chunks == [b"one"]
    assert isinstance(exc_info.value.__cause__, KeyError)


async def test_app_ending_mid_body_is_a_protocol_error() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})

    async with open_client(app) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/")


async def test_invalid_message_order_raises_in_app() -> None:
    errors: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.body", "body": b"no start"})
        except RuntimeError as exc:
            errors.append(exc)
        await send_json(send, "recovered")

    async with open_client(app) as client:
        assert (await client.get("/")).json() == "recovered"
    assert len(errors) == 1


async def test_long_sleep_is_instant_under_autojump_clock(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await trio.sleep(600)
        await send_json(send, "slept")

    wall_start = time.perf_counter()
    async with open_client(app) as client:
        virtual_start = trio.current_time()
        response = await client.get("/sleep")
        assert trio.current_time() - virtual_start == pytest.approx(600)
    assert response.json() == "slept"
    assert time.perf_counter() - wall_start < 5


# --------------------------------------------------------------------------
# a real framework: quart-trio


def make_quart_app(events: dict[str, trio.Event]) -> QuartTrio:
    app = QuartTrio(__name__)

    @app.get("/result/<path:ident>")
    async def result(ident: str) -> Any:
        return jsonify(ident=ident, path=request.path, args=request.args.to_dict())

    @app.post("/echo")
    async def echo() -> Any:
        data = await request.get_json()
        return jsonify(received=data, content_type=request.content_type)

    @app.get("/block")
    async def block() -> Any:
        events["block_entered"].set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            events["block_cancelled"].set()
            raise
        return "unreachable"

    @app.get("/sleep")
    async def sleep() -> Any:
        await trio.sleep(600)
        return jsonify(slept=600)

    @app.get("/events")
    async def stream_events() -> Any:
        async def generate() -> AsyncIterator[bytes]:
            try:
                for event_id in range(10_000):
                    yield f"data: {event_id}\n\n".encode()
                    await trio.sleep(1)
            finally:
                events["generator_closed"].set()

        response = Response(generate(), mimetype="text/event-stream")
        response.timeout = None
        return response

    return app


def quart_events() -> dict[str, trio.Event]:
    return {
        name: trio.Event() for name in ("block_entered", "block_cancelled", "generator_closed")
    }


async def test_quart_get_and_post_json() -> None:
    app = make_quart_app(quart_events())
    async with open_client(app) as client:
        got = await client.get("/result/a%2Fb", params={"q": "x y"})
        posted = await client.post("/echo", json={"a": [1, 2]})
        missing = await client.get("/nope")
    assert got.status_code == 200
    assert got.json() == {"ident": "a/b", "path": "/result/a/b", "args": {"q": "x y"}}
    assert posted.json() == {"received": {"a": [1, 2]}, "content_type": "application/json"}
    assert missing.status_code == 404


async def test_quart_handler_cancelled_when_client_request_cancelled(
    autojump_clock: trio.abc.Clock,
) -> None:
    events = quart_events()
    app = make_quart_app(events)
    with trio.fail_after(60):
        async with open_client(app) as client:
            with trio.move_on_after(1) as cancel_scope:
                await client.get("/block")
            assert cancel_scope.cancelled_caught
            assert events["block_entered"].is_set()
            await events["block_cancelled"].wait()


async def test_quart_sse_stream_read_then_closed(autojump_clock: trio.abc.Clock) -> None:
    events = quart_events()
    app = make_quart_app(events)
    with trio.fail_after(60):
        async with open_client(app) as client:
            async with client.stream("GET", "/events") as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                chunks = await read_chunks(response, 3)
            await events["generator_closed"].wait()
    assert chunks == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]


async def test_quart_long_sleep_is_instant_under_autojump_clock(
    autojump_clock: trio.abc.Clock,
) -> None:
    app = make_quart_app(quart_events())
    wall_start = time.perf_counter()
    async with open_client(app) as client:
        virtual_start = trio.current_time()
        response = await client.get("/sleep")
        assert trio.current_time() - virtual_start == pytest.approx(600)
    assert response.json() == {"slept": 600}
    assert time.perf_counter() - wall_start < 5
