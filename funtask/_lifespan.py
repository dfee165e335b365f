"""The ASGI lifespan protocol: the server's runtime lives as long as the lifespan."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from typing import TYPE_CHECKING, Any, Final

import trio

from ._app import open_quart
from ._errors import ConfigError
from ._hypercorn_fixes import install_hypercorn_fixes

if TYPE_CHECKING:
    from ._runtime import Runtime
    from ._server import Server

__all__ = ["drain_on_sigterm", "serve_lifespan"]

logger: Final = logging.getLogger("funtask.server")


async def serve_lifespan(server: Server, receive: Any, send: Any) -> None:
    """Run ``server``'s runtime from ``lifespan.startup`` until ``lifespan.shutdown``."""
    message = await receive()
    if message["type"] != "lifespan.startup":  # pragma: no cover - protocol violation
        return
    install_hypercorn_fixes()  # ASGI mode: hypercorn builds its TCPServers after startup
    started = False
    try:
        async with server._open_runtime() as runtime, open_quart(server._app()):
            runtime.nursery.start_soon(drain_on_sigterm, runtime)
            await send({"type": "lifespan.startup.complete"})
            started = True
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            # The drain runs as the runtime closes.
    except (ConfigError, Exception) as exc:
        if started:
            logger.error("server %r failed", server.name, exc_info=exc)
            await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
            return
        if not isinstance(exc, ConfigError):
            logger.error("server %r failed to start", server.name, exc_info=exc)
        await send({"type": "lifespan.startup.failed", "message": str(exc)})
        return
    except trio.Cancelled:
        raise
    await send({"type": "lifespan.shutdown.complete"})


@trio.lowlevel.enable_ki_protection
async def drain_on_sigterm(runtime: Runtime) -> None:
    """Drain when SIGTERM reaches this worker process itself (ASGI-server mode).

    Under hypercorn the parent process owns the signals and the app hears of a
    shutdown only through lifespan, after the graceful timeout. When SIGTERM
    is sent to the worker too (systemd's ``KillMode=control-group``), the
    default action would kill it with jobs running; instead it drains at once.
    Afterwards a single-process server is asked to stop as Ctrl-C would (KI
    protection makes Trio deliver that to the main task, not here); a
    hypercorn worker process waits for its parent's shutdown.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            logger.info("server %r received SIGTERM, draining", runtime.name)
            await runtime.drain()
            if multiprocessing.parent_process() is not None:
                logger.info("drained; waiting for the parent process to stop this worker")
            elif signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
                logger.warning("drained, but SIGINT is ignored: stop the ASGI server yourself")
            else:
                signal.raise_signal(signal.SIGINT)
            return
