"""The read-only routes: ``/health``, ``/events``, ``/metrics``, the dashboard, OpenAPI, probes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import trio

from .._dashboard import dashboard_page
from .._keeper import STORE_UNAVAILABLE
from .._openapi import openapi_body
from .exchange import ClientDisconnected

if TYPE_CHECKING:
    from .._runtime import Runtime
    from .._server import Server
    from .exchange import Request

__all__ = [
    "NOT_RUNNING",
    "UNAUTHORIZED",
    "bearer_token",
    "dashboard",
    "events",
    "health",
    "livez",
    "metrics",
    "openapi",
    "readyz",
]

UNAUTHORIZED: Final = b'{"error":"unauthorized"}'
NOT_RUNNING: Final = b'{"error":"server is not running (ASGI lifespan not started)"}'
_OK: Final = b'{"status":"ok"}'
_HTML: Final = b"text/html; charset=utf-8"
_SSE_START: Final = [
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"content-type", b"text/event-stream"),
]
_BEARER: Final = b"bearer"


def bearer_token(header: bytes | None) -> bytes | None:
    """The token of an ``Authorization: Bearer ...`` header value."""
    if not header or header[:6].lower() != _BEARER or header[6:7] != b" ":
        return None
    return header[7:].lstrip(b" ").strip()


async def health(request: Request, runtime: Runtime, arg: str) -> None:
    """GET /health: server status, per-task progress and result history."""
    await request.respond(200, runtime.health_body())


async def metrics(request: Request, server: Server, arg: str) -> None:
    """GET /metrics: the Prometheus text format, or OpenMetrics when ``Accept`` asks."""
    runtime = server._runtime
    if runtime is None:
        await request.respond(503, NOT_RUNNING)
        return
    assert runtime.metrics is not None  # the route exists only with metrics on
    accept = request.header(b"accept")
    body, content_type = await runtime.metrics.render(
        None if accept is None else accept.decode("latin-1")
    )
    await request.respond(200, body, content_type.encode("latin-1"))


async def events(request: Request, server: Server, arg: str) -> None:
    """GET /events: Server-Sent Events, a health snapshot per change."""
    runtime = server._runtime
    if runtime is None:
        await request.respond(503, NOT_RUNNING)
        return
    presented = bearer_token(request.header(b"authorization"))
    if presented is None:
        token = request.query("token")
        if token is not None:
            presented = token.encode("utf-8", "surrogateescape")
    if not runtime.authorized(presented):
        await request.respond(401, UNAUTHORIZED)
        return
    if runtime.draining or runtime.events.closed:
        await request.error("server is shutting down", 503)
        return
    if runtime.events.full():
        await request.error("too many event streams", 503)
        return
    stream = runtime.events.open_stream()
    send = request.send
    try:
        request.status = 200
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_START})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_disconnect, request, nursery.cancel_scope)
            async for frame in stream:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            # The last message is never cancelled: hypercorn tidies the connection up in it.
            with trio.CancelScope(shield=True):
                await send({"type": "http.response.body", "body": b""})
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _cancel_on_disconnect(request: Request, scope: trio.CancelScope) -> None:
    try:
        await request.until_disconnect()
    except ClientDisconnected:
        scope.cancel()


async def dashboard(request: Request, server: Server, arg: str) -> None:
    """GET /dashboard: the built-in page (no auth: it asks for the token itself)."""
    runtime = server._runtime
    page = dashboard_page("" if runtime is None else runtime.instance)
    headers = [
        (b"etag", page.etag.encode("latin-1")),
        (b"cache-control", b"no-cache"),
        (b"content-security-policy", page.content_security_policy.encode("latin-1")),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]
    tags = _etags(request.header(b"if-none-match") or b"")
    body = b"" if page.etag.encode("latin-1") in tags or b"*" in tags else page.body
    status = 304 if not body else 200
    headers += [(b"content-type", _HTML), (b"content-length", b"%d" % len(body))]
    request.status = status
    await request.send({"type": "http.response.start", "status": status, "headers": headers})
    await request.send({"type": "http.response.body", "body": body})


def _etags(header: bytes) -> set[bytes]:
    """The entity tags listed in an ``If-None-Match`` header (weak ones compare equal)."""
    return {tag.strip().removeprefix(b"W/") for tag in header.split(b",") if tag.strip()}


async def openapi(request: Request, server: Server, arg: str) -> None:
    """GET /openapi.json: the OpenAPI 3.1 description of this API (no auth, no secrets)."""
    await request.respond(200, openapi_body(server.name, tuple(server.tasks)))


async def livez(request: Request, server: Server, arg: str) -> None:
    """GET /livez: always ok."""
    await request.respond(200, _OK)


async def readyz(request: Request, server: Server, arg: str) -> None:
    """GET /readyz: 503 while draining or when the readiness check fails."""
    runtime = server._runtime
    if runtime is None:
        await request.respond(503, NOT_RUNNING)
        return
    if runtime.draining:
        await request.error("server is shutting down", 503)
        return
    if not runtime.keeper.ok:
        await request.error(STORE_UNAVAILABLE, 503)
        return
    problem = await runtime.readiness_error()
    if problem is not None:
        await request.error(problem, 503)
        return
    await request.respond(200, _OK)
