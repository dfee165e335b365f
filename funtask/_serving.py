"""Serving over HTTP with hypercorn's trio worker: ``Server.serve`` and ``Server.run``."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from ._app import open_quart
from ._errors import ConfigError
from ._hypercorn_fixes import install_hypercorn_fixes

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["hypercorn_config", "run", "serve"]

logger: Final = logging.getLogger("funtask.server")

HTTP_GRACEFUL_TIMEOUT: Final = 5.0  # seconds; hypercorn's own default grace
HTTP_FINAL_GRACE: Final = 1.0  # seconds for in-flight responses once the drain is over


def hypercorn_config(bind: str | Iterable[str]) -> Config:
    """A hypercorn config for ``bind`` with funtask's defaults (no access log)."""
    config = Config()
    config.bind = [bind] if isinstance(bind, str) else list(bind)
    config.graceful_timeout = HTTP_GRACEFUL_TIMEOUT
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


def shield_final_send(send: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap an ASGI ``send`` so that the last body message cannot be cancelled.

    hypercorn tidies the connection up inside that call and may deliver
    ``http.disconnect`` meanwhile, on which quart-trio cancels the request;
    cancelling that very send would leave a keep-alive connection hanging
    (``docs/upstream.md``, section 3).
    """

    async def shielded(message: Any) -> None:
        if message.get("type") == "http.response.body" and not message.get("more_body"):
            with trio.CancelScope(shield=True):
                await send(message)
        else:
            await send(message)

    return shielded


def without_lifespan(server: Server) -> Callable[..., Any]:
    """An ASGI app that serves ``server``'s routes and acknowledges lifespan at once."""
    app = server._app()

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        else:
            await app(scope, receive, shield_final_send(send))

    return asgi


async def serve(
    server: Server,
    bind: str | Iterable[str],
    *,
    shutdown_trigger: Callable[[], Any] | None,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    """Serve ``server`` until the trigger returns or the call is cancelled, then drain."""
    install_hypercorn_fixes()
    config = hypercorn_config(bind)
    http_stop = trio.Event()

    async def serve_http(*, task_status: trio.TaskStatus[list[str]]) -> None:
        # Shielded: the HTTP server must outlive a cancelled serve() long enough
        # to answer the sync callers whose jobs the drain is cancelling.
        with trio.CancelScope(shield=True):
            await hypercorn_serve(
                without_lifespan(server),
                config,
                shutdown_trigger=http_stop.wait,
                task_status=task_status,
            )

    async with (
        server._open_runtime() as runtime,
        open_quart(server._app()),
        trio.open_nursery() as nursery,
    ):
        binds: list[str] = await nursery.start(serve_http)
        logger.info("server %r listening on %s", server.name, ", ".join(binds))
        task_status.started(binds)
        try:
            if shutdown_trigger is None:
                await trio.sleep_forever()
            else:
                await shutdown_trigger()
        finally:
            await runtime.drain()
            # Jobs are settled and streams closed; what is left is answers being
            # written and idle keep-alive connections, which need no long grace.
            config.graceful_timeout = HTTP_FINAL_GRACE
            http_stop.set()


def run(server: Server, bind: str | Iterable[str]) -> None:
    """Serve until SIGINT/SIGTERM (blocking); a bad configuration exits with status 2."""
    try:
        server.validate()
    except ConfigError as exc:
        print(f"funtask: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

            async def wait_for_signal() -> None:
                async for signum in signals:
                    logger.info("received %s, shutting down", signal.Signals(signum).name)
                    return

            await server.serve(bind, shutdown_trigger=wait_for_signal)

    trio.run(main)
