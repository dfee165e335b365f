"""The quart-trio app behind the dispatcher: custom handlers and the 404/405 answers.

funtask's own routes are served by :mod:`funtask._http.dispatch`; they are
registered here too, from the same table, so that werkzeug answers a wrong
method on them (405 with ``Allow``) and a path it would redirect exactly as
before. Their views are never reached: a request these rules match is one
the dispatcher serves itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import PathConverter

from ._http.exchange import BODY_TIMEOUT
from ._http.routes import RESERVED_PATHS, Route, active_routes
from ._wire import dumps

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["create_app", "open_quart", "quart_rule"]

logger: Final = logging.getLogger("funtask.http")

_ALL_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_MESSAGES: Final = {
    404: "not found",
    405: "method not allowed",
    413: "request body too large",
    408: "request timeout",
}


def _error_response(message: str, status: int) -> Response:
    return Response(dumps({"error": message}), status=status, content_type="application/json")


def _go_path(path: str) -> str:
    """Turn Go ``ServeMux`` wildcards (``{id}``, ``{rest...}``) into Quart rules."""
    path = re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)\.\.\.\}", r"<path:\1>", path)
    path = re.sub(r"\{\$\}", "", path)
    return re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", r"<\1>", path)


class _AnyPath(PathConverter):
    """Werkzeug's ``path`` converter, but also matching a leading or doubled slash.

    The ``/result`` handler reads the jobId from the raw path; the rule only has to match.
    """

    regex = ".+"
    part_isolating = False  # werkzeug would otherwise match one part between slashes


def quart_rule(route: Route) -> str:
    """The werkzeug rule for a route of the table (``{jobId...}`` uses :class:`_AnyPath`)."""
    return re.sub(r"<path:", "<any_path:", _go_path(route.pattern))


async def _dispatched(**values: str) -> Response:
    """The view of a built-in route: never reached, the dispatcher serves these requests."""
    raise NotFound()  # pragma: no cover - a request this rule matches never gets here


def create_app(server: Server) -> QuartTrio:
    """Build the quart-trio app for ``server``'s custom handlers and 404/405 answers."""
    app = QuartTrio(f"funtask.{server.name}")
    app.config["MAX_CONTENT_LENGTH"] = server.settings.max_body_size
    app.config["RESPONSE_TIMEOUT"] = None  # custom handlers may stream
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.url_map.strict_slashes = False
    app.url_map.converters["any_path"] = _AnyPath
    settings = server.settings
    for route in active_routes(dashboard=settings.dashboard, metrics=settings.metrics):
        # Never merge slashes in /result: "/result/%2Fabs" is the jobId "/abs", not a redirect.
        app.add_url_rule(
            quart_rule(route),
            route.handler,
            _dispatched,
            methods=list(route.methods),
            merge_slashes=not route.rest,
        )
    for index, handler in enumerate(server._handlers):
        methods = [handler.method] if handler.method else list(_ALL_METHODS)
        rule = _go_path(handler.path)
        assert handler.view is not None and rule not in RESERVED_PATHS
        app.add_url_rule(rule, f"handler_{index}", handler.view, methods=methods)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        response = _error_response(_MESSAGES.get(status, exc.name.lower()), status)
        if status in (405, 408, 413) and request.method in ("POST", "PUT", "PATCH"):
            # The body was not read: close rather than take it for the next request.
            response.headers["Connection"] = "close"
        allowed = getattr(exc, "valid_methods", None)
        if status == 405 and allowed:
            response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    async def unexpected_error(exc: Exception) -> Response:
        logger.error("unhandled error serving %s %s", request.method, request.path, exc_info=exc)
        return _error_response("internal server error", 500)

    return app


@asynccontextmanager
async def open_quart(app: QuartTrio) -> AsyncIterator[QuartTrio]:
    """Run Quart's own startup and shutdown around the block, with its own nursery.

    quart-trio keeps background tasks in ``app.nursery`` and cancels it on
    shutdown, so it gets a nursery of its own, never the server's.
    """
    async with trio.open_nursery() as nursery:
        app.nursery = nursery
        await app.startup()
        try:
            yield app
        finally:
            with trio.CancelScope(shield=True):
                await app.shutdown()
