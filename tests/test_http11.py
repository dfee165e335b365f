"""The lean HTTP/1.1 client of callback POSTs: routes, keep-alive, failures (real sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

import httpx
import pytest
import trio

from funtask._callbacks import AttemptOutcome, CallbackSender
from funtask._http11 import LeanHTTP, LeanHTTPError, Route, proxy_configured

LIMIT = 10  # seconds for any test here (real clock, loopback)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class Peer:
    """A loopback HTTP peer that answers each request with ``answer(index)``.

    ``answer`` returns the raw bytes to send, or None to close without answering.
    """

    def __init__(self, answer: Callable[[int], bytes | None]) -> None:
        self.answer = answer
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body)
        self.connections = 0
        self.port = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += await stream.receive_some(65536)
                body, buffer = buffer[:length], buffer[length:]
                self.requests.append((head, body))
                answer = self.answer(len(self.requests) - 1)
                if answer is None:
                    return
                await stream.send_all(answer)
                if b"Connection: close" in answer:
                    return

    def route(self, path: str = "/hook") -> Route:
        return Route("127.0.0.1", self.port, f"127.0.0.1:{self.port}".encode(), path.encode())


@asynccontextmanager
async def serving(answer: Callable[[int], bytes | None]) -> AsyncIterator[Peer]:
    peer = Peer(answer)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, peer.handle, 0, host="127.0.0.1"))
        peer.port = listeners[0].socket.getsockname()[1]
        yield peer
        nursery.cancel_scope.cancel()


def client() -> LeanHTTP:
    return LeanHTTP(httpx.AsyncClient().headers.items())


# -- routes: only what httpx would send unchanged ---------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "host_header", "target"),
    [
        ("http://127.0.0.1:8080/hook", "127.0.0.1", 8080, b"127.0.0.1:8080", b"/hook"),
        ("http://Hooks.Example.com/a/b?x=1&y=%20", "hooks.example.com", 80,
         b"hooks.example.com", b"/a/b?x=1&y=%20"),
        ("http://h:80", "h", 80, b"h", b"/"),
        ("http://h/p#fragment", "h", 80, b"h", b"/p"),
    ],
)  # fmt: skip
def test_plain_urls_are_routed(
    url: str, host: str, port: int, host_header: bytes, target: bytes
) -> None:
    assert client().route(url) == Route(host, port, host_header, target)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/hook",
        "http://user:pw@h/hook",
        "http://h/a b",
        "http://h/caf\u00e9",
        "http://h\u00e9.example/",
        "http://[::1]:8080/hook",
        "http://h/a/../b",
        "http://h/./b",
        "http://h/p?",
        "http://h/100%",
        "http://h:99999/",
        "http://h/a|b",
        "ftp://h/",
    ],
)
def test_other_urls_are_left_to_httpx(url: str) -> None:
    assert client().route(url) is None


def test_proxy_configured() -> None:
    assert not proxy_configured({"PATH": "/bin", "NO_PROXY": "*"})
    assert not proxy_configured({"HTTP_PROXY": ""})
    assert proxy_configured({"HTTP_PROXY": "http://proxy:3128"})
    assert proxy_configured({"all_proxy": "socks5://proxy"})


# -- the wire -----------------------------------------------------------------------------------


async def test_keep_alive_and_headers() -> None:
    lean = client()
    with trio.fail_after(LIMIT):
        async with serving(lambda i: OK) as peer:
            for n in range(3):
                status, _ = await lean.post(
                    peer.route("/hook?n=1"), b'{"n":%d}' % n, {"Content-Type": "application/json"}
                )
                assert status == 200
    lean.close()
    assert peer.connections == 1
    head, body = peer.requests[2]
    assert body == b'{"n":2}'
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /hook?n=1 HTTP/1.1"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    assert headers[b"host"] == f"127.0.0.1:{peer.port}".encode()
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == b"7"
    assert headers[b"user-agent"].startswith(b"python-httpx/")
    assert headers[b"accept"] == b"*/*"


async def test_chunked_body_and_informational_answers_are_read_through() -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    lean = client()
    with trio.fail_after(LIMIT):
        async with serving(lambda i: answer) as peer:
            assert (await lean.post(peer.route(), b"{}", {}))[0] == 202
            assert (await lean.post(peer.route(), b"{}", {}))[0] == 202
    lean.close()
    assert peer.connections == 1


async def test_connection_close_and_peer_closing_idle_connections() -> None:
    closing = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    lean = client()
    with trio.fail_after(LIMIT):
        async with serving(lambda i: closing) as peer:
            for _ in range(3):
                assert (await lean.post(peer.route(), b"{}", {}))[0] == 200
                await trio.sleep(0.01)
    lean.close()
    assert peer.connections == 3


async def test_no_answer_is_a_remote_protocol_error() -> None:
    lean = client()
    with trio.fail_after(LIMIT):
        async with serving(lambda i: None) as peer:
            with pytest.raises(LeanHTTPError, match=r"^RemoteProtocolError: Server disconnected"):
                await lean.post(peer.route(), b"{}", {})


async def test_refused_connection_is_a_connect_error() -> None:
    async with serving(lambda i: OK) as peer:
        route = peer.route()
    with trio.fail_after(LIMIT), pytest.raises(LeanHTTPError, match=r"^ConnectError: "):
        await client().post(route, b"{}", {})


async def test_closed_client_refuses_requests() -> None:
    lean = client()
    lean.close()
    with pytest.raises(RuntimeError, match="client has been closed"):
        await lean.post(Route("127.0.0.1", 9, b"127.0.0.1:9", b"/"), b"{}", {})


# -- through CallbackSender ----------------------------------------------------------------------


async def sender_attempt(
    answer: Callable[[int], bytes | None], callback_timeout: float = LIMIT
) -> tuple[AttemptOutcome, AttemptOutcome, Peer]:
    """Two attempts through a CallbackSender with the lean client (the second after the first)."""
    async with httpx.AsyncClient() as http:
        lean = LeanHTTP(http.headers.items())
        sender = CallbackSender(http, timeout=callback_timeout, signing_key=b"k", lean=lean)
        with trio.fail_after(LIMIT):
            async with serving(answer) as peer:
                url = f"http://127.0.0.1:{peer.port}/hook"
                first = await sender.attempt(url, b'{"jobId":"j"}', "msg_1", {"traceparent": "t"})
                second = await sender.attempt(url, b'{"jobId":"j"}', "msg_1")
        lean.close()
    return first, second, peer


async def test_sender_uses_the_lean_client_with_signature_headers() -> None:
    first, second, peer = await sender_attempt(lambda i: OK)
    assert first.delivered and second.delivered
    assert peer.connections == 1
    head = peer.requests[0][0].lower()
    assert b"\r\nwebhook-id: msg_1" in head
    assert b"\r\nwebhook-signature: v1," in head
    assert b"\r\ntraceparent: t" in head


async def test_sender_failures_retry_after_and_redirects() -> None:
    answers = [
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nbusy",
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://elsewhere/\r\n"
        b"Content-Length: 0\r\n\r\n",
    ]
    first, second, peer = await sender_attempt(lambda i: answers[i])
    assert (first.delivered, first.error, first.retry_after, first.status) == (
        False,
        "HTTP 503",
        7.0,
        503,
    )
    assert (second.delivered, second.error, second.status) == (False, "HTTP 307", 307)
    assert peer.connections == 1  # the redirect was not followed


async def test_sender_timeout_closes_the_connection() -> None:
    def answer(index: int) -> bytes | None:
        return OK if index else b"HTTP/1.1 200 OK\r\n"  # the first answer never ends

    first, second, peer = await sender_attempt(answer, callback_timeout=0.2)
    assert (first.delivered, first.error) == (False, "timed out after 200ms")
    assert second.delivered
    assert peer.connections == 2
