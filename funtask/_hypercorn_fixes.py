"""A workaround for a hypercorn trio-worker race that can stop the whole server.

In hypercorn's trio ``TCPServer``, closing a connection (``send_eof``) does
not take the send lock, so a close racing with hypercorn's own error answer
to a malformed request raises ``trio.BusyResourceError`` in ``protocol_send``,
which escapes ``serve_listeners`` and ends the server. Any client could
trigger it without a token. The subclass below takes the lock to close
(bounded, so a stuck peer cannot hold the close up) and treats a busy
stream like a broken one. It is installed when a funtask server starts
serving, never at import time.
"""

from __future__ import annotations

import contextlib
from typing import Any, Final

import trio

__all__ = ["install_hypercorn_fixes"]

CLOSE_LOCK_TIMEOUT: Final = 1.0  # seconds to wait for an in-flight send before closing


def _fixed_server_class(base: Any) -> Any:
    class SafeTCPServer(base):  # type: ignore[misc]
        """hypercorn's TCPServer with a close that cannot race a send."""

        __funtask_fixed__ = True

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
