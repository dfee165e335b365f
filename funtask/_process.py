"""What funtask does only where it owns the process: ``Server.run`` (and so the CLI).

- Logging: a script that configured none still says where it listens and how
  it shut down (a plain stderr handler on the ``funtask`` logger).
- Start-up failures (a bad configuration, an address that cannot be bound)
  are one line on stderr and exit status 2.
- The process ends after the drain even when a task shields itself from
  cancellation: :class:`ExitWatchdog`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, NoReturn

import trio

from ._errors import ConfigError
from ._serving import ListenError, serve

if TYPE_CHECKING:
    from ._runtime import Runtime
    from ._server import Server

__all__ = ["EXIT_GRACE", "ExitWatchdog", "default_logging", "run"]

logger: Final = logging.getLogger("funtask.server")

# Seconds from the end of the drain until a process held up by tasks that ignore
# cancellation is ended: time for the last answers to go out (the HTTP server's
# final grace is 1 s) and for cancelled tasks that are merely slow to return.
EXIT_GRACE: Final = 2.0
LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def default_logging() -> Iterator[None]:
    """Send ``funtask`` records at INFO to stderr while serving, if nothing else would.

    Only when neither the ``funtask`` logger nor the root logger has a
    handler: an application's own logging setup is never touched. A level
    already set on the ``funtask`` logger is kept.
    """
    package = logging.getLogger("funtask")
    if package.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    level = package.level
    package.addHandler(handler)
    if level == logging.NOTSET:
        package.setLevel(logging.INFO)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(level)


class ExitWatchdog:
    """Ends the process when tasks that ignore cancellation outlive the drain.

    Trio cannot abandon a task that shields itself from cancellation:
    ``trio.run`` returns only once it does, and the interpreter cannot exit
    while the main thread is inside ``trio.run``. So once the drain has
    settled every job's result (stored; delivered once or dead-lettered),
    :meth:`arm` starts a daemon thread that waits ``grace`` seconds for
    :meth:`disarm` (called when ``trio.run`` is over). If it is not called and
    jobs are still running, the thread logs one error line naming them,
    flushes the logging handlers and the standard streams, and ends the
    process with ``os._exit(0)``, as a normal exit would have. A thread
    rather than a Trio task, so that it fires even when a task blocks the
    event loop. Nothing is lost by skipping the rest of the shutdown: results
    were settled before it was armed, and dead letters are fsynced.
    """

    def __init__(
        self, grace: float = EXIT_GRACE, *, exit_process: Callable[[int], object] = os._exit
    ) -> None:
        self.grace = grace
        self._exit = exit_process
        self._over = threading.Event()
        self.thread: threading.Thread | None = None

    def arm(self, runtime: Runtime) -> None:
        """Start watching: the drain of ``runtime`` is over (call from the Trio thread)."""
        if self.thread is not None:
            return
        self.thread = threading.Thread(
            target=self._watch, args=(runtime,), name="funtask exit watchdog", daemon=True
        )
        self.thread.start()

    def disarm(self) -> None:
        """The server has stopped by itself: nothing to do."""
        self._over.set()

    def _watch(self, runtime: Runtime) -> None:
        if self._over.wait(self.grace):
            return
        stuck = runtime.stuck_jobs()
        if not stuck or self._over.is_set():
            return  # e.g. the application's lifespan is still closing: its own business
        logger.error(
            "server %r exiting with %d job(s) still running: %s (they ignored cancellation; "
            "their worker_shutdown results are settled)",
            runtime.name,
            len(stuck),
            ", ".join(f"{job.task.name} {job.job_id!r}" for job in stuck),
        )
        _flush_output()
        self._exit(0)


def _flush_output() -> None:
    """Flush the handlers our records go through and the standard streams."""
    streams: list[Any] = []
    each: logging.Logger | None = logger
    while each is not None:
        streams.extend(each.handlers)
        each = each.parent if each.propagate else None
    streams += [sys.stdout, sys.stderr]
    for stream in streams:
        # A broken or closed stream must not keep the process alive.
        with contextlib.suppress(Exception):
            stream.flush()


def _fail(message: str) -> NoReturn:
    """Print one ``funtask: ...`` line on stderr and exit with status 2."""
    print(f"funtask: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def run(server: Server, bind: str | Iterable[str]) -> None:
    """Serve until SIGINT/SIGTERM, drain, and return (blocking).

    A bad configuration or an address that cannot be bound is one line on
    stderr and ``SystemExit(2)``. Tasks that ignore cancellation do not keep
    the process alive after the drain (see :class:`ExitWatchdog`).
    """
    try:
        server.validate()
    except ConfigError as exc:
        _fail(str(exc))
    watchdog = ExitWatchdog()

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

            async def wait_for_signal() -> None:
                async for signum in signals:
                    logger.info("received %s, shutting down", signal.Signals(signum).name)
                    return

            await serve(
                server,
                bind,
                shutdown_trigger=wait_for_signal,
                task_status=trio.TASK_STATUS_IGNORED,
                on_drained=watchdog.arm,
            )

    with default_logging():
        try:
            trio.run(main)
        except ListenError as exc:
            _fail(str(exc))
        finally:
            watchdog.disarm()
