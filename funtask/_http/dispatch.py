"""The lean ASGI dispatcher in front of the quart-trio app.

It serves the routes of :data:`~funtask._http.routes.ROUTES` directly on
ASGI (no request context, no werkzeug routing, no response objects) and
hands every other request — custom handlers, unknown paths, a wrong method
on a built-in path — to the quart-trio app, which registers the same table
for its 404 and 405 answers.

Matching follows what werkzeug did for these rules: the percent-decoded
``path``; a ``{name}`` wildcard is one non-empty segment; a trailing slash is
optional (``strict_slashes=False``); ``{name...}`` takes the rest,
slashes included; ``HEAD`` is served as ``GET``. A path that is not plain
(``//``, which werkzeug merges or redirects, or characters that are not
printable) is matched by the Quart app's own URL map instead, so that no
request is answered differently from before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlparse

from werkzeug.exceptions import HTTPException

from .._serving import shield_final_send
from . import jobs, status
from .exchange import BodyTimeout, ClientDisconnected, Request
from .routes import Route, active_routes

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from .._server import Server

__all__ = ["Dispatcher"]

logger: Final = logging.getLogger("funtask.http")

Handler = Callable[[Request, Any, str], Awaitable[None]]

_HANDLERS: Final[dict[str, Handler]] = {
    "run": jobs.run,
    "stop": jobs.stop,
    "result": jobs.result,
    "health": status.health,
    "events": status.events,
    "dashboard": status.dashboard,
    "metrics": status.metrics,
    "openapi": status.openapi,
    "livez": status.livez,
    "readyz": status.readyz,
}


class _Bound:
    """A route of the table bound to its handler and to one server's settings."""

    __slots__ = ("guarded", "handler", "methods", "observed", "route")

    def __init__(self, route: Route, *, metrics_auth: bool) -> None:
        self.route = route
        self.handler = _HANDLERS[route.handler]
        self.methods = frozenset(route.methods) | ({"HEAD"} if "GET" in route.methods else set())
        # Guarded handlers get the runtime; the others the server (and check it themselves).
        self.guarded = route.auth == "token"
        self.observed = route.handler == "run"  # /run answers are counted by status
        if route.auth == "metrics" and metrics_auth:
            self.guarded = True
            inner = self.handler

            async def with_server(request: Request, runtime: Any, arg: str) -> None:
                await inner(request, runtime.server, arg)

            self.handler = with_server


class Dispatcher:
    """An ASGI app: funtask's routes served directly, everything else by ``fallback``."""

    def __init__(self, server: Server, fallback: QuartTrio) -> None:
        self.server = server
        self.fallback = fallback
        self._url_adapter = fallback.url_map.bind("funtask.invalid")
        settings = server.settings
        self._static: dict[str, _Bound] = {}
        self._prefixed: list[tuple[str, _Bound]] = []
        self._endpoints: dict[str, _Bound] = {}
        for route in active_routes(dashboard=settings.dashboard, metrics=settings.metrics):
            bound = self._endpoints[route.handler] = _Bound(
                route, metrics_auth=settings.metrics_auth
            )
            if route.prefix is None:
                self._static[route.pattern] = self._static[route.pattern + "/"] = bound
            else:
                self._prefixed.append((route.prefix, bound))

    def match(self, path: str, method: str) -> tuple[_Bound, str] | None:
        """The route serving ``path`` and its wildcard's value, or None (Quart's to answer)."""
        if "//" in path or not path.isprintable():
            return self._match_like_quart(path, method)
        bound = self._static.get(path)
        if bound is not None:
            return bound, ""
        for prefix, bound in self._prefixed:
            if path.startswith(prefix):
                value = path[len(prefix) :]
                if bound.route.rest:
                    return (bound, value) if value else None
                if value.endswith("/"):
                    value = value[:-1]
                return (bound, value) if value and "/" not in value else None
        return None

    def _match_like_quart(self, path: str, method: str) -> tuple[_Bound, str] | None:
        """Match an unusual path with werkzeug, on the Quart app's map of the same routes."""
        try:
            endpoint, values = self._url_adapter.match(path, method)
        except HTTPException:  # 404, 405, a redirect: Quart answers it
            return None
        bound = self._endpoints.get(str(endpoint))
        if bound is None:
            return None
        return bound, next(iter(values.values()), "")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve one ASGI connection scope."""
        if scope["type"] == "http":
            path = scope["path"]
            if scope.get("root_path") or not path.startswith("/"):
                path = _quart_path(scope)
            method = scope["method"]
            found = self.match(path, method)
            if found is not None:
                bound, arg = found
                if method in bound.methods:
                    await self._serve(bound, Request(scope, receive, send, method, path), arg)
                    return
        await self.fallback(scope, receive, shield_final_send(send))

    async def _serve(self, bound: _Bound, request: Request, arg: str) -> None:
        if bound.observed:
            request.on_answer = partial(self._run_answered, arg)
        try:
            if bound.guarded:
                runtime = self.server._runtime
                if runtime is None:
                    await request.respond(503, status.NOT_RUNNING)
                    return
                if not runtime.authorized(status.bearer_token(request.header(b"authorization"))):
                    await request.respond(
                        401, status.UNAUTHORIZED, headers=request.unread_headers(None, True)
                    )
                    return
                await bound.handler(request, runtime, arg)
            else:
                await bound.handler(request, self.server, arg)
        except ClientDisconnected:
            return
        except BodyTimeout:
            await request.error("request timeout", 408, unread=True)
        except Exception as exc:
            logger.error(
                "unhandled error serving %s %s", request.method, request.path, exc_info=exc
            )
            if request.status is None:
                await request.error("internal server error", 500)

    def _run_answered(self, task: str, answered: int) -> None:
        """Tell the observer how a ``/run`` request is answered."""
        runtime = self.server._runtime
        if runtime is not None:  # no lifespan: nothing observes
            known = answered != 401 and task in runtime.slots  # paths never become labels
            runtime.observer.run_answered(task if known else None, answered)


def _quart_path(scope: Any) -> str:
    """The path as Quart reads it when a ``root_path`` is set or the path is absolute-form."""
    from quart.asgi import _normalise_path

    path: str = scope["path"]
    path = path if path.startswith("/") else urlparse(path).path
    root_path = scope.get("root_path", "")
    return _normalise_path(path, root_path) if root_path else path
