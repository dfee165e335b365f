"""The :class:`Server`: configuration, task registry, validation and serving."""

from __future__ import annotations

import os
import types
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar, overload

import trio

from ._config import (
    DEFAULT_CALLBACK_RETRIES,
    DEFAULT_CALLBACK_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_EVENT_CLIENTS,
    DEFAULT_RESULT_HISTORY,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_SYNC_TIMEOUT,
    HandlerDef,
    Settings,
    handler_problems,
    parse_handler_pattern,
)
from ._errors import ConfigError
from ._stores.base import DEFAULT_RESULT_TTL, DEFAULT_STORE_LEASE, DEFAULT_STORE_TIMEOUT
from ._stores.lock import StoreLock
from ._tasks import TaskDef, TaskFunction, task_name_problem

if TYPE_CHECKING:
    from datetime import timedelta

    import httpx

    from ._runtime import Runtime

__all__ = ["Server"]

_F = TypeVar("_F", bound=Callable[..., Any])
Duration = "float | timedelta"


class Server:
    """A task worker: named tasks served over HTTP.

    Configure it with keyword arguments (see the README for each), register
    tasks with :meth:`task` or :meth:`add_task`, then serve it with
    :meth:`run`, :meth:`serve`, ``python -m funtask serve module:server``, or
    any ASGI server (the ``Server`` is an ASGI app).
    """

    def __init__(
        self,
        name: str,
        *,
        auth_token: str | Iterable[str] | None = None,
        dead_letter_dir: str | os.PathLike[str] | None = None,
        callback_allowlist: Iterable[str] = (),
        callback_retries: int = DEFAULT_CALLBACK_RETRIES,
        callback_timeout: float | timedelta = DEFAULT_CALLBACK_TIMEOUT,
        dashboard: bool = False,
        max_duration: float | timedelta | None = None,
        sync_timeout: float | timedelta = DEFAULT_SYNC_TIMEOUT,
        shutdown_timeout: float | timedelta = DEFAULT_SHUTDOWN_TIMEOUT,
        result_history: int = DEFAULT_RESULT_HISTORY,
        readiness: Callable[[], Any] | None = None,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        callback_signing_secret: str | bytes | None = None,
        max_event_clients: int = DEFAULT_MAX_EVENT_CLIENTS,
        lifespan: Callable[[Server], Any] | None = None,
        metrics: bool = True,
        metrics_auth: bool = True,
        instance_id: str | None = None,
        store: str | None = None,
        result_ttl: float | timedelta | None = DEFAULT_RESULT_TTL,
        store_lease: float | timedelta = DEFAULT_STORE_LEASE,
        store_timeout: float | timedelta = DEFAULT_STORE_TIMEOUT,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {name!r}")
        self.name = name
        self.settings = Settings(
            auth_token=(
                auth_token
                if auth_token is None or isinstance(auth_token, str)
                else tuple(auth_token)
            ),
            dead_letter_dir=dead_letter_dir,
            callback_allowlist=(
                callback_allowlist
                if isinstance(callback_allowlist, str)
                else tuple(callback_allowlist)
            ),
            callback_retries=callback_retries,
            callback_timeout=callback_timeout,
            dashboard=bool(dashboard),
            max_duration=max_duration,
            sync_timeout=sync_timeout,
            shutdown_timeout=shutdown_timeout,
            result_history=result_history,
            readiness=readiness,
            max_body_size=max_body_size,
            callback_signing_secret=callback_signing_secret,
            max_event_clients=max_event_clients,
            lifespan=lifespan,
            metrics=bool(metrics),
            metrics_auth=bool(metrics_auth),
            instance_id=instance_id,
            store=store,
            result_ttl=result_ttl,
            store_lease=store_lease,
            store_timeout=store_timeout,
            cwd=os.getcwd(),
        )
        #: Shared resources for tasks and handlers (set them up in ``lifespan``).
        self.state = types.SimpleNamespace()
        self._tasks: list[TaskDef] = []
        self._handlers: list[HandlerDef] = []
        self._runtime: Runtime | None = None
        self._quart: Any = None
        self._asgi: Any = None

    def __repr__(self) -> str:
        return f"<funtask.Server {self.name!r} tasks={[t.name for t in self._tasks]!r}>"

    # -- registry ---------------------------------------------------------

    @property
    def tasks(self) -> Mapping[str, TaskDef]:
        """The registered tasks by name (read-only view)."""
        return types.MappingProxyType({t.name: t for t in self._tasks})

    def _check_open(self) -> None:
        if self._runtime is not None:
            raise RuntimeError("cannot register tasks or handlers while the server is running")

    def add_task(
        self,
        name: str | None,
        fn: TaskFunction,
        *,
        description: str = "",
        example: Mapping[str, Any] | None = None,
        keep_results: int | None = None,
    ) -> TaskDef:
        """Register ``fn`` as a task called ``name`` (default: the function's name)."""
        self._check_open()
        if not callable(fn):
            raise TypeError(f"task function must be callable, not {fn!r}")
        if name is None:
            name = getattr(fn, "__name__", None)
            if not isinstance(name, str):
                raise TypeError(f"cannot derive a task name from {fn!r}; pass name=")
        if not isinstance(description, str):
            raise TypeError(f"description must be a str, not {description!r}")
        if example is not None and not isinstance(example, Mapping):
            raise TypeError(f"example must be a mapping, not {example!r}")
        definition = TaskDef(name, fn, description, example, keep_results)
        self._tasks.append(definition)
        return definition

    @overload
    def task(self, fn: _F, /) -> _F: ...

    @overload
    def task(
        self,
        name: str | None = None,
        *,
        description: str = "",
        example: Mapping[str, Any] | None = None,
        keep_results: int | None = None,
    ) -> Callable[[_F], _F]: ...

    def task(
        self,
        name: Any = None,
        *,
        description: str = "",
        example: Mapping[str, Any] | None = None,
        keep_results: int | None = None,
    ) -> Any:
        """Decorator registering a task; usable bare (``@server.task``) or with options."""
        if callable(name):
            self.add_task(None, name)
            return name

        def decorate(fn: _F) -> _F:
            self.add_task(
                name,
                fn,
                description=description,
                example=example,
                keep_results=keep_results,
            )
            return fn

        return decorate

    def add_handler(self, pattern: str, view: Callable[..., Any] | None) -> None:
        """Register a custom Quart view for ``pattern`` (``"GET /api/orders"``); not behind auth.

        Go-style wildcards work: ``{id}`` is one path segment, ``{rest...}`` the
        remainder. The view is called with them as keyword arguments.
        """
        self._check_open()
        if not isinstance(pattern, str):
            raise TypeError(f"pattern must be a str, not {pattern!r}")
        method, path = parse_handler_pattern(pattern)
        self._handlers.append(HandlerDef(pattern, view, method, path))

    def handler(self, pattern: str) -> Callable[[_F], _F]:
        """Decorator form of :meth:`add_handler`."""

        def decorate(view: _F) -> _F:
            self.add_handler(pattern, view)
            return view

        return decorate

    # -- validation -------------------------------------------------------

    def problems(self) -> list[str]:
        """Every configuration problem, in the order :meth:`validate` reports them."""
        problems: list[str] = []
        if not self._tasks:
            problems.append("no tasks registered")
        problems.extend(self.settings.problems())
        seen: set[str] = set()
        for definition in self._tasks:
            if problem := task_name_problem(definition.name):
                problems.append(problem)
            if definition.name in seen:
                problems.append(f"duplicate task name {definition.name!r}")
            seen.add(definition.name)
            keep = definition.keep_results
            if keep is not None and (
                isinstance(keep, bool) or not isinstance(keep, int) or keep < 1
            ):
                problems.append(
                    f"task {definition.name!r}: keep_results must be an int >= 1, not {keep!r}"
                )
        patterns: set[tuple[str | None, str]] = set()
        for handler in self._handlers:
            problems.extend(
                handler_problems(
                    handler, dashboard=self.settings.dashboard, metrics=self.settings.metrics
                )
            )
            key = (handler.method, handler.path)
            if key in patterns:
                problems.append(f"duplicate handler pattern {handler.pattern!r}")
            patterns.add(key)
        return problems

    def validate(self) -> None:
        """Check the whole configuration; raise one :class:`ConfigError` listing every problem."""
        problems = self.problems()
        if problems:
            raise ConfigError(self.name, problems)

    # -- serving ----------------------------------------------------------

    @asynccontextmanager
    async def _open_runtime(
        self, *, callback_transport: httpx.AsyncBaseTransport | None = None
    ) -> AsyncIterator[Runtime]:
        from ._runtime import open_runtime

        if self._runtime is not None:
            raise RuntimeError(f"server {self.name!r} is already running")
        self.validate()
        lock = self._lock_store()
        try:
            async with open_runtime(self, callback_transport=callback_transport) as runtime:
                self._runtime = runtime
                try:
                    yield runtime
                finally:
                    self._runtime = None
        finally:
            if lock is not None:
                lock.release()

    def _lock_store(self) -> StoreLock | None:
        """Take an SQLite store's file lock for as long as the server runs (rule 11)."""
        url = self.settings.resolved_store()
        if url.kind != "sqlite":
            return None
        assert url.path is not None
        lock = StoreLock(url.path)
        try:
            lock.acquire(self.settings.resolved_instance_id())
        except (RuntimeError, OSError) as exc:
            raise ConfigError(self.name, [str(exc)]) from None
        return lock

    def _app(self) -> Any:
        """The quart-trio app: custom handlers and the 404/405 answers (built once)."""
        if self._quart is None:
            from ._app import create_app

            self._quart = create_app(self)
        return self._quart

    def _http(self) -> Any:
        """The ASGI app for HTTP: funtask's routes, everything else by :meth:`_app`."""
        if self._asgi is None:
            from ._http.dispatch import Dispatcher

            self._asgi = Dispatcher(self, self._app())
        return self._asgi

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """ASGI entry point: ``hypercorn -k trio module:server``."""
        if scope["type"] == "lifespan":
            from ._lifespan import serve_lifespan

            await serve_lifespan(self, receive, send)
        else:
            await self._http()(scope, receive, send)

    async def serve(
        self,
        bind: str | Iterable[str] = "127.0.0.1:8080",
        *,
        shutdown_trigger: Callable[[], Any] | None = None,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve over HTTP until ``shutdown_trigger`` returns or this call is cancelled.

        Works with ``nursery.start``: reports the bound addresses (e.g.
        ``["http://127.0.0.1:8080"]``) once the sockets are listening. Drains
        gracefully before returning; installs no signal handlers.

        The drain settles every job's result within ``shutdown_timeout`` (a job
        still running then gets its ``worker_shutdown`` result, stored,
        dead-lettered and sent once), but this call returns only when every
        task has returned: an ``async def`` task that shields itself from
        cancellation keeps it, and so your program, waiting. Inside your own
        Trio program funtask cannot end the process for you; :meth:`run` and
        ``python -m funtask serve``, which own the process, log the stuck jobs
        and exit anyway.

        Raises:
            ConfigError: the configuration is invalid (nothing was started).
            OSError: an address cannot be bound; the message names it and the
                cause (``cannot listen on 127.0.0.1:8080: address already in use``).
        """
        from ._serving import serve

        await serve(self, bind, shutdown_trigger=shutdown_trigger, task_status=task_status)

    def run(self, bind: str | Iterable[str] = "127.0.0.1:8080") -> None:
        """Serve until SIGINT or SIGTERM, then drain and return (blocks).

        A configuration problem, or an address that cannot be bound, is printed
        as one line on stderr and exits with status 2. If neither the
        ``funtask`` logger nor the root logger has a handler, ``funtask``
        records go to stderr at INFO while serving (where it listens, the
        shutdown). Once the drain has settled every result, tasks that ignore
        cancellation cannot hold the process: after a short grace they are
        named in one error line and the process exits (status 0).
        """
        from ._process import run

        run(self, bind)
