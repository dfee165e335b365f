"""A lean HTTP/1.1 keep-alive client on raw Trio sockets, for the harness's own requests.

Only what the benchmark needs: requests with a ``Content-Length`` body, and
responses framed by ``Content-Length``. It is much cheaper per request than
httpx, so the load it adds to the shared two cores stays small.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import trio

__all__ = [
    "Connection",
    "HttpError",
    "call",
    "drive_jobs",
    "get_json",
    "request_once",
    "run_task",
]


class HttpError(Exception):
    """The peer closed the connection or sent something this client does not handle."""


class Connection:
    """One keep-alive connection to ``host:port``."""

    def __init__(self, stream: trio.SocketStream, host: str, port: int) -> None:
        self.stream = stream
        self.host, self.port = host, port
        self.host_header = f"{host}:{port}".encode()
        self.buffer = b""
        self.closing = False  # the last response said "Connection: close"
        self.reconnects = 0

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        """Connect to ``host:port``."""
        return cls(await trio.open_tcp_stream(host, port), host, port)

    async def aclose(self) -> None:
        """Close the connection."""
        await self.stream.aclose()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """Send one request, return ``(status, body)``.

        hypercorn closes a keep-alive connection after 1,000 requests (its
        ``keep_alive_max_requests``) with ``Connection: close``; the next request
        then goes on a new connection.
        """
        if self.closing:
            await self.stream.aclose()
            self.stream = await trio.open_tcp_stream(self.host, self.port)
            self.buffer = b""
            self.closing = False
            self.reconnects += 1
        lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + self.host_header]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}".encode("latin-1"))
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Type: application/json")
            lines.append(b"Content-Length: %d" % len(body))
        await self.stream.send_all(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        return await self._response()

    async def _fill(self) -> None:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise HttpError("connection closed by the server")
        self.buffer += chunk

    async def _response(self) -> tuple[int, bytes]:
        while b"\r\n\r\n" not in self.buffer:
            await self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.split(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length = None
        for line in header_lines:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
            elif name.strip().lower() == b"transfer-encoding":
                raise HttpError("chunked responses are not supported")
            elif name.strip().lower() == b"connection" and value.strip().lower() == b"close":
                self.closing = True
        if length is None:
            raise HttpError(f"no Content-Length in the {status} response")
        while len(self.buffer) < length:
            await self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, body


async def request_once(
    port: int,
    method: str,
    path: str,
    *,
    token: str | None = None,
    payload: Any = None,
    host: str = "127.0.0.1",
) -> tuple[int, Any]:
    """One request on a fresh connection; the answer's JSON body decoded (or the raw bytes)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = b"" if payload is None else json.dumps(payload).encode()
    connection = await Connection.open(host, port)
    try:
        status, raw = await connection.request(method, path, body, headers)
    finally:
        await connection.aclose()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


# -- the harness's drivers (blocking: each runs its own trio.run) -------------------


def call(port: int, method: str, path: str, token: str, payload: Any = None) -> tuple[int, Any]:
    """One request from this process (setup, checks and sync task runs)."""
    return trio.run(lambda: request_once(port, method, path, token=token, payload=payload))


def get_json(port: int, path: str, token: str) -> Any:
    """GET ``path``; its JSON body (anything but 200 is an error)."""
    status, body = call(port, "GET", path, token)
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}: {body!r}")
    return body


def run_task(port: int, token: str, task: str, params: dict[str, Any], **extra: Any) -> Any:
    """POST /run/task synchronously; the result's data."""
    status, body = call(port, "POST", f"/run/{task}", token, {"params": params, **extra})
    if status != 200 or not isinstance(body, dict) or not body.get("success"):
        raise RuntimeError(f"/run/{task} answered {status}: {body!r}")
    return body.get("data", {})


async def drive_jobs(
    port: int,
    token: str,
    tasks: list[str],
    total: int,
    *,
    make_body: Callable[[str, int], bytes] = lambda task, n: b'{"params":{}}',
    per_task: bool = False,
) -> dict[str, int]:
    """Run ``total`` sync jobs, one keep-alive connection per task; count the statuses.

    With ``per_task`` every task runs ``total // len(tasks)`` of them; otherwise the
    connections share the total.
    """
    statuses: dict[str, int] = {}
    issued = 0
    headers = {"Authorization": f"Bearer {token}"}

    async def worker(task: str) -> None:
        nonlocal issued
        connection = await Connection.open("127.0.0.1", port)
        mine = 0
        try:
            while (mine < total // len(tasks)) if per_task else (issued < total):
                issued += 1
                mine += 1
                status, _ = await connection.request(
                    "POST", f"/run/{task}", make_body(task, issued), headers
                )
                statuses[str(status)] = statuses.get(str(status), 0) + 1
        finally:
            await connection.aclose()

    async with trio.open_nursery() as nursery:
        for task in tasks:
            nursery.start_soon(worker, task)
    return statuses
