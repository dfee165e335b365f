"""The ``/events`` stream: a health snapshot per change, coalesced per client.

Each stream waits for "the change counter moved since my last frame", then
sends one fresh snapshot; a burst of progress calls collapses into one frame,
at most one per client every 50 ms. Snapshots are serialised once per change
(``Runtime.health_body`` caches them), however many clients listen.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Final

import trio

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["KEEPALIVE_INTERVAL", "MIN_FRAME_INTERVAL", "EventHub"]

KEEPALIVE_INTERVAL: Final = 30.0  # seconds between keepalive comments
MIN_FRAME_INTERVAL: Final = 0.05  # seconds; at most one frame per client per 50 ms
# Progress frames to all clients together, per second: each frame costs ~100 µs of
# the server's one thread in hypercorn alone, so many clients get fewer frames each.
MAX_PROGRESS_FRAMES_PER_SECOND: Final = 1000
KEEPALIVE_FRAME: Final = b": keepalive\n\n"


class EventHub:
    """Counts the open streams and closes them all at shutdown."""

    def __init__(self, runtime: Runtime, *, max_clients: int) -> None:
        self.runtime = runtime
        self.max_clients = max_clients
        self.clients = 0
        self.closed = False
        self._waits: set[trio.CancelScope] = set()

    def full(self) -> bool:
        """Whether another stream would exceed ``max_event_clients``."""
        return self.clients >= self.max_clients

    def close(self) -> None:
        """End every stream now and refuse new ones (shutdown)."""
        self.closed = True
        for scope in self._waits:
            scope.cancel()

    def frame(self) -> bytes:
        """The current health snapshot as one SSE frame."""
        return b"data: " + self.runtime.health_body() + b"\n\n"

    def open_stream(self) -> EventStream:
        """Reserve a client slot now and return the stream that releases it when closed."""
        self.clients += 1
        return EventStream(self)

    async def _frames(self) -> AsyncGenerator[bytes, None]:
        """Yield SSE frames until the client goes away or the server closes the hub."""
        notifier = self.runtime.notifier
        seen = notifier.version
        milestones = notifier.milestones
        yield self.frame()
        last_frame = trio.current_time()
        while not self.closed:
            changed = False
            scope = trio.CancelScope(deadline=trio.current_time() + KEEPALIVE_INTERVAL)
            self._waits.add(scope)
            try:
                with scope:
                    seen = await notifier.wait_for_change(seen)
                    changed = True
                    # Coalesce: wait out the frame interval, then send the latest state.
                    await trio.sleep_until(last_frame + MIN_FRAME_INTERVAL)
                    interval = self.clients / MAX_PROGRESS_FRAMES_PER_SECOND
                    if interval > MIN_FRAME_INTERVAL and notifier.milestones == milestones:
                        # Many clients, only progress so far: wait longer, until a tick of
                        # a clock all streams share (so they share one snapshot), or until
                        # a job starts or ends.
                        ticks = math.ceil((last_frame + interval) / MIN_FRAME_INTERVAL)
                        with trio.move_on_at(ticks * MIN_FRAME_INTERVAL):
                            await notifier.wait_for_milestone(milestones)
            finally:
                self._waits.discard(scope)
            if self.closed:
                return
            if changed:
                seen = notifier.version
                milestones = notifier.milestones
                yield self.frame()
                last_frame = trio.current_time()
            else:
                yield KEEPALIVE_FRAME


class EventStream:
    """One client's frames; holds its slot in the hub until closed (or collected unstarted)."""

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub
        self._frames = hub._frames()
        self._released = False

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._hub.clients -= 1

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._frames.__anext__()
        except BaseException:
            self._release()
            raise

    async def aclose(self) -> None:
        """Stop the stream and free its slot."""
        self._release()
        await self._frames.aclose()

    def __del__(self) -> None:
        # A response that was never sent is never closed: free the slot anyway.
        self._release()
