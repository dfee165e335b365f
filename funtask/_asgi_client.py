"""An in-process, streaming httpx transport for ASGI 3 applications on Trio.

:class:`ASGIStreamTransport` lets an :class:`httpx.AsyncClient` talk to an ASGI
application directly, without sockets, inside the current Trio run.  Unlike
:class:`httpx.ASGITransport` it does not buffer the response: the app runs as a
task in a caller-supplied nursery, the :class:`httpx.Response` is returned as
soon as the app sends ``http.response.start``, and body chunks are handed to the
client as the app produces them (with backpressure).  That makes endless
responses such as Server-Sent Events testable, also under
``trio.testing.MockClock(autojump_threshold=0)``, since only Trio primitives are
used.

Client-side disconnects are modelled the way a real server (hypercorn) does:
when the response stream is closed early, when the request is abandoned before
the response starts, or when the transport is closed, the app's ``receive()``
returns ``{"type": "http.disconnect"}`` and whatever it sends afterwards is
silently dropped.

The transport does not run the ASGI ``lifespan`` protocol; do that separately
(and pass the resulting ``state`` mapping in, if the app uses one).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any, TypeAlias
from urllib.parse import unquote_to_bytes

import httpx
import trio

__all__ = [
    "ASGIApp",
    "ASGIStreamTransport",
    "Message",
    "Receive",
    "Scope",
    "Send",
]

Scope: TypeAlias = MutableMapping[str, Any]
"""An ASGI connection scope."""
Message: TypeAlias = MutableMapping[str, Any]
"""An ASGI event message, sent or received."""
Receive: TypeAlias = Callable[[], Awaitable[Message]]
"""The ASGI ``receive`` callable."""
Send: TypeAlias = Callable[[Message], Awaitable[None]]
"""The ASGI ``send`` callable."""
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application."""

logger = logging.getLogger(__name__)

# How many response body chunks may be queued before the app's send() blocks.
_RESPONSE_CHUNK_BUFFER = 2

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _content_length(request: httpx.Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


class _Exchange:
    """One request/response cycle between the client and the ASGI app."""

    def __init__(self, app: ASGIApp, scope: Scope, request: httpx.Request) -> None:
        self._app = app
        self.scope = scope

        stream = request.stream
        if not isinstance(stream, httpx.AsyncByteStream):
            raise TypeError("ASGIStreamTransport needs an async request stream")
        self._request_stream: AsyncIterator[bytes] = stream.__aiter__()
        self._body_remaining = _content_length(request)
        self._body_finished = False
        self._request_stream_pending = False  # iterated, not yet exhausted/closed
        self._body_cancel: trio.CancelScope | None = None
        self.request_error: Exception | None = None

        self._disconnected = trio.Event()
        self._start_or_done = trio.Event()
        self.status_code = 0
        self.response_headers: list[tuple[bytes, bytes]] = []
        self._response_started = False
        self._response_complete = False
        self.app_done = False
        self._app_error: Exception | None = None
        self._app_aborted = False  # ended by a BaseException such as Cancelled
        self._chunk_send, self.chunk_receive = trio.open_memory_channel[bytes](
            _RESPONSE_CHUNK_BUFFER
        )

    # -- client side -------------------------------------------------------

    def disconnect(self) -> None:
        """Signal that the client went away (idempotent, never blocks)."""
        if self._disconnected.is_set():
            return
        self._disconnected.set()
        # Wakes an app blocked in send() with BrokenResourceError; it gets dropped.
        self.chunk_receive.close()
        if self._body_cancel is not None:
            self._body_cancel.cancel()
        self._start_or_done.set()

    async def wait_response_start(self) -> None:
        """Wait for ``http.response.start``; raise if it will never come."""
        await self._start_or_done.wait()
        if self.request_error is not None:
            raise self.request_error
        if self._response_started:
            return
        if self._app_error is not None:
            raise self._app_error
        if self._app_aborted:
            raise RuntimeError("ASGI app was aborted (e.g. cancelled) before sending a response")
        if self.app_done:
            raise RuntimeError("ASGI app returned without sending a response")
        raise httpx.ReadError("ASGI transport was closed before the response started")

    def end_of_body(self) -> None:
        """Called by the response stream when no more chunks will arrive."""
        if self._response_complete:
            return
        if self._app_error is not None:
            error = self._app_error
            raise httpx.ReadError(
                f"ASGI app raised after starting the response: {error!r}"
            ) from error
        raise httpx.RemoteProtocolError("ASGI app ended without completing the response body")

    # -- app side ----------------------------------------------------------

    async def run_app(self) -> None:
        """Run the app; meant to be a task in the transport's nursery."""
        try:
            await self._app(self.scope, self.receive, self.send)
        except Exception as exc:
            self._app_error = exc
            if self._disconnected.is_set() or self._response_complete:
                # Nobody is left to report this to; do what servers do.
                logger.error(
                    "ASGI app raised after the client went away or got its response",
                    exc_info=exc,
                )
        except BaseException:
            self._app_aborted = True
            raise
        finally:
            self.app_done = True
            self._chunk_send.close()
            self._start_or_done.set()
            await self._close_request_stream()

    async def receive(self) -> Message:
        """The ``receive`` callable handed to the app.

        Once the app has started its response, the rest of the request body is
        not fed to it (as a server that closes the connection after an early
        answer would not read it).
        """
        if (
            not self._body_finished
            and not self._disconnected.is_set()
            and not self._response_started
        ):
            message = await self._next_body_message()
            if message is not None:
                return message
        await self._disconnected.wait()
        return {"type": "http.disconnect"}

    async def _next_body_message(self) -> Message | None:
        with trio.CancelScope() as cancel_scope:
            self._body_cancel = cancel_scope
            try:
                return await self._read_body_chunk()
            except Exception as exc:
                # The client failed to produce its body: the request is dead.
                self.request_error = exc
                self.disconnect()
                return None
            finally:
                self._body_cancel = None
        # Only reached when disconnect() cancelled the read.
        return None

    async def _read_body_chunk(self) -> Message:
        while True:
            self._request_stream_pending = True
            try:
                chunk = await self._request_stream.__anext__()
            except StopAsyncIteration:
                self._request_stream_pending = False
                self._body_finished = True
                return {"type": "http.request", "body": b"", "more_body": False}
            except BaseException:
                self._request_stream_pending = False  # it raised, so it is finished
                raise
            if not chunk:
                continue
            more_body = True
            if self._body_remaining is not None:
                self._body_remaining -= len(chunk)
                if self._body_remaining <= 0:
                    more_body = False
                    self._body_finished = True
                    await self._close_request_stream()
            return {"type": "http.request", "body": bytes(chunk), "more_body": more_body}

    async def _close_request_stream(self) -> None:
        """Close a partly consumed request body iterator (e.g. an async generator)."""
        if not self._request_stream_pending:
            return
        self._request_stream_pending = False
        aclose = getattr(self._request_stream, "aclose", None)
        if aclose is None:
            return
        try:
            await aclose()
        except Exception:
            logger.exception("closing the request body stream failed")

    async def send(self, message: Message) -> None:
        """The ``send`` callable handed to the app."""
        if self._disconnected.is_set():
            # Like hypercorn: sends after the client went away are ignored.
            await trio.lowlevel.checkpoint()
            return
        kind = message["type"]
        if kind == "http.response.start":
            if self._response_started:
                raise RuntimeError("ASGI app sent 'http.response.start' twice")
            self.status_code = int(message["status"])
            self.response_headers = [
                (bytes(name), bytes(value)) for name, value in message.get("headers", ())
            ]
            self._response_started = True
            self._start_or_done.set()
            await trio.lowlevel.checkpoint()
        elif kind == "http.response.body":
            if not self._response_started:
                raise RuntimeError("ASGI app sent 'http.response.body' before the start")
            if self._response_complete:
                raise RuntimeError("ASGI app sent 'http.response.body' after the last one")
            body = bytes(message.get("body", b""))
            more_body = bool(message.get("more_body", False))
            if body:
                try:
                    await self._chunk_send.send(body)
                except trio.BrokenResourceError:
                    return  # the client closed the stream while we waited
            else:
                await trio.lowlevel.checkpoint()
            if not more_body:
                self._response_complete = True
                self._chunk_send.close()
        elif kind == "http.response.trailers":
            if not self._response_started:
                raise RuntimeError("ASGI app sent 'http.response.trailers' before the start")
            await trio.lowlevel.checkpoint()  # trailers are not passed on
        else:
            raise RuntimeError(f"unexpected ASGI message type {kind!r} for an HTTP request")


class _ASGIResponseStream(httpx.AsyncByteStream):
    """Response body stream fed chunk by chunk by the running ASGI app.

    A plain async iterator rather than an async generator, so abandoning it
    early leaves nothing for Trio's async-generator finalizer to complain about.
    """

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange

    def __aiter__(self) -> AsyncIterator[bytes]:
        """Iterate over body chunks as the app sends them."""
        return self

    async def __anext__(self) -> bytes:
        """Wait for the next body chunk."""
        try:
            return await self._exchange.chunk_receive.receive()
        except trio.EndOfChannel:
            self._exchange.end_of_body()
            raise StopAsyncIteration from None
        except trio.ClosedResourceError:
            raise httpx.ReadError("the response stream was closed") from None

    async def aclose(self) -> None:
        """Close the stream; if the body is unfinished the app sees a disconnect."""
        self._exchange.disconnect()
        await trio.lowlevel.checkpoint()


class ASGIStreamTransport(httpx.AsyncBaseTransport):
    """An httpx transport running an ASGI 3 app in-process, streaming responses.

    Each request runs ``app(scope, receive, send)`` as a task in *nursery*, so the
    app may keep producing the body after :meth:`handle_async_request` returned.
    *client* is the ``(host, port)`` reported as the peer address, *root_path* is
    put in the scope as is, and *state* (if given) is shallow-copied into every
    scope as ``scope["state"]``, as servers do with lifespan state.

    Closing the transport (e.g. leaving ``async with httpx.AsyncClient(...)``)
    disconnects every request whose app is still running.
    """

    def __init__(
        self,
        app: ASGIApp,
        nursery: trio.Nursery,
        *,
        client: tuple[str, int] = ("127.0.0.1", 123),
        root_path: str = "",
        state: Mapping[str, Any] | None = None,
    ) -> None:
        self._app = app
        self._nursery = nursery
        self._client = client
        self._root_path = root_path
        self._state = state
        self._live: set[_Exchange] = set()

    def _build_scope(self, request: httpx.Request) -> Scope:
        url = request.url
        raw_path, _, _ = url.raw_path.partition(b"?")
        headers = [(name.lower(), value) for name, value in request.headers.raw]
        if not any(name == b"host" for name, _ in headers):
            headers.insert(0, (b"host", url.netloc))
        port = url.port if url.port is not None else _DEFAULT_PORTS.get(url.scheme, 80)
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": url.scheme,
            "path": unquote_to_bytes(raw_path).decode("utf-8", errors="replace"),
            "raw_path": raw_path,
            "query_string": url.query,
            "root_path": self._root_path,
            "headers": headers,
            "client": self._client,
            "server": (url.host, port),
            "extensions": {},
        }
        if self._state is not None:
            scope["state"] = dict(self._state)
        return scope

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Start the app for *request*; return once the app started its response.

        Raises the app's own exception if it fails before starting a response,
        and :class:`RuntimeError` if it returns without sending one.  If this
        call is cancelled before the response starts, the app sees
        ``http.disconnect``.
        """
        exchange = _Exchange(self._app, self._build_scope(request), request)
        self._live.add(exchange)
        self._nursery.start_soon(
            self._run_exchange,
            exchange,
            name=f"ASGI app: {request.method} {exchange.scope['path']}",
        )
        try:
            await exchange.wait_response_start()
        except BaseException:
            exchange.disconnect()
            raise
        return httpx.Response(
            status_code=exchange.status_code,
            headers=exchange.response_headers,
            stream=_ASGIResponseStream(exchange),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def _run_exchange(self, exchange: _Exchange) -> None:
        try:
            await exchange.run_app()
        finally:
            self._live.discard(exchange)

    async def aclose(self) -> None:
        """Disconnect every request whose app is still running."""
        for exchange in list(self._live):
            exchange.disconnect()
        await trio.lowlevel.checkpoint()
