"""Two changes to hypercorn's trio ``TCPServer``: a race fixed, an idle timer made cheap.

1. Closing a connection (``send_eof``) does not take the send lock, so a
   close racing with a send raises ``trio.BusyResourceError``: after
   hypercorn's own error answer to a malformed request it escapes
   ``serve_listeners`` and ends the server (any client could trigger it
   without a token); after the last request a keep-alive connection may
   carry, it is logged as an application error. The subclass below takes the
   lock to close (bounded, so a stuck peer cannot hold the close up) and
   treats a busy stream like a broken one.
2. The keep-alive idle timer is a task that hypercorn cancels when a request
   arrives and starts afresh when the answer is done: two task switches and a
   cancellation per request, a large share of a small request's cost.
   :class:`IdleTimer` keeps one watcher per connection and moves its
   deadline instead, with the same behaviour: an idle connection is closed
   after ``keep_alive_timeout`` seconds, or at once when the worker
   terminates; a busy one is left alone until it is idle.

Both reach into hypercorn's internals, so they are applied only to the
releases in :data:`VERIFIED_HYPERCORN_VERSIONS`, and only if the internals
still have the shape they rely on; otherwise hypercorn is left as it is and
one warning says so. ``docs/upstream.md`` is the report of each problem for
hypercorn, and what upstream change lets a patch go. The fixes are installed
when a funtask server starts serving, never at import time.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from importlib import metadata
from types import ModuleType
from typing import Any, Final

import trio

__all__ = [
    "VERIFIED_HYPERCORN_VERSIONS",
    "IdleTimer",
    "hypercorn_version",
    "install_hypercorn_fixes",
    "unsupported_reason",
]

logger: Final = logging.getLogger("funtask.server")

# The hypercorn releases whose trio worker these changes were written against and
# tested on (tests/test_hypercorn_fixes.py, tests/test_security.py). Its trio worker
# is the same code in all of them. Add a release only after those tests pass on it.
VERIFIED_HYPERCORN_VERSIONS: Final = frozenset({"0.17.0", "0.17.1", "0.17.2", "0.17.3", "0.18.0"})

CLOSE_LOCK_TIMEOUT: Final = 1.0  # seconds to wait for an in-flight send before closing

_SERVER_COROUTINES: Final = (
    "run",
    "protocol_send",
    "_read_data",
    "_close",
    "_initiate_server_close",
)
_SERVER_ATTRIBUTES: Final = ("config", "context", "idle_task", "send_lock", "stream")

_warned = False  # the process has logged why hypercorn is left unpatched


class IdleTimer:
    """A connection's keep-alive timer with hypercorn's ``TrioSingleTask`` interface.

    ``restart`` means "the connection is idle from now", ``stop`` "it is
    busy". One watcher task per connection sleeps until the idle deadline
    (or the worker's termination) and then closes the connection.
    """

    def __init__(self, server: Any) -> None:
        self._server = server
        self._scope: trio.CancelScope | None = None  # the watcher's, while there is one
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
            # The scope exists before the watcher runs, so a stop() or close()
            # in between is not lost.
            self._scope = trio.CancelScope(deadline=self._idle_deadline())
            task_group.spawn(self._watch, self._scope)
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

    async def _watch(self, scope: trio.CancelScope) -> None:
        try:
            with scope:
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


def hypercorn_version() -> str | None:
    """The installed hypercorn's version, or None if its metadata cannot be found."""
    try:
        return metadata.version("hypercorn")
    except metadata.PackageNotFoundError:
        return None


def _shape_problem(run_module: ModuleType) -> str | None:
    """What in hypercorn's trio worker differs from what the fixes rely on, if anything."""
    server_class = getattr(run_module, "TCPServer", None)
    if not isinstance(server_class, type):
        return "hypercorn.trio.run has no TCPServer class"
    for name in _SERVER_COROUTINES:
        if not inspect.iscoroutinefunction(getattr(server_class, name, None)):
            return f"TCPServer.{name} is not a coroutine method"
    try:
        from hypercorn.config import Config
        from hypercorn.trio.task_group import TaskGroup

        context = run_module.WorkerContext(None)
        # __init__ only stores its arguments: a probe shows the instance attributes.
        probe = server_class(app=None, config=Config(), context=context, state={}, stream=None)
    except Exception as exc:
        return f"TCPServer(app, config, context, state, stream) cannot be built: {exc!r}"
    missing = [name for name in _SERVER_ATTRIBUTES if not hasattr(probe, name)]
    if missing:
        return f"TCPServer instances have no {', '.join(missing)}"
    for name in ("restart", "stop"):
        if not inspect.iscoroutinefunction(getattr(probe.idle_task, name, None)):
            return f"TCPServer.idle_task.{name} is not a coroutine method"
    if not callable(getattr(TaskGroup, "spawn", None)):
        return "hypercorn.trio.task_group.TaskGroup has no spawn method"
    if not isinstance(getattr(probe.config, "keep_alive_timeout", None), (int, float)):
        return "Config.keep_alive_timeout is not a number"
    if not inspect.iscoroutinefunction(getattr(context.terminated, "wait", None)):
        return "WorkerContext.terminated has no wait coroutine"
    return None


def unsupported_reason(run_module: ModuleType) -> str | None:
    """Why the fixes must not be applied to this hypercorn, or None if they may."""
    version = hypercorn_version()
    if version not in VERIFIED_HYPERCORN_VERSIONS:
        verified = ", ".join(sorted(VERIFIED_HYPERCORN_VERSIONS))
        shown = "of unknown version" if version is None else version
        return f"hypercorn {shown} is not a release they were verified on ({verified})"
    problem = _shape_problem(run_module)
    if problem is not None:
        return f"hypercorn {version} is not shaped as expected: {problem}"
    return None


def install_hypercorn_fixes() -> bool:
    """Make hypercorn's trio worker use the fixed TCPServer, if verified for this hypercorn.

    Idempotent. On an unverified hypercorn nothing is changed and one
    warning per process (``funtask.server``) says why; serving works as
    hypercorn itself does.

    Returns:
        Whether hypercorn's trio worker now uses the fixed TCPServer.
    """
    global _warned
    from hypercorn.trio import run as hypercorn_run

    current: Any = getattr(hypercorn_run, "TCPServer", None)
    if getattr(current, "__funtask_fixed__", False):
        return True
    reason = unsupported_reason(hypercorn_run)
    if reason is not None:
        if not _warned:
            _warned = True
            logger.warning(
                "serving without funtask's fixes to hypercorn's trio worker: %s. Unfixed, "
                "a malformed request can stop the server (docs/upstream.md in funtask's "
                "repository); install a verified hypercorn, e.g. pip install 'hypercorn==%s'",
                reason,
                max(VERIFIED_HYPERCORN_VERSIONS, key=_version_key),
            )
        return False
    setattr(hypercorn_run, "TCPServer", _fixed_server_class(current))  # noqa: B010
    return True


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))
