"""The counter example: three small tasks behind a funtask server.

Run it for development (prints a generated token and uses a local dead-letter dir)::

    python examples/counter.py            # serves on http://127.0.0.1:8080
    python examples/counter.py 0.0.0.0:9000

It logs ``server 'counter' listening on http://...`` once it is serving;
Ctrl-C (or SIGTERM) drains and stops it.

or in production, configured through the environment::

    FUNTASK_AUTH_TOKEN=... FUNTASK_DEAD_LETTER_DIR=/var/lib/counter \
        python -m funtask serve examples.counter:server --bind 0.0.0.0:8080

Then::

    curl -X POST -H "Authorization: Bearer $TOKEN" \
        -d '{"params": {"name": "Ada"}}' http://127.0.0.1:8080/run/greet
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from pathlib import Path

import trio

import funtask

server = funtask.Server(
    "counter",
    dashboard=True,
    callback_allowlist=os.environ.get("COUNTER_CALLBACK_ALLOWLIST", "").split() or (),
)


@server.task(description="Says hello", example={"name": "World"})
async def greet(run: funtask.Run, params: funtask.Params) -> funtask.Result:
    """Greet ``name``."""
    name = params.str("name", "World")
    run.step("greeting")
    return funtask.ok(f"Hello, {name}!").with_data("name", name)


@server.task("fail-demo", description="Always fails, to show error results")
async def fail_demo(run: funtask.Run, params: funtask.Params) -> funtask.Result:
    """Fail with a machine-readable code."""
    run.step("connecting")
    return funtask.fail("demo_error", "this task always fails")


@server.task(description="Counts down from start to 1, a second a step", example={"start": 5})
async def countdown(run: funtask.Run, params: funtask.Params) -> funtask.Result:
    """Count down from ``start``, reporting progress each second."""
    start = params.int("start", 5)
    if start < 0:
        return funtask.fail("invalid_params", "start must be >= 0")
    for i in range(start):
        run.progress(i + 1, start, f"T-{start - i}")
        await trio.sleep(1)
    return funtask.ok("Countdown complete.").with_data("start", start)


def development_defaults() -> None:
    """Fill in a token and a dead-letter dir for local use, and say so."""
    if not os.environ.get("FUNTASK_AUTH_TOKEN"):
        token = secrets.token_urlsafe(24)
        os.environ["FUNTASK_AUTH_TOKEN"] = token
        print(f"development token (set FUNTASK_AUTH_TOKEN to choose one): {token}")
    if not os.environ.get("FUNTASK_DEAD_LETTER_DIR"):
        directory = Path(".funtask-dev/dead-letters").resolve()
        directory.mkdir(parents=True, exist_ok=True)
        os.environ["FUNTASK_DEAD_LETTER_DIR"] = str(directory)
        print(f"development dead-letter dir: {directory}")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    development_defaults()
    # server.run() logs "listening on http://..." once the socket is bound; an
    # address it cannot bind is one line on stderr and exit status 2.
    server.run(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8080")
