"""The route table, and the dispatcher's matching checked against werkzeug's on the same table."""

from __future__ import annotations

from pathlib import Path

import pytest
from werkzeug.exceptions import HTTPException

from funtask import _config
from funtask._http.routes import (
    OPTIONAL_PATHS,
    RESERVED_PATHS,
    RESERVED_PREFIXES,
    ROUTES,
    active_routes,
)

from _support import build_server

PATHS = [
    "/",
    "/run",
    "/run/",
    "/run/greet",
    "/run/greet/",
    "/run/greet//",
    "/run//greet",
    "/run/a/b",
    "/run/gr\u00e9et",
    "/run/a b",
    "/stop/greet",
    "/stop/greet/",
    "/stop/",
    "/result",
    "/result/",
    "/result/j1",
    "/result/j1/",
    "/result/a/b",
    "/result//abs",
    "/result/a//b",
    "/result/a\nb",
    "/result/\u20ac",
    "/health",
    "/health/",
    "/health//",
    "//health",
    "/Health",
    "/healthz",
    "/events",
    "/metrics",
    "/metrics/",
    "/dashboard",
    "/openapi.json",
    "/livez",
    "/readyz/",
    "/api/x",
    "/nope",
]


def test_reserved_paths_come_from_the_table() -> None:
    assert _config.RESERVED_PATHS is RESERVED_PATHS
    assert _config.RESERVED_PREFIXES is RESERVED_PREFIXES
    assert {"/health", "/livez", "/readyz", "/events", "/openapi.json"} == RESERVED_PATHS
    assert RESERVED_PREFIXES == ("/run/", "/stop/", "/result/")
    assert OPTIONAL_PATHS == {"dashboard": "/dashboard", "metrics": "/metrics"}


def test_optional_routes() -> None:
    assert {r.handler for r in active_routes(dashboard=False, metrics=False)} == {
        r.handler for r in ROUTES if r.option is None
    }
    assert active_routes(dashboard=True, metrics=True) == ROUTES


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "OPTIONS"])
def test_the_dispatcher_serves_exactly_what_werkzeug_routes_to_the_table(
    tmp_path: Path, method: str
) -> None:
    server = build_server(tmp_path, dashboard=True)
    server.add_handler("GET /api/{id}", lambda id: {"id": id})
    dispatcher = server._http()
    adapter = server._app().url_map.bind("funtask.test")
    builtin = {route.handler for route in ROUTES}
    for path in PATHS:
        found = dispatcher.match(path, method)
        served = found is not None and method in found[0].methods
        try:
            endpoint, values = adapter.match(path, method)
        except HTTPException:
            endpoint, values = None, {}
        assert served == (endpoint in builtin), (method, path)
        if found is not None and served:
            assert found[0].route.handler == endpoint, (method, path)
            assert found[1] == next(iter(values.values()), ""), (method, path)
