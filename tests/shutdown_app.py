"""A small worker for the shutdown tests (tests/test_shutdown_process.py).

Configured from the environment:

- ``FUNTASK_AUTH_TOKEN``, ``FUNTASK_DEAD_LETTER_DIR``: read by funtask itself;
- ``SHUTDOWN_APP_CALLBACK_ALLOWLIST``: allowed callback origins, space separated
  (e.g. the test's receiver, ``http://127.0.0.1:40123``);
- ``SHUTDOWN_APP_SHUTDOWN_TIMEOUT``: the shutdown timeout in seconds (default 2).

Served three ways::

    python tests/shutdown_app.py 127.0.0.1:0
    python -m funtask serve tests.shutdown_app:server --bind 127.0.0.1:0
    python -m hypercorn -k trio -w 1 --bind 127.0.0.1:0 tests.shutdown_app:server
"""

from __future__ import annotations

import logging
import os
import sys
import time

import trio

import funtask

SHUTDOWN_TIMEOUT = float(os.environ.get("SHUTDOWN_APP_SHUTDOWN_TIMEOUT", "2"))
SAFETY_LIMIT = 120.0  # seconds; no task here outlives a forgotten test process by more

server = funtask.Server(
    "shutdown-app",
    callback_allowlist=os.environ.get("SHUTDOWN_APP_CALLBACK_ALLOWLIST", "").split(),
    shutdown_timeout=SHUTDOWN_TIMEOUT,
    callback_retries=2,
    callback_timeout=5,
)


@server.task(description="Sleeps (async) until cancelled")
async def slow(run: funtask.Run, params: funtask.Params) -> funtask.Result:
    """Report ``sleeping`` and sleep ``seconds`` (default: longer than any test)."""
    run.step("sleeping")
    await trio.sleep(params.float("seconds", SAFETY_LIMIT))
    return funtask.ok("slept")


@server.task(description="Ignores cancellation (async) for a while")
async def stubborn(run: funtask.Run, params: funtask.Params) -> funtask.Result:
    """Report ``ignoring`` and sleep ``seconds`` in a shielded scope: cancellation waits."""
    run.step("ignoring")
    with trio.CancelScope(shield=True):
        await trio.sleep(params.float("seconds", 30))
    run.step("done ignoring")
    return funtask.ok("ignored cancellation")


# The same task in a second slot, so that a sync and an async job can both ignore it.
server.add_task("stubborn-too", stubborn, description="Ignores cancellation (async), too")


@server.task(description="A plain def polling run.cancelled in a worker thread")
def blocking(run: funtask.Run, params: funtask.Params) -> funtask.Result:
    """Report ``working``, poll ``run.cancelled``, and return ``ok("stopped")`` once cancelled."""
    run.step("working")
    give_up = time.monotonic() + SAFETY_LIMIT
    while not run.cancelled:
        if time.monotonic() > give_up:
            return funtask.fail("not_cancelled", "nobody cancelled the job")
        time.sleep(0.05)
    run.step("stopping")
    return funtask.ok("stopped")


@server.task(description="A plain def that ignores run.cancelled for a while")
def stuck(run: funtask.Run, params: funtask.Params) -> funtask.Result:
    """Report ``ignoring`` and block the thread for ``seconds``, never looking at cancellation."""
    run.step("ignoring")
    end = time.monotonic() + params.float("seconds", 30)
    while time.monotonic() < end:
        time.sleep(0.05)
    return funtask.ok("ignored cancellation")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    server.run(sys.argv[1])
