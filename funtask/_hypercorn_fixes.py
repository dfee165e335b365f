"""Two changes to hypercorn's trio ``TCPServer``: a race fixed, an idle timer made cheap.

1. Closing a connection (``send_eof``) does not take the send lock, so a
   close racing with hypercorn's own error answer to a malformed request
   raises ``trio.BusyResourceError`` in ``protocol_send``, which escapes
   ``serve_listeners`` and ends the server. Any client could trigger it
   without a token. The subclass below takes the lock to close (bounded, so
   a stuck peer cannot hold the close up) and treats a busy stream like a
   broken one.
2. The keep-alive idle timer is a task that hypercorn cancels when a request
   arrives and starts afresh (``nursery.start``) when the answer is done:
   two task switches and a cancellation per request, a large share of a
   small request's cost. :class:`IdleTimer` keeps one watcher per connection
   and moves its deadline instead, with the same behaviour: an idle
   connection is closed after ``keep_alive_timeout`` seconds, or at once
   when the worker terminates; a busy one is left alone until it is idle.

It is installed when a funtask server starts serving, never at import time.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Final

import trio

__all__ = ["IdleTimer", "install_hypercorn_fixes"]

CLOSE_LOCK_TIMEOUT: Final = 1.0  # seconds to wait for an in-flight send before closing


class IdleTimer:
    """A connection's keep-alive timer with hypercorn's ``TrioSingleTask`` interface.

    ``restart`` means "the connection is idle from now", ``stop`` "it is
    busy". One watcher task per connection sleeps until the idle deadline
    (or the worker's termination) and then closes the connection.
    """

    def __init__(self, server: Any) -> None:
        self._server = server
        self._scope: trio.CancelScope | None = None  # the running watcher's
        self._busy = False
        self._closed = False

    def _idle_deadline(self) -> float:
        timeout: float = self._server.config.keep_alive_timeout
        return trio.current_time() + timeout

    async def restart(self, task_group: Any, action: Any) -> None:
        """The connection is idle: close it after the keep-alive timeout."""
        self._busy = False
        if self._closed:
            return
        if self._scope is None:
            await task_group._nursery.start(self._watch)
        else:
            self._scope.deadline = self._idle_deadline()

    async def stop(self) -> None:
        """The connection is busy with a request: no timeout until it is idle again."""
        self._busy = True
        if self._scope is not None:
            self._scope.deadline = math.inf

    def close(self) -> None:
        """The connection is done: end the watcher, so the connection's tasks can finish."""
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()

    async def _watch(self, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            with trio.CancelScope(deadline=self._idle_deadline()) as self._scope:
                task_status.started()
                await self._server.context.terminated.wait()
        finally:
            self._scope = None
        if self._closed:
            return
        if self._busy:
            # The worker is terminating during a request: hypercorn closes the
            # connection itself once the request is answered.
            return
        # Idle for too long, or idle when the worker terminates.
        with trio.CancelScope(shield=True):
            await self._server._initiate_server_close()


def _fixed_server_class(base: Any) -> Any:
    class SafeTCPServer(base):  # type: ignore[misc]
        """hypercorn's TCPServer with a close that cannot race a send and a cheap idle timer."""

        __funtask_fixed__ = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.idle_task = IdleTimer(self)

        async def _read_data(self) -> None:
            # Reading ends when the connection does; a watcher left waiting (say,
            # for a request that was answered by closing) would keep it alive.
            try:
                await super()._read_data()
            finally:
                self.idle_task.close()

        async def protocol_send(self, event: Any) -> None:
            try:
                await super().protocol_send(event)
            except trio.BusyResourceError:
                await self._close()

        async def _close(self) -> None:
            with trio.move_on_after(CLOSE_LOCK_TIMEOUT):
                async with self.send_lock:
                    with contextlib.suppress(
                        trio.BrokenResourceError,
                        trio.BusyResourceError,
                        trio.ClosedResourceError,
                        AttributeError,  # an SSL stream has no send_eof
                    ):
                        await self.stream.send_eof()
            await self.stream.aclose()

    return SafeTCPServer


def install_hypercorn_fixes() -> None:
    """Make hypercorn's trio worker use the fixed TCPServer (idempotent)."""
    try:
        from hypercorn.trio import run as hypercorn_run
    except ImportError:  # pragma: no cover - hypercorn is a dependency
        return
    current: Any = getattr(hypercorn_run, "TCPServer", None)
    if current is None or getattr(current, "__funtask_fixed__", False):
        return
    setattr(hypercorn_run, "TCPServer", _fixed_server_class(current))  # noqa: B010
