"""Security properties, one test per point (SPEC 1 "Auth", "Callbacks and dead letters", 4).

In-process tests run on the mock clock; the ones about raw HTTP bytes run a
real hypercorn worker (``Server.serve``) on a loopback port with the real clock.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel
from trio.testing import MockClock

import funtask
import funtask._callbacks
import funtask._runtime
from funtask.testing import open_test_client

from _support import (
    CallbackReceiver,
    add_raiser,
    build_server,
    first_frame,
    no_jobs,
    wait_until,
)

SECRET = "s3cr3t-Token-9f8e7d"
OLD_SECRET = "old-Token-0a1b2c"
ALLOW = ["https://hooks.example.com/hooks"]


def _server_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The records the worker made: not the test client's own httpx request lines."""
    return [
        record
        for record in caplog.records
        if not (record.name.startswith("httpx") and "http://funtask.test" in record.getMessage())
    ]


def _all_log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every worker record's message, arguments and formatted exception, as one text."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    parts = []
    for record in _server_records(caplog):
        parts.append(formatter.format(record))
        parts.append(repr(record.args))
        parts.append(repr(getattr(record, "__dict__", {})))
    return "\n".join(parts)


# -- 1. the token is never logged ---------------------------------------------------------


async def test_token_never_appears_in_logs(
    autojump_clock: MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = build_server(tmp_path, auth_token=[SECRET, OLD_SECRET], callback_allowlist=ALLOW)
    add_raiser(server, "explode", lambda: RuntimeError("kaboom"), step="exploding")
    near_misses = [SECRET[:-1], SECRET + "x", SECRET.upper(), "x" + OLD_SECRET]
    transport = CallbackReceiver().transport()
    async with open_test_client(server, authorized=False, callback_transport=transport) as client:
        good = {"Authorization": f"Bearer {SECRET}"}
        # Auth failures: near misses, wrong schemes, non-ASCII, tokens in the query string.
        for wrong in near_misses:
            for url in ("/run/greet", "/stop/greet"):
                response = await client.post(url, headers={"Authorization": f"Bearer {wrong}"})
                assert response.status_code == 401
            events = await client.get("/events", params={"token": wrong})
            assert events.status_code == 401
        for header in (f"Token {SECRET}", f"Basic {SECRET}", f"Bearer\t{SECRET}x", SECRET):
            response = await client.get("/health", headers={"Authorization": header})
            assert response.status_code == 401
        response = await client.get(
            "/health", headers={"Authorization": f"Bearer {SECRET}\u00e9".encode()}
        )
        assert response.status_code == 401
        assert (await client.get("/nope", params={"token": SECRET})).status_code == 404
        assert (await client.post("/run/greet", params={"token": SECRET})).status_code == 401
        # Successful calls, with either token, sync and async, failing and panicking tasks.
        for token in (SECRET, OLD_SECRET):
            headers = {"Authorization": f"bearer {token}"}
            assert (await client.post("/run/greet", headers=headers)).status_code == 200
        assert (await client.post("/run/explode", headers=good)).json()["error"]["code"] == (
            "panic"
        )
        accepted = await client.post(
            "/run/greet",
            headers=good,
            json={"callbackUrl": "https://hooks.example.com/hooks/done"},
        )
        assert accepted.status_code == 202
        assert (await client.get("/health", headers=good)).status_code == 200
        assert (await client.get(f"/result/{accepted.json()['jobId']}", headers=good)).is_success
        # /events?token= (EventSource style), and with the header.
        for kwargs in ({"params": {"token": SECRET}}, {"headers": good}):
            async with client.stream("GET", "/events", **kwargs) as stream:
                assert stream.status_code == 200
                assert (await first_frame(stream)).startswith(b"data: ")
    text = _all_log_text(caplog)
    assert _server_records(caplog), "the worker logged nothing: the check would be vacuous"
    for secret in (SECRET, OLD_SECRET, *near_misses):
        assert secret not in text, f"{secret!r} was logged"
        assert secret.encode().hex() not in text


async def test_callback_url_query_is_never_logged(
    autojump_clock: MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SPEC 4: URLs are logged without their query string (callback URLs carry secrets)."""
    caplog.set_level(logging.DEBUG)
    server = build_server(tmp_path, callback_allowlist=ALLOW, callback_retries=2)
    secret_query = "sig=Q7x-callback-secret"
    receiver = CallbackReceiver([500, 200])
    async with open_test_client(server, callback_transport=receiver.transport()) as client:
        url = f"https://hooks.example.com/hooks/done?{secret_query}"
        assert (await client.post("/run/greet", json={"callbackUrl": url})).status_code == 202
        await wait_until(lambda: len(receiver.attempts) == 2)
        await wait_until(lambda: not server._runtime or not server._runtime.runner.jobs())
    assert receiver.urls[0].endswith(secret_query)  # the query itself is kept for the call
    text = _all_log_text(caplog)
    leaks = [
        f"{record.name}: {record.getMessage()}"
        for record in _server_records(caplog)
        if "callback-secret" in record.getMessage()
    ]
    assert "callback-secret" not in text, "callback URL query logged:\n" + "\n".join(leaks)


# -- 2. constant-time comparison of every token ---------------------------------------------


async def test_tokens_are_compared_with_compare_digest_every_one(
    autojump_clock: MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = ["alpha-token", "bravo-token", "charlie-token"]
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(funtask._runtime.hmac, "compare_digest", spy)
    server = build_server(tmp_path, auth_token=tokens)
    expected = {token.encode() for token in tokens}
    async with open_test_client(server, authorized=False) as client:
        for presented, status in [
            ("alpha-token", 200),  # first
            ("bravo-token", 200),  # middle
            ("charlie-token", 200),  # last
            ("delta-token", 401),  # none
            ("alpha-toke", 401),  # a prefix
            ("", 401),
            ("\u00e9\u00e9", 401),  # non-ASCII: compared as bytes, never a TypeError
        ]:
            calls.clear()
            header = f"Bearer {presented}".encode()
            response = await client.get("/health", headers={"Authorization": header})
            assert response.status_code == status, presented
            assert len(calls) == len(tokens), (presented, calls)
            assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)
            assert {b for _, b in calls} == expected
            assert {a for a, _ in calls} == {presented.encode()}  # as sent, never decoded
        calls.clear()
        async with client.stream("GET", "/events", params={"token": "charlie-token"}) as events:
            assert events.status_code == 200
        assert len(calls) == len(tokens)
        assert {b for _, b in calls} == expected


# -- 3. callbacks never follow redirects ------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_callbacks_never_follow_redirects(
    autojump_clock: MockClock, tmp_path: Path, status: int
) -> None:
    server = build_server(tmp_path, callback_allowlist=ALLOW, callback_retries=3)

    def answer(request: httpx.Request) -> httpx.Response | int:
        if request.url.path == "/hooks/start":
            # The target is inside the allowlist too: following it would still be wrong.
            return httpx.Response(
                status, headers={"Location": "https://hooks.example.com/hooks/elsewhere"}
            )
        return 200

    receiver = CallbackReceiver(answer)
    async with open_test_client(server, callback_transport=receiver.transport()) as client:
        accepted = await client.post(
            "/run/greet", json={"callbackUrl": "https://hooks.example.com/hooks/start"}
        )
        assert accepted.status_code == 202
        job_id = accepted.json()["jobId"]
        await wait_until(lambda: no_jobs(server))
    assert receiver.urls == ["https://hooks.example.com/hooks/start"] * 3  # one per attempt
    letter = json.loads((tmp_path / f"{job_id}.json").read_text())
    assert letter["deadLetter"]["attempts"] == 3
    assert letter["deadLetter"]["lastError"] == f"HTTP {status}"


async def test_stop_right_after_a_delivery_leaves_no_dead_letter(
    autojump_clock: MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivered result is never left in the dead-letter dir (a replay would send it twice).

    Found by bench/stress.py: a ``/stop`` that lands between the receiver's 2xx and
    the removal of the letter cancels the removal. Here the ``/stop`` is made at
    exactly that moment.
    """
    server = build_server(tmp_path, callback_allowlist=ALLOW)
    receiver = CallbackReceiver(204)
    clients: list[httpx.AsyncClient] = []
    real_remove = funtask._callbacks.remove_dead_letter

    async def stop_then_remove(path: Any) -> None:
        stopped = await clients[0].post("/stop/greet")  # the caller gives up: too late
        assert stopped.json()["message"] == "Cancellation requested"
        await real_remove(path)

    monkeypatch.setattr(funtask._callbacks, "remove_dead_letter", stop_then_remove)

    async with open_test_client(server, callback_transport=receiver.transport()) as client:
        clients.append(client)
        accepted = await client.post(
            "/run/greet", json={"callbackUrl": "https://hooks.example.com/hooks/done"}
        )
        assert accepted.status_code == 202
        await wait_until(lambda: no_jobs(server))
    assert len(receiver.attempts) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- 4. jobIds cannot escape the dead-letter dir ----------------------------------------------

HOSTILE_JOB_IDS = [
    "../../x",
    "../escaped",
    "/etc/passwd",
    "..",
    ".",
    "...",
    ".hidden",
    "a/b/../../../c",
    "..\\..\\windows",
    "C:\\Windows\\system32",
    "~",
    "~root/.ssh/authorized_keys",
    "x~2",
    "%2e%2e%2fx",
    "\u2215etc\u2215passwd",  # DIVISION SLASH
    "\uff0e\uff0e\uff0fx",  # fullwidth dots and solidus
    "\u202e/txt.exe",  # right-to-left override
    "\u00fcn\u00efc\u00f6d\u00e9/../\U0001f389",
    "../" * 85 + "x",  # 256 characters
    "/" * 256,
    "con",
    "nul.json",
]


async def test_job_ids_cannot_escape_the_dead_letter_dir(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    directory = tmp_path / "deep" / "dead-letters"
    directory.mkdir(parents=True)
    server = build_server(directory, callback_allowlist=ALLOW, callback_retries=1)
    transport = CallbackReceiver(500).transport()
    async with open_test_client(server, callback_transport=transport) as client:
        for job_id in HOSTILE_JOB_IDS:
            response = await client.post(
                "/run/greet",
                json={"jobId": job_id, "callbackUrl": "https://hooks.example.com/hooks/x"},
            )
            assert response.status_code == 202, job_id
            assert response.json() == {"jobId": job_id}
            await wait_until(lambda: no_jobs(server))
    everything = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    files = [p for p in everything if (tmp_path / p).is_file()]
    assert all(p.parent == Path("deep/dead-letters") for p in files), everything
    assert {p for p in everything if not (tmp_path / p).is_file()} == {
        Path("deep"),
        Path("deep/dead-letters"),
    }
    names = [p.name for p in files]
    assert all(name.endswith(".json") and not name.startswith(".") for name in names), names
    assert all(len(name.encode()) <= 255 for name in names)
    found = sorted(json.loads((tmp_path / p).read_text())["jobId"] for p in files)
    assert found == sorted(HOSTILE_JOB_IDS)


# -- 5. oversized bodies get 413 before being read whole ---------------------------------------


async def test_oversized_bodies_are_refused_before_being_read(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    limit = 1024 * 1024
    chunk = b" " * (64 * 1024)
    total_chunks = 1600  # 100 MiB
    server = build_server(tmp_path, max_body_size=limit)
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        yield b'{"params": {"pad": "'
        for _ in range(total_chunks):
            await trio.lowlevel.checkpoint()  # as a network source would
            pulled += 1
            yield chunk
        yield b'"}}'

    async with open_test_client(server) as client:
        response = await client.post("/run/greet", content=body())
        assert response.status_code == 413
        assert response.json() == {"error": "request body too large"}
        consumed = pulled * len(chunk)
        assert consumed < 2 * limit, f"{consumed} bytes pulled for a {limit}-byte limit"
        # A Content-Length over the limit is refused on sight.
        pulled = 0
        declared = await client.post(
            "/run/greet",
            content=body(),
            headers={"Content-Length": str(total_chunks * len(chunk) + 23)},
        )
        assert declared.status_code == 413
        assert pulled * len(chunk) < 2 * limit
        # The worker is fine afterwards.
        assert (await client.post("/run/greet")).status_code == 200


# -- 6. malformed or oversized headers do not hurt a real worker --------------------------------


@asynccontextmanager
async def live_worker(server: funtask.Server) -> AsyncIterator[tuple[str, int]]:
    """Serve ``server`` with hypercorn on a loopback port (real clock) for the block."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(server.serve, "127.0.0.1:0", shutdown_trigger=stop.wait)
        )
        host, _, port = binds[0].removeprefix("http://").rpartition(":")
        try:
            yield host, int(port)
        finally:
            stop.set()


def _complete(response: bytes) -> bool:
    """Whether ``response`` holds a whole HTTP/1.1 response (headers and Content-Length body)."""
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


async def raw_exchange(host: str, port: int, data: bytes, *, wait: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection; return the answer (cut short at EOF or ``wait``)."""
    stream = await trio.open_tcp_stream(host, port)
    received = b""
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError):  # it may hang up before reading all
            await stream.send_all(data)
        with trio.move_on_after(wait):
            while not _complete(received):
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                received += chunk
    return received


async def livez(host: str, port: int) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5) as client:
        return await client.get("/livez")


MALFORMED = {
    "100 KB header": b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    "many headers": b"GET /livez HTTP/1.1\r\nHost: x\r\n" + b"X-H: v\r\n" * 5000 + b"\r\n",
    "NUL and controls in a value": (
        b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00\x01\x7fb\r\n\r\n"
    ),
    "high bytes in a name": b"GET /livez HTTP/1.1\r\nHost: x\r\nX-\xff\xfe: v\r\n\r\n",
    "no colon": b"GET /livez HTTP/1.1\r\nHost: x\r\nnot a header line\r\n\r\n",
    "space before colon": b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Bad : v\r\n\r\n",
    "obsolete folding": b"GET /livez HTTP/1.1\r\nHost: x\r\nX-A: v\r\n  folded\r\n\r\n",
    "bare LF and CR": b"GET /livez HTTP/1.1\nHost: x\rX: y\n\n",
    "bogus request line": b"GARBAGE\r\n\r\n",
    "unknown version": b"GET /livez HTTP/9.9\r\nHost: x\r\n\r\n",
    "huge request target": b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "TLS hello": bytes.fromhex("16030100a5010000a10303") + os.urandom(64),
    "binary junk": bytes(range(256)) * 8,
    "bad Content-Length": b"POST /run/greet HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    "two Content-Lengths": (
        b"POST /run/greet HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\n{}"
    ),
    "non-UTF-8 path": b"GET /result/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    "percent-encoded NUL path": b"GET /result/%00 HTTP/1.1\r\nHost: x\r\n\r\n",
}


async def test_malformed_requests_do_not_hurt_a_real_worker(tmp_path: Path) -> None:
    server = build_server(tmp_path)
    answers: dict[str, bytes] = {}
    async with live_worker(server) as (host, port):
        for name, data in MALFORMED.items():
            answer = await raw_exchange(host, port, data)
            answers[name] = answer.split(b"\r\n", 1)[0]
            assert not answer.startswith(b"HTTP/1.1 5"), (name, answer[:200])
            alive = await livez(host, port)
            assert alive.status_code == 200, name
            assert alive.json() == {"status": "ok"}
        # And the worker still runs jobs.
        async with httpx.AsyncClient(
            base_url=f"http://{host}:{port}",
            headers={"Authorization": "Bearer test-token"},
            timeout=5,
        ) as client:
            assert (await client.post("/run/greet")).json()["success"] is True
    print(json.dumps({k: v.decode("latin-1") for k, v in answers.items()}, indent=1))


async def test_malformed_chunked_bodies_do_not_kill_a_real_worker(tmp_path: Path) -> None:
    """An invalid chunk header must not take the whole worker down (hypercorn 0.18 trio worker).

    The worker answers the request (here 401: no token) while h11 rejects the chunk;
    hypercorn's 400 then races its own ``send_eof`` and the ``BusyResourceError``
    escapes the connection handler, ending ``Server.serve``. A few attempts suffice.
    """
    server = build_server(tmp_path)
    bad = b"POST /run/greet HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n"
    async with live_worker(server) as (host, port):
        for attempt in range(60):
            answer = await raw_exchange(host, port, bad, wait=2)
            assert not answer.startswith(b"HTTP/1.1 5"), answer[:200]
            try:
                alive = await livez(host, port)
            except httpx.TransportError as exc:
                raise AssertionError(f"worker gone after {attempt + 1} bad request(s)") from exc
            assert alive.status_code == 200


async def test_keep_alive_survives_an_early_answer(tmp_path: Path) -> None:
    """A keep-alive client whose body arrives after an early answer is not left hanging.

    The worker may answer (401, 404, 413, ...) before the request body has
    arrived. Its next request on the same connection must then be answered,
    or the connection closed -- never left unanswered.
    """
    server = build_server(tmp_path, max_body_size=1024)
    head = b"Host: x\r\nContent-Type: application/json\r\n"
    early_answers = {
        "401 wrong token": (b"POST /run/greet HTTP/1.1\r\n" + head, b"Bearer wrong", b"{}"),
        "404 unknown task": (b"POST /run/nope HTTP/1.1\r\n" + head, b"Bearer test-token", b"{}"),
        "200 /stop with a body": (
            b"POST /stop/greet HTTP/1.1\r\n" + head,
            b"Bearer test-token",
            b"{}",
        ),
    }
    outcomes: dict[str, str] = {}
    async with live_worker(server) as (host, port):
        for name, (start, auth, body) in early_answers.items():
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                headers = start + b"Authorization: " + auth + b"\r\n"
                headers += b"Content-Length: %d\r\n\r\n" % len(body)
                await stream.send_all(headers)
                await trio.sleep(0.05)  # the answer goes out before the body arrives
                buffer = b""
                with trio.move_on_after(2):
                    while b"\r\n\r\n" not in buffer:
                        buffer += await stream.receive_some(65536)
                assert buffer.startswith(b"HTTP/1.1 "), (name, buffer)
                outcome = "hung"
                try:
                    await stream.send_all(body)
                    await stream.send_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
                    with trio.move_on_after(2):
                        while b'{"status":"ok"}' not in buffer:
                            chunk = await stream.receive_some(65536)
                            if not chunk:
                                outcome = "closed"
                                break
                            buffer += chunk
                        else:
                            outcome = "answered"
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    outcome = "closed"
                outcomes[name] = outcome
    assert all(outcome != "hung" for outcome in outcomes.values()), outcomes


# -- 7. an /events flood is bounded ---------------------------------------------------------------


async def test_events_flood_is_bounded(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = build_server(tmp_path, max_event_clients=3)
    async with open_test_client(server) as client:
        runtime = server._runtime
        assert runtime is not None
        async with AsyncExitStack() as streams:
            opened = [await streams.enter_async_context(client.stream("GET", "/events"))]
            opened.append(await streams.enter_async_context(client.stream("GET", "/events")))
            async with client.stream("GET", "/events") as third:
                assert [s.status_code for s in (*opened, third)] == [200, 200, 200]
                await wait_until(lambda: runtime.events.clients == 3)
                for _ in range(5):
                    refused = await client.get("/events")
                    assert refused.status_code == 503
                    assert refused.json() == {"error": "too many event streams"}
                token_refused = await client.get(
                    "/events", params={"token": "test-token"}, headers={"Authorization": ""}
                )
                assert token_refused.status_code == 503
            await wait_until(lambda: runtime.events.clients == 2)
            async with client.stream("GET", "/events") as again:
                assert again.status_code == 200
                await wait_until(lambda: runtime.events.clients == 3)
                assert (await client.get("/events")).status_code == 503
            await wait_until(lambda: runtime.events.clients == 2)
        await wait_until(lambda: runtime.events.clients == 0)
        # Back to normal: the full quota is available again.
        async with AsyncExitStack() as streams:
            for _ in range(3):
                stream = await streams.enter_async_context(client.stream("GET", "/events"))
                assert stream.status_code == 200
        await wait_until(lambda: runtime.events.clients == 0)


async def test_events_burst_is_bounded(autojump_clock: MockClock, tmp_path: Path) -> None:
    """Streams opened all at once count against ``max_event_clients`` too."""
    server = build_server(tmp_path, max_event_clients=3)
    statuses: list[int] = []
    async with open_test_client(server) as client, AsyncExitStack() as streams:

        async def open_one() -> None:
            response = await streams.enter_async_context(client.stream("GET", "/events"))
            statuses.append(response.status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(open_one)
        await trio.sleep(1)
        runtime = server._runtime
        assert runtime is not None
        open_streams = runtime.events.clients
    assert sorted(statuses) == [200] * 3 + [503] * 7, statuses
    assert open_streams == 3
