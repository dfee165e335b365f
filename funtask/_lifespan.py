"""The ASGI lifespan protocol: the server's runtime lives as long as the lifespan."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

import trio

from ._app import open_quart
from ._errors import ConfigError

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["serve_lifespan"]

logger: Final = logging.getLogger("funtask.server")


async def serve_lifespan(server: Server, receive: Any, send: Any) -> None:
    """Run ``server``'s runtime from ``lifespan.startup`` until ``lifespan.shutdown``."""
    message = await receive()
    if message["type"] != "lifespan.startup":  # pragma: no cover - protocol violation
        return
    started = False
    try:
        async with server._open_runtime(), open_quart(server._app()):
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
