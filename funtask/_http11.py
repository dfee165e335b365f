"""A lean keep-alive HTTP/1.1 client for callback POSTs to plain ``http://`` URLs.

httpx costs about 450 µs of CPU per callback POST on a keep-alive
connection (client layers, httpcore's pool, the anyio-style stream
wrappers); this client costs a fraction of that. It speaks HTTP/1.1 through
``h11`` (what httpcore and hypercorn use underneath) on Trio sockets, keeps
idle connections per origin like httpx's pool (at most
:data:`MAX_IDLE_PER_ORIGIN`, each for at most :data:`KEEPALIVE_EXPIRY`
seconds), never follows redirects and never decodes a response body (a
callback's answer is judged by its status and ``Retry-After`` only).

It takes only what it can do exactly as httpx would: :meth:`LeanHTTP.route`
answers None for anything else (``https``, user-info, non-ASCII or unusual
characters, a proxy configured in the environment), and the caller uses
httpx then. Timeouts are the caller's: a Trio cancel scope around
:meth:`LeanHTTP.post`; a request cut short closes its connection.
"""

from __future__ import annotations

import os
import re
import select
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import h11
import trio

__all__ = [
    "KEEPALIVE_EXPIRY",
    "MAX_IDLE_PER_ORIGIN",
    "LeanHTTP",
    "LeanHTTPError",
    "Route",
    "proxy_configured",
]

KEEPALIVE_EXPIRY: Final = 5.0  # seconds an idle connection is kept (httpx's default)
MAX_IDLE_PER_ORIGIN: Final = 20  # idle connections kept per origin (httpx's default)
_MAX_ROUTES: Final = 1024  # parsed URLs remembered
_READ_SIZE: Final = 65536  # bytes per receive
# Printable ASCII without space, quotes, angle brackets, backslash, caret, backtick,
# braces and pipe: what httpx would send unchanged (it percent-encodes the rest).
_PLAIN_URL: Final = re.compile(r"http://[A-Za-z0-9\-._~:/?#@!$&'()*+,;=%]+")
_DOT_SEGMENT: Final = re.compile(r"(?:^|/)\.\.?(?:/|$)")  # httpx removes "." and ".." segments
_PROXY_VARIABLES: Final = ("http_proxy", "all_proxy")


class LeanHTTPError(Exception):
    """A callback POST failed before a complete response arrived.

    ``str(exc)`` reads like httpx's error of the same kind
    (``ConnectError: ...``, ``ReadError: ...``, ``RemoteProtocolError: ...``).
    """


@dataclass(frozen=True)
class Route:
    """Where a plain ``http://`` URL is sent: socket address, ``Host`` header, target."""

    host: str
    port: int
    host_header: bytes
    target: bytes


def proxy_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment names an HTTP proxy (httpx would then use it)."""
    environ = os.environ if environ is None else environ
    return any(value and name.lower() in _PROXY_VARIABLES for name, value in environ.items())


class _Connection:
    """One keep-alive connection: a Trio socket stream and its h11 state."""

    __slots__ = ("h11", "idle_since", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(our_role=h11.CLIENT)
        self.idle_since = 0.0

    def close(self) -> None:
        """Close the socket at once (never blocks, never raises)."""
        self.stream.socket.close()

    def reusable(self, now: float) -> bool:
        """Idle, fresh, and the peer has not closed it (nothing readable: no EOF, no junk)."""
        if now - self.idle_since > KEEPALIVE_EXPIRY:
            return False
        poller = select.poll()
        poller.register(self.stream.socket.fileno(), select.POLLIN)
        return not poller.poll(0)


class LeanHTTP:
    """Keep-alive connections per origin for callback POSTs (see the module docstring)."""

    def __init__(self, default_headers: Iterable[tuple[str, str]]) -> None:
        """``default_headers`` go on every request (the httpx client's, for the same wire)."""
        self._defaults = [
            (name.encode("ascii"), value.encode("ascii")) for name, value in default_headers
        ]
        self._routes: dict[str, Route | None] = {}
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._closed = False

    def route(self, url: str) -> Route | None:
        """The route of ``url`` if this client sends it exactly as httpx would, else None."""
        try:
            return self._routes[url]
        except KeyError:
            pass
        route = _parse(url)
        if len(self._routes) >= _MAX_ROUTES:
            self._routes.clear()
        self._routes[url] = route
        return route

    async def post(
        self, route: Route, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """POST ``body``; return the final status and the response headers.

        Raises:
            LeanHTTPError: no complete response (connect, read or protocol failure).
        """
        if self._closed:
            raise RuntimeError("cannot send a request, as the client has been closed")
        connection = await self._connection(route)
        done = False
        try:
            answer = await _exchange(
                connection, route, body, self._request_headers(route, body, headers)
            )
            done = True
        finally:
            if not done:
                connection.close()
        self._release(route, connection)
        return answer

    def close(self) -> None:
        """Close every idle connection at once (never blocks); later posts raise RuntimeError."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def _request_headers(
        self, route: Route, body: bytes, headers: Mapping[str, str]
    ) -> list[tuple[bytes, bytes]]:
        out = [(b"Host", route.host_header), *self._defaults]
        out.extend(
            (name.encode("ascii"), value.encode("ascii")) for name, value in headers.items()
        )
        out.append((b"Content-Length", b"%d" % len(body)))
        return out

    async def _connection(self, route: Route) -> _Connection:
        idle = self._idle.get((route.host, route.port))
        if idle:
            now = trio.current_time()
            while idle:
                connection = idle.pop()
                if connection.reusable(now):
                    return connection
                connection.close()
        try:
            stream = await trio.open_tcp_stream(route.host, route.port)
        except OSError as exc:
            raise LeanHTTPError(f"ConnectError: {exc}") from exc
        return _Connection(stream)

    def _release(self, route: Route, connection: _Connection) -> None:
        state = connection.h11
        if self._closed or state.our_state is not h11.DONE or state.their_state is not h11.DONE:
            connection.close()
            return
        state.start_next_cycle()
        idle = self._idle.setdefault((route.host, route.port), [])
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            connection.close()
            return
        connection.idle_since = trio.current_time()
        idle.append(connection)


async def _exchange(
    connection: _Connection, route: Route, body: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[int, list[tuple[bytes, bytes]]]:
    """Send one request on ``connection`` and read its whole response."""
    state = connection.h11
    stream = connection.stream
    try:
        data = state.send(h11.Request(method=b"POST", target=route.target, headers=headers))
        data += state.send(h11.Data(data=body)) or b""
        data += state.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError as exc:
        raise LeanHTTPError(f"LocalProtocolError: {exc}") from exc
    try:
        await stream.send_all(data or b"")
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise LeanHTTPError(f"WriteError: {_reason(exc)}") from exc
    status = 0
    response_headers: list[tuple[bytes, bytes]] = []
    while True:
        try:
            event = state.next_event()
        except h11.RemoteProtocolError as exc:
            raise LeanHTTPError(f"RemoteProtocolError: {exc}") from exc
        if event is h11.NEED_DATA:
            try:
                chunk = await stream.receive_some(_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise LeanHTTPError(f"ReadError: {_reason(exc)}") from exc
            if not chunk and status == 0:
                raise LeanHTTPError(
                    "RemoteProtocolError: Server disconnected without sending a response."
                )
            state.receive_data(chunk)
        elif isinstance(event, h11.Response):
            status = event.status_code
            response_headers = list(event.headers)
        elif isinstance(event, h11.EndOfMessage):
            return status, response_headers
        elif isinstance(event, h11.ConnectionClosed):
            raise LeanHTTPError(
                "RemoteProtocolError: peer closed connection without sending complete message body"
            )
        # InformationalResponse (1xx) and Data (the body, never decoded) are skipped.


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return str(cause or exc)


def _parse(url: str) -> Route | None:
    """A plain ``http://host[:port]/path?query`` URL's route, or None (httpx takes it)."""
    if not _PLAIN_URL.fullmatch(url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if not host or "@" in parts.netloc or "%" in parts.netloc:
        return None
    if not re.fullmatch(r"[a-z0-9.\-]+", host):
        return None
    host_header = host
    if port is None or port == 80:
        port = 80
    else:
        host_header = f"{host_header}:{port}"
    path = parts.path or "/"
    if _DOT_SEGMENT.search(path) or url.endswith(("?", "#")):
        return None
    target = f"{path}?{parts.query}" if parts.query else path
    if "%" in target and not re.fullmatch(r"(?:[^%]|%[0-9A-Fa-f]{2})*", target):
        return None  # a stray "%" that httpx would escape
    return Route(host, port, host_header.encode("ascii"), target.encode("ascii"))
