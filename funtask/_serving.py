"""Serving over HTTP with hypercorn's trio worker: ``Server.serve``.

The listening sockets are bound before anything else starts, so that an
address that cannot be bound is one clear :class:`ListenError` (an
``OSError``) rather than an exception group from inside the server.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import trio
from hypercorn.config import Config, Sockets, SocketTypeError
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from ._app import open_quart
from ._hypercorn_fixes import install_hypercorn_fixes

if TYPE_CHECKING:
    from ._runtime import Runtime
    from ._server import Server

__all__ = ["ListenError", "bind_sockets", "hypercorn_config", "serve"]

logger: Final = logging.getLogger("funtask.server")

HTTP_GRACEFUL_TIMEOUT: Final = 5.0  # seconds; hypercorn's own default grace
HTTP_FINAL_GRACE: Final = 1.0  # seconds for in-flight responses once the drain is over
HYPERCORN_DEFAULT_PORT: Final = 8000  # hypercorn's port for a bind address without one


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

    Used for the requests the quart-trio app serves (the dispatcher's own
    handlers never cancel a send). hypercorn tidies the connection up inside
    that call and may deliver ``http.disconnect`` meanwhile, on which
    quart-trio cancels the request;
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
    app = server._http()

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
            await app(scope, receive, send)

    return asgi


class ListenError(OSError):
    """An address to serve on could not be bound; the message names it and the cause."""

    def __init__(self, address: str, reason: str, errno: int | None = None) -> None:
        super().__init__(errno, reason)
        self.address = address
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot listen on {self.address}: {self.reason}"


def _reason(exc: BaseException) -> str:
    """``exc``'s cause in lowercase words: ``address already in use``."""
    text = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
    text = text.strip().rstrip(".")
    return text[:1].lower() + text[1:]


def bind_sockets(config: Config) -> Sockets:
    """Bind and listen on every address of ``config.bind``, as hypercorn would.

    ``HOST:PORT`` addresses are bound here with hypercorn's socket options,
    because hypercorn's own ``create_sockets`` leaves a socket open when its
    bind fails; ``unix:`` and ``fd://`` addresses are left to hypercorn.

    Raises:
        ListenError: an address cannot be bound (in use, not resolvable, not
            permitted, malformed); the sockets bound so far are closed.
    """
    bound: list[socket.socket] = []
    try:
        for address in config.bind:
            try:
                if address.startswith(("unix:", "fd://")):
                    sockets = hypercorn_config(address).create_sockets().insecure_sockets
                    bound.extend(sockets)
                    for sock in sockets:
                        sock.listen(config.backlog)
                else:
                    bound.append(_tcp_socket(address, config.backlog))
            except (OSError, OverflowError, ValueError, SocketTypeError) as exc:
                errno = exc.errno if isinstance(exc, OSError) else None
                raise ListenError(address, _reason(exc), errno) from exc
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return Sockets(secure_sockets=[], insecure_sockets=bound, quic_sockets=[])


def _tcp_socket(address: str, backlog: int) -> socket.socket:
    """A listening TCP socket for ``HOST:PORT`` (hypercorn's parsing and options)."""
    plain = address.replace("[", "").replace("]", "")
    host, colon, port_text = plain.rpartition(":")
    if not colon:
        host, port_text = plain, str(HYPERCORN_DEFAULT_PORT)
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"invalid port {port_text!r}") from None
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(
    server: Server,
    bind: str | Iterable[str],
    *,
    shutdown_trigger: Callable[[], Any] | None,
    task_status: trio.TaskStatus[list[str]],
    on_drained: Callable[[Runtime], None] | None = None,
) -> None:
    """Serve ``server`` until the trigger returns or the call is cancelled, then drain.

    ``on_drained`` is called once every job's result is settled, before the
    HTTP server stops (``run()`` uses it to end a process held up by jobs
    that ignore cancellation).
    """
    if server._runtime is not None:
        raise RuntimeError(f"server {server.name!r} is already running")
    server.validate()
    install_hypercorn_fixes()
    config = hypercorn_config(bind)
    sockets = bind_sockets(config)
    http_stop = trio.Event()

    async def serve_http(*, task_status: trio.TaskStatus[list[str]]) -> None:
        # Shielded: the HTTP server must outlive a cancelled serve() long enough
        # to answer the sync callers whose jobs the drain is cancelling.
        with trio.CancelScope(shield=True):
            await worker_serve(
                wrap_app(without_lifespan(server), config.wsgi_max_body_size, "asgi"),
                config,
                sockets=sockets,
                shutdown_trigger=http_stop.wait,
                task_status=task_status,
            )

    try:
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
                if on_drained is not None:
                    on_drained(runtime)
                # Jobs are settled and streams closed; what is left is answers being
                # written and idle keep-alive connections, which need no long grace.
                config.graceful_timeout = HTTP_FINAL_GRACE
                http_stop.set()
    finally:
        # hypercorn closes what it served; these are closed too if it never started.
        for sock in sockets.insecure_sockets:
            with contextlib.suppress(OSError):
                sock.close()
