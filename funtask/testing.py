"""Helpers for testing tasks and whole servers.

- :func:`make_run` and :func:`make_params` call a task function directly.
- :func:`open_test_client` runs a whole server in the current Trio run and
  talks to it in-process, so a test under
  ``trio.testing.MockClock(autojump_threshold=0)`` drives every timeout in
  virtual time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import ExitStack, asynccontextmanager, contextmanager
from typing import Any

import httpx
import trio

from ._app import open_quart
from ._asgi_client import ASGIStreamTransport
from ._params import Params
from ._run import Run
from ._server import Server
from ._serving import without_lifespan

__all__ = ["make_params", "make_raw_params", "make_run", "open_test_client"]


def make_run(task: str = "test", job_id: str = "test-job") -> Run:
    """Return a :class:`funtask.Run` for calling a task directly; it records every step.

    Steps are logged at INFO on ``funtask.task``. To test cancellation, run
    the task in your own cancel scope (``with trio.move_on_after(...)``).
    """
    return Run(task, job_id, max_steps=None, step_log_level=logging.INFO)


def _json_value(value: Any, path: str) -> Any:
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"params{path} is {value!r}, which JSON cannot carry")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, Mapping):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"params{path} has a non-str key {key!r}")
            result[key] = _json_value(item, f"{path}[{key!r}]")
        return result
    raise TypeError(f"params{path} is a {type(value).__name__}, which JSON cannot carry")


def make_params(mapping: Mapping[str, Any] | None = None) -> Params:
    """Return :class:`funtask.Params` for ``mapping``, as a JSON body would deliver it.

    Raises:
        TypeError: a value JSON cannot carry (a set, an object, NaN, a non-str key).
    """
    return Params(_json_value(dict(mapping or {}), ""))


def make_raw_params(mapping: Mapping[str, Any] | None = None) -> Params:
    """Return :class:`funtask.Params` for ``mapping`` without any checks (to test bad input)."""
    return Params(mapping)


@asynccontextmanager
async def open_test_client(
    server: Server,
    *,
    authorized: bool = True,
    base_url: str = "http://funtask.test",
    callback_transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``server`` in the current Trio run and yield an in-process ``httpx.AsyncClient``.

    The server's lifespan (its nursery, jobs and shutdown sequence) runs
    around the block; requests stream, so ``/events`` works, and a cancelled
    request reaches the server as a client disconnect. With ``authorized``
    the client sends the server's first token as ``Authorization: Bearer``.
    Leaving the block drains the server as a shutdown would.

    ``callback_transport`` (e.g. ``httpx.MockTransport`` or
    a transport to an in-process ASGI receiver) receives the server's callback POSTs
    instead of the network.

    A server configured without a token or a dead-letter directory (neither
    as a keyword nor in the environment) gets, for this block only, a
    generated token and a temporary dead-letter directory that is removed
    afterwards; configured ones are used as they are.
    """
    with _test_defaults(server):
        server.validate()  # a ConfigError surfaces as itself, not inside an exception group
        async with _open_client(server, authorized, base_url, callback_transport) as client:
            yield client


@contextmanager
def _test_defaults(server: Server) -> Iterator[None]:
    """Give ``server`` a token and a dead-letter dir for a test when it has none."""
    settings = server.settings
    changes: dict[str, Any] = {}
    with ExitStack() as stack:
        if not settings.resolved_tokens():
            changes["auth_token"] = "test-" + secrets.token_urlsafe(16)
        if settings.resolved_dead_letter_dir() is None:
            changes["dead_letter_dir"] = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="funtask-test-dead-letters-")
            )
        if not changes:
            yield
            return
        server.settings = dataclasses.replace(settings, **changes)
        try:
            yield
        finally:
            server.settings = settings


@asynccontextmanager
async def _open_client(
    server: Server,
    authorized: bool,
    base_url: str,
    callback_transport: httpx.AsyncBaseTransport | None,
) -> AsyncIterator[httpx.AsyncClient]:
    async with trio.open_nursery() as requests:
        async with (
            server._open_runtime(callback_transport=callback_transport) as runtime,
            open_quart(server._app()),
        ):
            transport = ASGIStreamTransport(without_lifespan(server), requests)
            headers = {}
            if authorized and runtime.tokens:
                headers["Authorization"] = "Bearer " + runtime.tokens[0].decode("utf-8")
            async with httpx.AsyncClient(
                transport=transport, base_url=base_url, headers=headers
            ) as client:
                yield client
        requests.cancel_scope.cancel()
