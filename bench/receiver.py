"""A small callback receiver on raw Trio sockets (started by the harness as its own process).

    python -m bench.receiver --port P

- ``POST /hook...``: answers ``200`` at once (``Content-Length: 0``, keep-alive)
  and notes the ``jobId`` of the JSON body with ``time.monotonic()``
  (CLOCK_MONOTONIC, comparable across processes on one machine).
- ``GET /notify``: a stream of ``<jobId> <monotonic>\\n`` lines, one per
  callback received from then on, so a driver knows when a job was delivered.

It prints ``listening <port>`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import re
import time

import trio

__all__ = ["main"]

_JOB_ID = re.compile(rb'"jobId":"((?:[^"\\]|\\.)*)"')
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_STREAM = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"


class Receiver:
    """The callbacks received, and the notify streams to tell about them."""

    def __init__(self) -> None:
        self.listeners: list[trio.MemorySendChannel[bytes]] = []
        self.count = 0

    def received(self, body: bytes) -> None:
        match = _JOB_ID.search(body)
        job_id = match.group(1) if match else b"?"
        self.count += 1
        line = job_id + b" %.6f\n" % time.monotonic()
        for channel in self.listeners:
            channel.send_nowait(line)

    async def handle(self, stream: trio.SocketStream) -> None:
        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = await _receive(stream)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                request_line, *header_lines = head.split(b"\r\n")
                if request_line.startswith(b"GET /notify"):
                    await self.notify(stream)
                    return
                length = 0
                for line in header_lines:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                while len(buffer) < length:
                    chunk = await _receive(stream)
                    if not chunk:
                        return
                    buffer += chunk
                body, buffer = buffer[:length], buffer[length:]
                self.received(body)
                try:
                    await stream.send_all(_OK)
                except trio.BrokenResourceError:
                    return

    async def notify(self, stream: trio.SocketStream) -> None:
        send, receive = trio.open_memory_channel[bytes](float("inf"))
        self.listeners.append(send)
        try:
            await stream.send_all(_STREAM)
            async for line in receive:
                batch = [line]
                while True:
                    try:
                        batch.append(receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                await stream.send_all(b"".join(batch))
        except trio.BrokenResourceError:
            pass
        finally:
            self.listeners.remove(send)


async def _receive(stream: trio.SocketStream) -> bytes:
    try:
        return await stream.receive_some(65536)
    except trio.BrokenResourceError:
        return b""


async def serve(port: int) -> None:
    receiver = Receiver()
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1", backlog=512)
    print(f"listening {listeners[0].socket.getsockname()[1]}", flush=True)
    await trio.serve_listeners(receiver.handle, listeners)


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    trio.run(serve, args.port)


if __name__ == "__main__":
    main()
