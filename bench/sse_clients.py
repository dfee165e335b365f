"""Many ``/events`` subscribers in one process, on raw Trio sockets (started by the harness).

    python -m bench.sse_clients --port P --token T --clients N [--path /events]
                                [--watch JOBID] [--timeout S]

Connects ``N`` streaming clients (``GET /events`` with the bearer token),
waits for each one's first frame and prints ``ready <connected> <failed>``.
Each client then reads and discards what arrives (an idle reader: one
``receive_some`` per wake-up, a byte count and a frame count, nothing parsed).

With ``--watch JOBID`` every client also looks for the frame showing that
job finished (``"lastJob":{"jobId":"JOBID"``) and records
``time.monotonic()`` (CLOCK_MONOTONIC, shared with the server process) when
it arrives; once all have it, or ``--timeout`` seconds after the first one
did, it prints one JSON line with the receive times and exits. Without
``--watch`` it reads until stdin closes, then prints the same JSON line. A
``count`` line on stdin is answered at once with the frames and bytes received
so far (JSON), so the harness can count the frames of a time window.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field

import trio

__all__ = ["main"]

CONNECT_BATCH = 50  # connections opened at once (hypercorn's listen backlog is 100)


@dataclass
class State:
    """What the clients saw, for the final report."""

    clients: int
    marker: bytes
    ready: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    bytes: int = 0
    frames: int = 0
    seen: list[float] = field(default_factory=list)
    all_ready: trio.Event = field(default_factory=trio.Event)
    all_seen: trio.Event = field(default_factory=trio.Event)
    first_seen: trio.Event = field(default_factory=trio.Event)


async def client(
    state: State,
    port: int,
    request: bytes,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One subscriber: connect, wait for the first frame, then read until closed."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(request)
        buffer = b""
        while b"\r\n\r\n" not in buffer or b"data: " not in buffer:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("closed before the first frame")
            buffer += chunk
        status = buffer.split(b"\r\n", 1)[0]
        if b" 200 " not in status + b" ":
            raise ConnectionError(status.decode("latin-1"))
    except (OSError, ConnectionError, trio.BrokenResourceError) as exc:
        state.failed += 1
        if len(state.errors) < 5:
            state.errors.append(str(exc))
        task_status.started()
        _check_ready(state)
        return
    state.ready += 1
    task_status.started()
    _check_ready(state)
    marker = state.marker
    keep = len(marker)
    tail = b""
    seen = not marker
    async with stream:
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return
            if not chunk:
                return
            state.bytes += len(chunk)
            state.frames += chunk.count(b"data: ")
            if not seen:
                if marker in tail + chunk:
                    state.seen.append(time.monotonic())
                    seen = True
                    state.first_seen.set()
                    if len(state.seen) == state.ready:
                        state.all_seen.set()
                else:
                    tail = (tail + chunk)[-keep:]


def _check_ready(state: State) -> None:
    if state.ready + state.failed >= state.clients:
        state.all_ready.set()


async def serve(args: argparse.Namespace) -> int:
    marker = f'"lastJob":{{"jobId":"{args.watch}"'.encode() if args.watch else b""
    state = State(args.clients, marker)
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        f"Authorization: Bearer {args.token}\r\n\r\n"
    ).encode()
    async with trio.open_nursery() as nursery:
        limiter = trio.Semaphore(CONNECT_BATCH)

        async def one() -> None:
            async with limiter:
                await nursery.start(client, state, args.port, request)

        for _ in range(args.clients):
            nursery.start_soon(one)
        if args.clients:
            await state.all_ready.wait()
        print(f"ready {state.ready} {state.failed} {json.dumps(state.errors)}", flush=True)
        async with trio.open_nursery() as control:
            control.start_soon(_commands, state, control.cancel_scope, not args.watch)
            if args.watch:
                with trio.move_on_after(300):  # the watched job has not finished: give up
                    await state.first_seen.wait()
                with trio.move_on_after(args.timeout):
                    await state.all_seen.wait()
                control.cancel_scope.cancel()
        report = {
            "clients": state.clients,
            "ready": state.ready,
            "failed": state.failed,
            "errors": state.errors,
            "bytes": state.bytes,
            "frames": state.frames,
            "seen": sorted(state.seen),
            "cpu_seconds": time.process_time(),
        }
        print(json.dumps(report), flush=True)
        nursery.cancel_scope.cancel()
    return 0


async def _commands(state: State, scope: trio.CancelScope, end_on_eof: bool) -> None:
    """Answer ``count`` lines on stdin with the frames and bytes so far; EOF may end the run."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    async with stdin:
        while True:
            chunk = await stdin.receive_some(1024)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip() == b"count":
                    counts = {"t": time.monotonic(), "frames": state.frames, "bytes": state.bytes}
                    print(json.dumps(counts), flush=True)
    if end_on_eof:
        scope.cancel()


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--path", default="/events", help="the stream's path (and query)")
    parser.add_argument("--watch", default="", help="jobId whose end every client waits for")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    raise SystemExit(trio.run(serve, args))


if __name__ == "__main__":
    main()
