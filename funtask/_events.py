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
# Progress frames to all clients together, per second. A frame costs 150-300 µs of
# the server's one thread, most of it in quart-trio and hypercorn (bench/RESULTS.md),
# so 600 a second keeps a progress fan-out to ~15 % of the thread: many clients get
# fewer frames each. A job starting or ending is sent to everyone at once.
MAX_PROGRESS_FRAMES_PER_SECOND: Final = 600
KEEPALIVE_FRAME: Final = b": keepalive\n\n"


class EventHub:
    """Counts the open streams, keeps the shared frame clock, and closes them all at shutdown."""

    def __init__(self, runtime: Runtime, *, max_clients: int) -> None:
        self.runtime = runtime
        self.max_clients = max_clients
        self.clients = 0
        self.closed = False
        self._waits: set[trio.CancelScope] = set()
        self._ticks: dict[int, trio.Event] = {}  # tick number -> rung at that tick

    def full(self) -> bool:
        """Whether another stream would exceed ``max_event_clients``."""
        return self.clients >= self.max_clients

    def close(self) -> None:
        """End every stream now and refuse new ones (shutdown)."""
        self.closed = True
        for scope in self._waits:
            scope.cancel()
        self.ring_all()

    def ring_all(self) -> None:
        """Wake every stream waiting for a tick now (a job started or ended, or shutdown)."""
        if not self._ticks:
            return  # the common case: called at every job's start and end
        ticks, self._ticks = self._ticks, {}
        for event in ticks.values():
            event.set()

    def frame(self) -> bytes:
        """The current health snapshot as one SSE frame."""
        return b"data: " + self.runtime.health_body() + b"\n\n"

    def open_stream(self) -> EventStream:
        """Reserve a client slot now and return the stream that releases it when closed."""
        self.clients += 1
        self.runtime.observer.stream_opened()
        return EventStream(self)

    def _tick(self, number: int) -> trio.Event:
        """The event rung at tick ``number`` (at ``number * MIN_FRAME_INTERVAL`` seconds).

        Every stream due at that tick waits on the same event: one timer for
        all of them, and waking them is a plain reschedule, not a cancellation.
        """
        event = self._ticks.get(number)
        if event is None:
            event = self._ticks[number] = trio.Event()
            self.runtime.nursery.start_soon(self._ring, number, event)
        return event

    async def _ring(self, number: int, event: trio.Event) -> None:
        try:
            await trio.sleep_until(number * MIN_FRAME_INTERVAL)
        finally:
            if self._ticks.get(number) is event:
                del self._ticks[number]
            event.set()

    async def _changed(self, seen: int) -> bool:
        """Wait for the change counter to move from ``seen``; False at keepalive time or close."""
        scope = trio.CancelScope(deadline=trio.current_time() + KEEPALIVE_INTERVAL)
        self._waits.add(scope)
        try:
            with scope:
                await self.runtime.notifier.wait_for_change(seen)
                return True
        finally:
            self._waits.discard(scope)
        return False

    async def _turn(self, last_frame: float, milestones: int) -> None:
        """Wait until this stream may send its next frame (coalescing)."""
        interval = self.clients / MAX_PROGRESS_FRAMES_PER_SECOND
        if interval > MIN_FRAME_INTERVAL and self.runtime.notifier.milestones == milestones:
            # Many clients, only progress so far: wait for a tick of the clock all
            # streams share (so they share one snapshot), or until a job starts or
            # ends (ring_all).
            await self._tick(math.ceil((last_frame + interval) / MIN_FRAME_INTERVAL)).wait()
        if trio.current_time() < last_frame + MIN_FRAME_INTERVAL:
            await trio.sleep_until(last_frame + MIN_FRAME_INTERVAL)

    async def _frames(self) -> AsyncGenerator[bytes, None]:
        """Yield SSE frames until the client goes away or the server closes the hub."""
        notifier = self.runtime.notifier
        seen = notifier.version
        milestones = notifier.milestones
        yield self.frame()
        last_frame = trio.current_time()
        while not self.closed:
            if notifier.version == seen and not await self._changed(seen):
                if self.closed:
                    return
                yield KEEPALIVE_FRAME
                continue
            await self._turn(last_frame, milestones)
            if self.closed:
                return
            seen = notifier.version
            milestones = notifier.milestones
            yield self.frame()
            last_frame = trio.current_time()


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
            self._hub.runtime.observer.stream_closed()

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
