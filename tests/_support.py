"""Shared builders for the server tests (imported by the test modules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

import funtask

TOKEN = "test-token"


def build_server(dead_letter_dir: Path, **config: Any) -> funtask.Server:
    """A server with the tasks most tests use."""
    config.setdefault("auth_token", TOKEN)
    server = funtask.Server("testsrv", dead_letter_dir=dead_letter_dir, **config)

    @server.task(description="Says hello", example={"name": "World"})
    async def greet(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        name = params.str("name", "World")
        run.step("greeting")
        return funtask.ok(f"Hello, {name}!").with_data("name", name)

    @server.task
    async def sleeper(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        seconds = params.float("seconds", 3600)
        run.progress(1, 4, "sleeping")
        await trio.sleep(seconds)
        return funtask.ok("slept")

    return server


async def wait_until(predicate: Any, *, interval: float = 0.01) -> None:
    """Poll ``predicate`` (sync or async) until it is true, sleeping ``interval`` between tries."""
    while True:
        outcome = predicate()
        if hasattr(outcome, "__await__"):
            outcome = await outcome
        if outcome:
            return
        await trio.sleep(interval)
