"""Soak test for async delivery: no result is ever lost (run by hand).

    python bench/soak.py [--jobs 1000] [--tasks 10] [--seed 1]

Runs a whole server in-process under ``trio.testing.MockClock`` (so the
retry schedule of minutes costs milliseconds) against a callback receiver
that fails a random third of attempts (500s, 503s with Retry-After,
transport errors and timeouts), while a random subset of jobs gets a
``/stop`` (during the run or during delivery). Afterwards every jobId must be
accounted for exactly once: delivered (a 2xx answer) or in the dead-letter
dir; none both, none neither. Exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing

import funtask
from funtask.testing import open_test_client


def build(directory: Path, tasks: int) -> funtask.Server:
    server = funtask.Server(
        "soak",
        auth_token="soak",
        dead_letter_dir=directory,
        callback_allowlist=["http://receiver.test/hooks"],
        callback_timeout=5,
        result_history=50,
    )

    async def work(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        steps = params.int("steps")
        for i in range(steps):
            run.progress(i + 1, steps, f"step {i + 1}")
            await trio.sleep(params.float("pause"))
        if params.bool("fail"):
            return funtask.fail("soak_failure", "failed on purpose")
        return funtask.ok("done").with_data("steps", steps)

    for index in range(tasks):
        server.add_task(f"t{index}", work)
    return server


async def soak(jobs: int, tasks: int, seed: int) -> int:
    rng = random.Random(seed)
    directory = Path(tempfile.mkdtemp(prefix="funtask-soak-"))
    server = build(directory, tasks)
    delivered: collections.Counter[str] = collections.Counter()
    attempts = collections.Counter[str]()

    async def receiver(request: httpx.Request) -> httpx.Response:
        job_id = json.loads(request.content)["jobId"]
        attempts[job_id] += 1
        roll = rng.random()
        if roll < 1 / 12:
            raise httpx.ConnectError("refused")
        if roll < 2 / 12:
            await trio.sleep(10)  # beyond callback_timeout
        if roll < 3 / 12:
            return httpx.Response(503, headers={"Retry-After": str(rng.randint(1, 200))})
        if roll < 4 / 12:
            return httpx.Response(500)
        delivered[job_id] += 1
        return httpx.Response(204)

    ids = [f"job-{n:05d}" for n in range(jobs)]
    pending = collections.deque(ids)
    stopped = 0
    started = time.perf_counter()
    async with open_test_client(
        server, callback_transport=httpx.MockTransport(receiver)
    ) as client:

        async def feed(task: str) -> None:
            nonlocal stopped
            while pending:
                job_id = pending.popleft()
                body: dict[str, Any] = {
                    "jobId": job_id,
                    "callbackUrl": "http://receiver.test/hooks/done",
                    "params": {
                        "steps": rng.randint(0, 5),
                        "pause": rng.random(),
                        "fail": rng.random() < 0.2,
                    },
                }
                while True:
                    response = await client.post(f"/run/{task}", json=body)
                    if response.status_code == 202:
                        break
                    assert response.status_code == 409, response.text
                    await trio.sleep(rng.random() * 5)
                if rng.random() < 0.15:
                    await trio.sleep(rng.random() * 30)
                    await client.post(f"/stop/{task}")
                    stopped += 1

        async with trio.open_nursery() as nursery:
            for index in range(tasks):
                nursery.start_soon(feed, f"t{index}")

        while any(
            t["status"] != "idle" for t in (await client.get("/health")).json()["tasks"].values()
        ):
            await trio.sleep(1)
        virtual = trio.current_time()

    letters = {json.loads(p.read_text())["jobId"] for p in directory.glob("*.json")}
    twice = [j for j, n in delivered.items() if n > 1]
    both = letters & set(delivered)
    lost = set(ids) - letters - set(delivered)
    print(f"jobs {jobs}, tasks {tasks}, seed {seed}")
    print(f"/stop requests {stopped}")
    print(f"callback attempts {sum(attempts.values())}")
    print(f"delivered {len(delivered)}, dead-lettered {len(letters)}")
    print(
        f"delivered twice {len(twice)}, delivered and dead-lettered {len(both)}, lost {len(lost)}"
    )
    print(f"virtual time {virtual:.0f} s, real time {time.perf_counter() - started:.1f} s")
    ok = not twice and not both and not lost and len(delivered) + len(letters) == jobs
    print("OK: every jobId accounted for exactly once" if ok else "FAILED")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # thousands of expected failures otherwise
    clock = trio.testing.MockClock(autojump_threshold=0)
    sys.exit(trio.run(soak, args.jobs, args.tasks, args.seed, clock=clock))


if __name__ == "__main__":
    main()
