"""One HTTP request over raw ASGI: bytes headers, a body read chunk by chunk, direct answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final
from urllib.parse import parse_qsl

import trio
import werkzeug.urls  # noqa: F401 - registers the "werkzeug.url_quote" decoding error handler

from .._wire import dumps

__all__ = [
    "BODY_TIMEOUT",
    "BodyTimeout",
    "ClientDisconnected",
    "Request",
]

BODY_TIMEOUT: Final = 60.0  # seconds to receive a whole request body
JSON: Final = b"application/json"
_CLOSE: Final = (b"connection", b"close")
_UNREAD_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})


class ClientDisconnected(Exception):
    """The client went away before the answer; nothing is sent."""


class BodyTimeout(Exception):
    """The request body was still incomplete after :data:`BODY_TIMEOUT` seconds."""


class Request:
    """One ASGI HTTP exchange: what the handlers read, and how they answer.

    ``status`` is the status of the answer once one was started;
    ``on_answer``, when set, is called with it just before it is sent (the
    ``/run`` metrics count answers by status).
    """

    __slots__ = ("method", "on_answer", "path", "receive", "scope", "send", "status")

    def __init__(self, scope: Any, receive: Any, send: Any, method: str, path: str) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.method = method
        self.path = path
        self.status: int | None = None
        self.on_answer: Callable[[int], None] | None = None

    # -- reading ------------------------------------------------------------

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lowercase), or None."""
        for key, value in self.scope["headers"]:
            if key.lower() == name:
                return bytes(value)
        return None

    def getlist(self, key: str) -> list[str]:
        """Every value of header ``key``, in order, as text (the tracing carrier's lookup)."""
        name = key.lower().encode("latin-1")
        return [bytes(v).decode("latin-1") for k, v in self.scope["headers"] if k.lower() == name]

    def query(self, name: str) -> str | None:
        """The first value of query parameter ``name``, decoded as Quart decodes it, or None."""
        raw: bytes = self.scope.get("query_string", b"")
        if not raw:
            return None
        pairs = parse_qsl(raw.decode(), keep_blank_values=True, errors="werkzeug.url_quote")
        for key, value in pairs:
            if key == name:
                return value
        return None

    def content_length(self) -> int | None:
        """The declared body length; None when absent, invalid or the body is chunked."""
        length: int | None = None
        for key, value in self.scope["headers"]:
            key = key.lower()
            if key == b"transfer-encoding" and b"chunked" in bytes(value).lower():
                return None
            if key == b"content-length" and length is None:
                try:
                    length = max(0, int(bytes(value).strip()))
                except ValueError:
                    return None
        return length

    async def read_body(self, limit: int) -> bytes | None:
        """The request body, or None as soon as it is known to exceed ``limit`` bytes.

        Raises:
            BodyTimeout: the body is still incomplete after :data:`BODY_TIMEOUT` seconds.
            ClientDisconnected: the client went away meanwhile.
        """
        declared = self.content_length()
        if declared is not None and declared > limit:
            return None
        queued = self._queued(limit)
        if isinstance(queued, bytes) or queued is None:
            return queued  # it came with the request: nothing to wait for
        with trio.move_on_after(BODY_TIMEOUT):
            return await self._collect(limit, queued)
        raise BodyTimeout

    def _queued(self, limit: int) -> bytes | bytearray | None:
        """The body if the server has already queued all of it (never waits).

        Returns the whole body, None when it exceeds ``limit``, or the part
        queued so far as a ``bytearray``. hypercorn's ``receive`` is a trio
        memory channel's, whose queue can be read without waiting; from any
        other ``receive`` nothing is known to be queued.
        """
        data = bytearray()
        channel = getattr(self.receive, "__self__", None)
        if not isinstance(channel, trio.MemoryReceiveChannel):
            return data
        while True:
            try:
                message = channel.receive_nowait()
            except trio.WouldBlock:
                return data
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            if not data and not message.get("more_body", False):
                return self._whole(message, limit)
            data += message.get("body", b"")
            if len(data) > limit:
                return None
            if not message.get("more_body", False):
                return bytes(data)

    @staticmethod
    def _whole(message: Any, limit: int) -> bytes | None:
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        body: bytes = message.get("body", b"")
        return None if len(body) > limit else body

    async def _collect(self, limit: int, data: bytearray) -> bytes | None:
        receive = self.receive
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            if not data and not message.get("more_body", False):
                return self._whole(message, limit)  # the usual case: one message
            data += message.get("body", b"")
            if len(data) > limit:
                return None
            if not message.get("more_body", False):
                return bytes(data)

    async def until_disconnect(self) -> None:
        """Wait until the client goes away, then raise :class:`ClientDisconnected`.

        Call it once the body was read.
        """
        while (await self.receive())["type"] != "http.disconnect":
            pass
        raise ClientDisconnected

    # -- answering ----------------------------------------------------------

    async def respond(
        self,
        status: int,
        body: bytes,
        content_type: bytes = JSON,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Send a whole answer: status, type and length, extra ``headers``, body."""
        start = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        if headers:
            start += headers
        self.status = status
        if self.on_answer is not None:
            self.on_answer(status)
        await self.send({"type": "http.response.start", "status": status, "headers": start})
        await self.send({"type": "http.response.body", "body": body})

    async def json(self, obj: Any, status: int = 200) -> None:
        """Answer with ``obj`` as JSON."""
        await self.respond(status, dumps(obj))

    async def error(
        self,
        message: str,
        status: int,
        *,
        unread: bool = False,
        headers: list[tuple[bytes, bytes]] | None = None,
        **extra: Any,
    ) -> None:
        """Answer with the ``{"error": message}`` envelope (``extra`` members after it).

        ``unread`` says the body was not read: the connection is then closed
        after the answer (see :meth:`unread_headers`).
        """
        await self.respond(
            status,
            dumps({"error": message, **extra}),
            headers=self.unread_headers(headers, unread),
        )

    def unread_headers(
        self, headers: list[tuple[bytes, bytes]] | None, unread: bool
    ) -> list[tuple[bytes, bytes]] | None:
        """``headers`` plus ``Connection: close`` when answering before a body was read.

        The unread body would otherwise be taken for the next request on a
        keep-alive connection; reading it instead would let anyone make the
        server read large bodies without a token.
        """
        if unread and self.method in _UNREAD_BODY_METHODS:
            return [_CLOSE, *(headers or ())]
        return headers
