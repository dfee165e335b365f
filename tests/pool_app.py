"""A worker for the pool tests (tests/test_pool_redis.py): replicas sharing one Redis.

Configured from the environment:

- ``FUNTASK_STORE``, ``FUNTASK_AUTH_TOKEN``, ``FUNTASK_DEAD_LETTER_DIR``: read by funtask;
- ``POOL_APP_INSTANCE``: the instance name shown in ``/health``;
- ``POOL_APP_STORE_LEASE``: ``store_lease`` in seconds (default 60);
- ``POOL_APP_CALLBACK_ALLOWLIST``: allowed callback origins, space separated.

Served as ``python tests/pool_app.py 127.0.0.1:0``.
"""

from __future__ import annotations

import logging
import os
import sys

import trio

import funtask

SAFETY_LIMIT = 120.0  # seconds; no task here outlives a forgotten test process by more

server = funtask.Server(
    "pool-app",
    instance_id=os.environ.get("POOL_APP_INSTANCE") or None,
    store_lease=float(os.environ.get("POOL_APP_STORE_LEASE", "60")),
    store_timeout=1.0,
    callback_allowlist=os.environ.get("POOL_APP_CALLBACK_ALLOWLIST", "").split(),
    callback_retries=int(os.environ.get("POOL_APP_CALLBACK_RETRIES", "2")),
    callback_timeout=5,
    shutdown_timeout=2,
)


@server.task(description="Sleeps (async) for seconds, default until cancelled")
async def slow(run: funtask.Run, params: funtask.Params) -> funtask.Result:
    """Report ``sleeping`` and sleep ``seconds``."""
    run.step("sleeping")
    await trio.sleep(params.float("seconds", SAFETY_LIMIT))
    return funtask.ok("slept")


# Ten more slots of the same task for the soak (slots are per task and process).
for _index in range(10):
    server.add_task(f"slow-{_index}", slow, description="Sleeps (async), for the soak")


@server.task(description="Answers at once")
async def quick(run: funtask.Run, params: funtask.Params) -> funtask.Result:
    """Return ``ok`` with the replica's instance."""
    return funtask.ok("quick").with_data("instance", os.environ.get("POOL_APP_INSTANCE", ""))


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("coredis").setLevel(logging.CRITICAL)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    server.run(sys.argv[1])
