"""Change notification: one counter that progress, steps and job events bump.

``bump()`` never awaits, allocates per listener or does I/O, and is safe to
call from worker threads. Waiters see "the counter moved since my last
look", so a burst of bumps collapses into one wake-up per waiter.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import trio

__all__ = ["ChangeNotifier"]


def _noop() -> None:
    pass


class ChangeNotifier:
    """A version counter with a Trio event that wakes everyone waiting for a change."""

    def __init__(self) -> None:
        self.version = 0
        self.milestones = 0  # job started, finished or released its slot: show at once
        self.on_milestone: Callable[[], None] = _noop  # called on every milestone
        self._event = trio.Event()
        self._waiting = False
        self._wake_scheduled = False
        self._token = trio.lowlevel.current_trio_token()
        self._trio_thread = threading.get_ident()

    def bump(self) -> None:
        """Record a change and wake the waiters (thread-safe, never blocks)."""
        self.version += 1
        if not self._waiting or self._wake_scheduled:
            return
        if threading.get_ident() == self._trio_thread:
            self._wake()
        else:
            self._wake_scheduled = True
            with contextlib.suppress(trio.RunFinishedError):  # the server is gone
                self._token.run_sync_soon(self._wake)

    def bump_milestone(self) -> None:
        """Record a change that watchers should see without coalescing (Trio thread only)."""
        self.milestones += 1
        self.on_milestone()
        self.bump()

    def _wake(self) -> None:
        self._wake_scheduled = False
        if self._waiting:
            self._waiting = False
            self._event.set()
            self._event = trio.Event()

    async def wait_for_change(self, seen: int) -> int:
        """Wait until the version differs from ``seen``; return the new version."""
        while self.version == seen:
            self._waiting = True
            await self._event.wait()
        return self.version
