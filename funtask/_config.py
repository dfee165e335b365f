"""Server configuration: normalising keyword arguments and validating them all at once."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from ._allowlist import parse_allowlist_entry
from ._http.routes import OPTIONAL_PATHS, RESERVED_PATHS, RESERVED_PREFIXES
from ._stores.base import DEFAULT_RESULT_TTL, DEFAULT_STORE_LEASE, DEFAULT_STORE_TIMEOUT
from ._stores.base import MIN_STORE_LEASE as MIN_STORE_LEASE
from ._stores.lock import lock_problem
from ._stores.url import ENV_STORE, StoreURL, parse_store_url

__all__ = [
    "DEFAULT_CALLBACK_RETRIES",
    "DEFAULT_CALLBACK_TIMEOUT",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_EVENT_CLIENTS",
    "DEFAULT_RESULT_HISTORY",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_SYNC_TIMEOUT",
    "ENV_AUTH_TOKEN",
    "ENV_DEAD_LETTER_DIR",
    "ENV_STORE",
    "HandlerDef",
    "Settings",
    "duration_problem",
    "handler_problems",
    "to_seconds",
]

DEFAULT_CALLBACK_RETRIES: Final = 5
DEFAULT_CALLBACK_TIMEOUT: Final = 30.0  # seconds
DEFAULT_SYNC_TIMEOUT: Final = 120.0  # seconds
DEFAULT_SHUTDOWN_TIMEOUT: Final = 30.0  # seconds
DEFAULT_RESULT_HISTORY: Final = 10  # results per task
DEFAULT_MAX_BODY_SIZE: Final = 10 * 1024 * 1024  # 10 MiB
DEFAULT_MAX_EVENT_CLIENTS: Final = 1000

ENV_AUTH_TOKEN: Final = "FUNTASK_AUTH_TOKEN"
ENV_DEAD_LETTER_DIR: Final = "FUNTASK_DEAD_LETTER_DIR"

_METHOD: Final = re.compile(r"[A-Z]+")


def to_seconds(value: object) -> float | None:
    """Convert a duration given as seconds or ``timedelta`` to float seconds (None if invalid)."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def duration_problem(name: str, value: object, *, optional: bool = False) -> str | None:
    """Return why ``value`` is not a valid duration for setting ``name``, or None."""
    if value is None and optional:
        return None
    seconds = to_seconds(value)
    if seconds is None:
        return f"{name} must be seconds or a timedelta, not {value!r}"
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        return f"{name} must be a finite duration >= 0, not {value!r}"
    return None


@dataclass(frozen=True)
class HandlerDef:
    """A custom route registered with ``server.add_handler``."""

    pattern: str
    view: Callable[..., Any] | None
    method: str | None
    path: str


def parse_handler_pattern(pattern: str) -> tuple[str | None, str]:
    """Split a Go ``ServeMux`` pattern (``"GET /api/orders"`` or ``"/x"``) into method and path."""
    method, _, path = pattern.strip().rpartition(" ")
    return (method.strip() or None), path


def handler_problems(handler: HandlerDef, *, dashboard: bool, metrics: bool) -> list[str]:
    """Return the problems of one custom handler registration."""
    problems = []
    if not handler.pattern or not handler.pattern.strip():
        return ["handler pattern must not be empty"]
    if handler.view is None or not callable(handler.view):
        problems.append(f"handler {handler.pattern!r} has no view")
    if handler.method is not None and not _METHOD.fullmatch(handler.method):
        problems.append(f"handler {handler.pattern!r} has an invalid method {handler.method!r}")
    path = handler.path
    if not path.startswith("/"):
        problems.append(f"handler {handler.pattern!r} path must start with '/'")
    reserved = RESERVED_PATHS | ({OPTIONAL_PATHS["dashboard"]} if dashboard else set())
    bare = path.rstrip("/") or "/"
    if metrics and bare == OPTIONAL_PATHS["metrics"]:
        problems.append(
            f"handler {handler.pattern!r} conflicts with the built-in /metrics route "
            "(pass metrics=False to serve your own)"
        )
    elif bare in reserved or path.startswith(RESERVED_PREFIXES) or bare + "/" in RESERVED_PREFIXES:
        problems.append(f"handler {handler.pattern!r} conflicts with a built-in route")
    return problems


@dataclass
class Settings:
    """The server's settings as given (durations in seconds once valid)."""

    auth_token: str | Iterable[str] | None
    dead_letter_dir: str | os.PathLike[str] | None
    callback_allowlist: Iterable[str]
    callback_retries: int
    callback_timeout: Any
    dashboard: bool
    max_duration: Any
    sync_timeout: Any
    shutdown_timeout: Any
    result_history: int
    readiness: Callable[[], Any] | None
    max_body_size: int
    callback_signing_secret: str | bytes | None
    max_event_clients: int
    lifespan: Callable[[Any], Any] | None
    metrics: bool = True
    metrics_auth: bool = True
    instance_id: str | None = None
    store: str | None = None
    result_ttl: Any = DEFAULT_RESULT_TTL
    store_lease: Any = DEFAULT_STORE_LEASE
    store_timeout: Any = DEFAULT_STORE_TIMEOUT
    cwd: str = ""  # the working directory when the Server was created (relative SQLite paths)

    def resolved_store(self) -> StoreURL:
        """The store URL: ``store``, else ``$FUNTASK_STORE``, else memory.

        Raises:
            ValueError: the URL is not valid (see :meth:`problems`).
        """
        value = self.store
        if value is None:
            value = os.environ.get(ENV_STORE) or "memory"
        return parse_store_url(value, cwd=self.cwd or None)

    def store_problems(self, *, probe_lock: bool = True) -> list[str]:
        """The problems of the store settings (see :meth:`problems`)."""
        problems: list[str] = []
        try:
            url: StoreURL | None = self.resolved_store()
        except ValueError as exc:
            problems.append(str(exc))
            url = None
        if url is not None and url.kind == "redis" and importlib.util.find_spec("coredis") is None:
            problems.append(
                f"store {url.display} needs the redis extra (coredis is not importable): "
                "pip install 'funtask[redis]'"
            )
        if self.result_ttl is not None or (url is not None and url.kind == "redis"):
            ttl = to_seconds(self.result_ttl)
            if ttl is None or not math.isfinite(ttl) or ttl <= 0:
                kind = "a finite duration > 0" + (
                    "" if url is not None and url.kind == "redis" else " or None (forever)"
                )
                problems.append(f"result_ttl must be {kind}, not {self.result_ttl!r}")
        lease = to_seconds(self.store_lease)
        if lease is None or not math.isfinite(lease) or lease < MIN_STORE_LEASE:
            problems.append(
                f"store_lease must be a duration of at least {MIN_STORE_LEASE:g}s, "
                f"not {self.store_lease!r}"
            )
        timeout = to_seconds(self.store_timeout)
        if timeout is None or not math.isfinite(timeout) or timeout <= 0:
            problems.append(
                f"store_timeout must be a finite duration > 0, not {self.store_timeout!r}"
            )
        if url is not None and url.kind == "sqlite":
            assert url.path is not None
            directory = os.path.dirname(url.path)
            if not os.path.isdir(directory):
                problems.append(f"sqlite store {url.path}: directory {directory!r} does not exist")
            elif probe_lock and (problem := lock_problem(url.path)):
                problems.append(problem)
        return problems

    def resolved_tokens(self) -> tuple[str, ...]:
        """The accepted bearer tokens, falling back to ``$FUNTASK_AUTH_TOKEN``."""
        token = self.auth_token
        if token is None:
            token = os.environ.get(ENV_AUTH_TOKEN) or None
        if token is None:
            return ()
        if isinstance(token, str):
            return (token,)
        return tuple(token)

    def resolved_dead_letter_dir(self) -> str | None:
        """The dead-letter directory, falling back to ``$FUNTASK_DEAD_LETTER_DIR``."""
        directory = self.dead_letter_dir
        if directory is None:
            directory = os.environ.get(ENV_DEAD_LETTER_DIR) or None
        return None if directory is None else os.fspath(directory)

    def resolved_instance_id(self) -> str:
        """This process's display name: ``instance_id``, else ``<hostname>:<pid>`` (now)."""
        if self.instance_id is not None:
            return self.instance_id
        return f"{socket.gethostname()}:{os.getpid()}"

    def problems(self) -> list[str]:
        """Every problem with these settings (empty when valid)."""
        problems: list[str] = []
        tokens = self.resolved_tokens()
        if not tokens:
            problems.append(f"auth token required (auth_token= or ${ENV_AUTH_TOKEN})")
        elif not all(isinstance(t, str) and t for t in tokens):
            problems.append("auth tokens must be non-empty strings")
        directory = self.resolved_dead_letter_dir()
        if directory is None:
            problems.append(
                f"dead letter directory required (dead_letter_dir= or ${ENV_DEAD_LETTER_DIR})"
            )
        elif not os.path.exists(directory):
            problems.append(f"dead letter directory {directory!r} does not exist")
        elif not os.path.isdir(directory):
            problems.append(f"dead letter directory {directory!r} is not a directory")
        elif not os.access(directory, os.W_OK | os.X_OK):
            problems.append(f"dead letter directory {directory!r} is not writable")
        entries = self.callback_allowlist
        if isinstance(entries, str):
            problems.append("callback_allowlist must be an iterable of origins, not a str")
        else:
            for entry in entries:
                try:
                    parse_allowlist_entry(entry)
                except (ValueError, TypeError) as exc:
                    problems.append(str(exc))
        for name in ("callback_timeout", "sync_timeout", "shutdown_timeout"):
            if problem := duration_problem(name, getattr(self, name)):
                problems.append(problem)
        if problem := duration_problem("max_duration", self.max_duration, optional=True):
            problems.append(problem)
        for name, minimum in (
            ("callback_retries", 1),
            ("result_history", 1),
            ("max_body_size", 1),
            ("max_event_clients", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                problems.append(f"{name} must be an int >= {minimum}, not {value!r}")
        if self.readiness is not None and not callable(self.readiness):
            problems.append(f"readiness must be callable, not {self.readiness!r}")
        if self.lifespan is not None and not callable(self.lifespan):
            problems.append(f"lifespan must be callable, not {self.lifespan!r}")
        secret = self.callback_signing_secret
        if secret is not None and (not isinstance(secret, (str, bytes)) or not secret):
            problems.append("callback_signing_secret must be a non-empty str or bytes")
        instance = self.instance_id
        if instance is not None and (
            not isinstance(instance, str) or not instance.strip() or not instance.isprintable()
        ):
            problems.append(f"instance_id must be a non-empty printable str, not {instance!r}")
        problems.extend(self.store_problems())
        return problems
