"""The one table of funtask's built-in routes.

The dispatcher serves it, the quart-trio fallback registers the same
patterns (so a wrong method gets werkzeug's 405 with its ``Allow`` header),
and configuration checks derive the reserved paths from it. Patterns use Go
``ServeMux`` wildcards: ``{name}`` is one path segment, ``{name...}`` the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "OPTIONAL_PATHS",
    "RESERVED_PATHS",
    "RESERVED_PREFIXES",
    "ROUTES",
    "Route",
    "active_routes",
]

Auth = Literal["token", "none", "events", "metrics"]


@dataclass(frozen=True)
class Route:
    """One built-in route: path pattern, methods, handler name and who may call it.

    ``auth`` is ``"token"`` (bearer), ``"none"``, ``"events"`` (bearer or
    ``?token=``, checked by the handler) or ``"metrics"`` (bearer unless
    ``metrics_auth=False``). ``option`` names the setting that turns the route
    on (``dashboard``, ``metrics``); None means always served.
    """

    pattern: str
    methods: tuple[str, ...]
    handler: str
    auth: Auth = "token"
    option: Literal["dashboard", "metrics"] | None = None

    @property
    def prefix(self) -> str | None:
        """The literal part before a wildcard (``/run/``), or None for a static path."""
        head, brace, _ = self.pattern.partition("{")
        return head if brace else None

    @property
    def rest(self) -> bool:
        """Whether the wildcard takes the rest of the path (``{jobId...}``), slashes included."""
        return self.pattern.endswith("...}")


ROUTES: Final = (
    Route("/run/{task}", ("POST",), "run"),
    Route("/stop/{task}", ("POST",), "stop"),
    Route("/result/{jobId...}", ("GET",), "result"),
    Route("/health", ("GET",), "health"),
    Route("/events", ("GET",), "events", auth="events"),
    Route("/dashboard", ("GET",), "dashboard", auth="none", option="dashboard"),
    Route("/metrics", ("GET",), "metrics", auth="metrics", option="metrics"),
    Route("/openapi.json", ("GET",), "openapi", auth="none"),
    Route("/livez", ("GET",), "livez", auth="none"),
    Route("/readyz", ("GET",), "readyz", auth="none"),
)

#: Paths a custom handler may never take (``/dashboard`` and ``/metrics`` only when on).
RESERVED_PATHS: Final = frozenset(
    r.pattern for r in ROUTES if r.prefix is None and r.option is None
)
#: Path prefixes of the wildcard routes.
RESERVED_PREFIXES: Final = tuple(r.prefix for r in ROUTES if r.prefix is not None)
#: The path of each optional route, by the setting that turns it on.
OPTIONAL_PATHS: Final = {r.option: r.pattern for r in ROUTES if r.option is not None}


def active_routes(*, dashboard: bool, metrics: bool) -> tuple[Route, ...]:
    """The routes a server with these settings serves."""
    enabled = {"dashboard": dashboard, "metrics": metrics}
    return tuple(r for r in ROUTES if r.option is None or enabled[r.option])
