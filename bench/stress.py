"""Stress test: many concurrent clients against a real worker on loopback (run by hand).

    python bench/stress.py [--duration 60] [--clients 50] [--tasks 5] [--seed 1]
    python bench/stress.py --duration 10            # a smoke run

One process, one Trio run: the worker (hypercorn through ``Server.serve`` on
127.0.0.1), a callback receiver (hypercorn serving a tiny ASGI app on another
port) that fails some attempts (500, 503 with Retry-After, slow answers), and
``--clients`` client tasks, each with its own httpx connection pool. For
``--duration`` seconds each client picks at random: a sync ``/run``, an async
``/run`` (callbackUrl), ``/stop``, ``/health``, ``/result`` (known and unknown
jobIds) or holding an ``/events`` stream for a few seconds, on a random task.

Afterwards (the load stopped, every delivery settled, the worker shut down),
it checks and exits 1 on any failure:

- no 5xx answers (504s only with ``--sync-timeouts``, which adds slow sync runs),
  no transport errors or timeouts;
- every task idle before shutdown;
- every jobId the worker took on is accounted for exactly once: its result in
  the sync response, a successful callback (2xx), or the dead-letter dir --
  never two of them, never none, never two callbacks or two letters;
- no /events subscriber left (``runtime.events.clients == 0``) and no task left
  in the worker's nurseries once idle;
- RSS (``VmRSS`` of this process, sampled every second) stable: the second
  half of the run grows it by less than ``--rss-slack`` MiB.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import random
import shutil
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

import funtask

TOKEN = "stress-token"
SYNC_TIMEOUT = 5.0
HTTP_TIMEOUT = 60.0  # per request; a timeout is a failure
SSL_CONTEXT = ssl.create_default_context()  # unused on http://, but httpx builds one per client


def rss_kib() -> int:
    """This process's resident set size in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def task_names(task: trio.lowlevel.Task) -> collections.Counter[str]:
    """The names of the tasks in the tree under ``task`` (itself included)."""
    names = collections.Counter([task.name.rsplit(".", 1)[-1]])
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            names += task_names(child)
    return names


@dataclass
class Tally:
    statuses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    sync_results: set[str] = field(default_factory=set)  # result came in the response
    sync_timeouts: set[str] = field(default_factory=set)  # 504: result must be dead-lettered
    accepted: set[str] = field(default_factory=set)  # 202: callback or dead letter
    delivered: collections.Counter[str] = field(default_factory=collections.Counter)
    callback_attempts: int = 0
    receiver_disconnects: int = 0
    confirmed: collections.Counter[str] = field(default_factory=collections.Counter)
    max_lag: float = 0.0
    max_lag_at: float = 0.0
    streams: int = 0
    frames: int = 0
    requests: int = 0


def build_server(directory: Path, tasks: int, callback_prefix: str) -> funtask.Server:
    server = funtask.Server(
        "stress",
        auth_token=TOKEN,
        dead_letter_dir=directory,
        callback_allowlist=[callback_prefix],
        callback_retries=3,
        callback_timeout=2,
        sync_timeout=SYNC_TIMEOUT,
        result_history=20,
        shutdown_timeout=30,
    )

    async def work(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        steps = params.int("steps", 1)
        pause = params.float("pause", 0.0)
        for i in range(steps):
            run.progress(i + 1, steps, f"step {i + 1}")
            await trio.sleep(pause / max(steps, 1))
        outcome = params.str("outcome", "ok")
        if outcome == "fail":
            return funtask.fail("stress_failure", "failed on purpose")
        if outcome == "panic":
            raise RuntimeError("panicked on purpose")
        return funtask.ok("done").with_data("steps", steps)

    for index in range(tasks):
        server.add_task(f"t{index}", work, description=f"stress task {index}")
    return server


class DeliveryLog(logging.Handler):
    """Counts the deliveries the worker itself confirmed (its "callback delivered" records)."""

    def __init__(self, tally: Tally) -> None:
        super().__init__(logging.INFO)
        self.tally = tally

    def emit(self, record: logging.LogRecord) -> None:
        if "callback delivered" in record.msg and isinstance(record.args, tuple):
            self.tally.confirmed[str(record.args[1])] += 1


def receiver_app(tally: Tally, rng: random.Random) -> Any:
    """An ASGI callback receiver: ~30 % of attempts fail, some answers are slow."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                tally.receiver_disconnects += 1
                return  # the worker gave up on this attempt (timeout or /stop)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        job_id = json.loads(body)["jobId"]
        tally.callback_attempts += 1
        roll = rng.random()
        headers = [(b"content-length", b"0")]
        if roll < 0.15:
            status = 500
        elif roll < 0.25:
            status = 503
            headers.append((b"retry-after", b"1"))
        elif roll < 0.30:
            status = 429
        else:
            if roll < 0.35:
                await trio.sleep(0.5)  # slow, but within callback_timeout
            status = 204
        if status == 204:
            tally.delivered[job_id] += 1
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    return app


class Client:
    """One simulated orchestrator: its own connection pool, random calls in a loop."""

    def __init__(
        self, base_url: str, callback_url: str, tasks: int, tally: Tally, seed: int, slow: bool
    ) -> None:
        self.base_url = base_url
        self.callback_url = callback_url
        self.tasks = tasks
        self.tally = tally
        self.rng = random.Random(seed)
        self.slow = slow
        self.seq = 0
        self.seed = seed

    def task(self) -> str:
        return f"t{self.rng.randrange(self.tasks)}"

    def params(self, *, sync: bool) -> dict[str, Any]:
        rng = self.rng
        pause = rng.random() * (0.5 if sync else 3.0)
        if sync and self.slow and rng.random() < 0.05:
            pause = SYNC_TIMEOUT + 1  # a documented 504
        outcome = rng.choices(["ok", "fail", "panic"], [0.85, 0.1, 0.05])[0]
        return {"steps": rng.randint(0, 5), "pause": pause, "outcome": outcome}

    def new_job_id(self) -> str:
        self.seq += 1
        return f"c{self.seed}-{self.seq}"

    def record(self, kind: str, response: httpx.Response) -> None:
        self.tally.requests += 1
        self.tally.statuses[(kind, response.status_code)] += 1

    async def run(self, deadline: float, known: list[str]) -> None:
        async with httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=HTTP_TIMEOUT,
            verify=SSL_CONTEXT,  # one shared context: building one blocks for ~40 ms
        ) as client:
            while trio.current_time() < deadline:
                action = self.rng.choices(
                    ["sync", "async", "stop", "health", "result", "events"],
                    [35, 20, 5, 15, 15, 10],
                )[0]
                try:
                    await getattr(self, f"do_{action}")(client, known)
                except (httpx.HTTPError, OSError) as exc:
                    self.tally.errors[f"{action}: {type(exc).__name__}"] += 1
                await trio.sleep(self.rng.random() * 0.05)

    async def do_sync(self, client: httpx.AsyncClient, known: list[str]) -> None:
        job_id = self.new_job_id()
        response = await client.post(
            f"/run/{self.task()}", json={"jobId": job_id, "params": self.params(sync=True)}
        )
        self.record("run-sync", response)
        if response.status_code == 200:
            assert response.json()["jobId"] == job_id
            self.tally.sync_results.add(job_id)
            known.append(job_id)
        elif response.status_code == 504:
            self.tally.sync_timeouts.add(job_id)

    async def do_async(self, client: httpx.AsyncClient, known: list[str]) -> None:
        job_id = self.new_job_id()
        body = {
            "jobId": job_id,
            "callbackUrl": self.callback_url,
            "params": self.params(sync=False),
        }
        response = await client.post(f"/run/{self.task()}", json=body)
        self.record("run-async", response)
        if response.status_code == 202:
            self.tally.accepted.add(job_id)
            known.append(job_id)

    async def do_stop(self, client: httpx.AsyncClient, known: list[str]) -> None:
        self.record("stop", await client.post(f"/stop/{self.task()}"))

    async def do_health(self, client: httpx.AsyncClient, known: list[str]) -> None:
        response = await client.get("/health")
        self.record("health", response)
        if response.status_code == 200:
            assert response.json()["status"] == "ok"

    async def do_result(self, client: httpx.AsyncClient, known: list[str]) -> None:
        job_id = self.rng.choice(known) if known and self.rng.random() < 0.8 else "unknown-id"
        self.record("result", await client.get(f"/result/{job_id}"))

    async def do_events(self, client: httpx.AsyncClient, known: list[str]) -> None:
        hold = 1 + self.rng.random() * 4
        async with client.stream("GET", "/events") as response:
            self.record("events", response)
            if response.status_code != 200:
                await response.aread()
                return
            self.tally.streams += 1
            with trio.move_on_after(hold):
                async for chunk in response.aiter_raw():
                    self.tally.frames += chunk.count(b"data: ")


async def stress(args: argparse.Namespace) -> int:
    directory = Path(tempfile.mkdtemp(prefix="funtask-stress-"))
    tally = Tally()
    deliveries = logging.getLogger("funtask.callbacks")
    deliveries.setLevel(logging.INFO)
    deliveries.propagate = False
    deliveries.addHandler(DeliveryLog(tally))
    rng = random.Random(args.seed)
    rss: list[tuple[float, int]] = []
    failures: list[str] = []
    report: dict[str, Any] = {}

    async with trio.open_nursery() as outer:
        # The callback receiver.
        receiver_config = Config()
        receiver_config.bind = ["127.0.0.1:0"]
        receiver_config.accesslog = None
        receiver_stop = trio.Event()
        receiver_binds = await outer.start(
            partial(
                hypercorn_serve,
                receiver_app(tally, rng),
                receiver_config,
                shutdown_trigger=receiver_stop.wait,
            )
        )
        callback_prefix = receiver_binds[0] + "/hooks"
        server = build_server(directory, args.tasks, callback_prefix)

        # The worker.
        stop_worker = trio.Event()
        worker_done = trio.Event()

        async def run_worker(task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await server.serve(
                    "127.0.0.1:0", shutdown_trigger=stop_worker.wait, task_status=task_status
                )
            finally:
                worker_done.set()

        binds: list[str] = await outer.start(run_worker)
        base_url = binds[0]
        runtime = server._runtime
        assert runtime is not None
        root = trio.lowlevel.current_root_task()

        async def sample_rss() -> None:
            while True:
                rss.append((time.monotonic(), rss_kib()))
                await trio.sleep(1)

        started = time.monotonic()

        async def watch_lag() -> None:
            while True:
                before = trio.current_time()
                await trio.sleep(0.1)
                lag = trio.current_time() - before - 0.1
                if lag > tally.max_lag:
                    tally.max_lag, tally.max_lag_at = lag, time.monotonic() - started

        outer.start_soon(sample_rss)
        outer.start_soon(watch_lag)
        await trio.sleep(0.2)
        tasks_before = task_names(root)
        started = time.monotonic()  # the load starts now
        print(
            f"worker {base_url}, receiver {receiver_binds[0]}, {args.clients} clients, "
            f"{args.tasks} tasks, {args.duration:.0f} s",
            flush=True,
        )
        deadline = trio.current_time() + args.duration
        known: list[str] = []
        async with trio.open_nursery() as clients:
            for index in range(args.clients):
                client = Client(
                    base_url,
                    callback_prefix + "/done",
                    args.tasks,
                    tally,
                    args.seed * 1000 + index,
                    args.sync_timeouts,
                )
                clients.start_soon(client.run, deadline, known)
        load_seconds = time.monotonic() - started

        # Let every job and delivery settle, then look at the worker while it is idle.
        async with httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as client:
            with trio.move_on_after(300) as settle:
                while True:
                    health = (await client.get("/health")).json()
                    if all(t["status"] == "idle" for t in health["tasks"].values()):
                        break
                    await trio.sleep(0.5)
            if settle.cancelled_caught:
                failures.append("tasks still busy 300 s after the load ended")
        settle_seconds = time.monotonic() - started - load_seconds
        await trio.sleep(0.5)  # let closed streams and connections unwind
        subscribers = runtime.events.clients
        runtime_tasks = len(runtime.nursery.child_tasks)
        job_tasks = len(runtime.runner.nursery.child_tasks) if runtime.runner.nursery else 0
        tasks_after = task_names(root)
        if subscribers:
            failures.append(f"{subscribers} /events subscribers left")
        if runtime_tasks or job_tasks:
            failures.append(f"tasks left in the worker: runtime {runtime_tasks}, jobs {job_tasks}")

        stop_worker.set()
        await worker_done.wait()
        receiver_stop.set()
        outer.cancel_scope.cancel()

    # -- accounting -----------------------------------------------------------------------------
    # "Delivered" is the worker's own view (a 2xx it received: it then deletes the letter).
    # The receiver may also have answered 2xx to an attempt the worker gave up on (timeout,
    # /stop): that result is then both received and dead-lettered -- at-least-once delivery,
    # reported as a redelivery, not as a loss.
    letters: collections.Counter[str] = collections.Counter()
    meta: dict[str, dict[str, Any]] = {}
    for path in directory.glob("*.json"):
        document = json.loads(path.read_text())
        letters[document["jobId"]] += 1
        meta[document["jobId"]] = document["deadLetter"]
    delivered = tally.confirmed
    received = tally.delivered
    taken = tally.sync_results | tally.sync_timeouts | tally.accepted
    redelivered = sorted(set(received) & set(letters) - set(delivered))
    problems = {
        "delivered twice": [j for j, n in delivered.items() if n > 1],
        "dead-lettered twice": [j for j, n in letters.items() if n > 1],
        "confirmed but never received": sorted(set(delivered) - set(received)),
        "sync result also dead-lettered": sorted(tally.sync_results & set(letters)),
        "sync result also called back": sorted(tally.sync_results & set(received)),
        "504 without a dead letter": sorted(tally.sync_timeouts - set(letters)),
        "delivered and dead-lettered": sorted(set(delivered) & set(letters)),
        "accepted but lost": sorted(tally.accepted - set(delivered) - set(letters)),
        "unknown jobIds": sorted((set(received) | set(letters)) - taken),
    }
    for name, ids in problems.items():
        if ids:
            failures.append(f"{name}: {len(ids)} (e.g. {ids[:3]})")

    server_errors = {k: n for k, n in tally.statuses.items() if k[1] >= 500}
    unexpected_5xx = {
        k: n
        for k, n in server_errors.items()
        if not (k == ("run-sync", 504) and args.sync_timeouts)
    }
    if unexpected_5xx:
        failures.append(f"5xx answers: {unexpected_5xx}")
    if tally.errors:
        failures.append(f"transport errors: {dict(tally.errors)}")

    # -- RSS --------------------------------------------------------------------------------------
    values = [kib for _, kib in rss]
    half = len(values) // 2
    first_half_max = max(values[: half or 1])
    growth = (max(values[half:]) - first_half_max) / 1024 if len(values) > 2 else 0.0
    if growth > args.rss_slack:
        failures.append(f"RSS grew {growth:.1f} MiB in the second half")

    by_kind: dict[str, dict[int, int]] = collections.defaultdict(dict)
    for (kind, status), n in sorted(tally.statuses.items()):
        by_kind[kind][status] = n
    report = {
        "clients": args.clients,
        "tasks": args.tasks,
        "duration_s": args.duration,
        "load_s": round(load_seconds, 1),
        "settle_s": round(settle_seconds, 1),
        "requests": tally.requests,
        "requests_per_s": round(tally.requests / load_seconds, 1),
        "statuses": by_kind,
        "5xx": sum(server_errors.values()),
        "transport_errors": dict(tally.errors),
        "jobs": {
            "sync_results": len(tally.sync_results),
            "sync_timeouts_504": len(tally.sync_timeouts),
            "async_accepted": len(tally.accepted),
            "callbacks_delivered": len(delivered),
            "callback_attempts": tally.callback_attempts,
            "receiver_disconnects": tally.receiver_disconnects,
            "dead_letters": sum(letters.values()),
            "received_but_dead_lettered": {
                job_id: "attempts={attempts} lastError={lastError}".format(**meta[job_id])
                for job_id in redelivered[:10]
            },
        },
        "max_event_loop_lag_s": round(tally.max_lag, 3),
        "max_lag_at_s": round(tally.max_lag_at, 1),
        "events": {"streams": tally.streams, "frames": tally.frames, "left": subscribers},
        "trio_tasks": {
            "before_load": sum(tasks_before.values()),
            "after_load_idle": sum(tasks_after.values()),
            # Pooled keep-alive connections (the worker's callback client to the receiver)
            # keep their hypercorn connection tasks; anything else would be a leak.
            "new_after_load": dict(tasks_after - tasks_before),
            "worker_runtime_and_job_nurseries": runtime_tasks + job_tasks,
        },
        "rss_mib": {
            "start": round(values[0] / 1024, 1),
            "max": round(max(values) / 1024, 1),
            "end": round(values[-1] / 1024, 1),
            "second_half_growth": round(growth, 1),
        },
        "failures": failures,
    }
    print(json.dumps(report, indent=2))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2))
    if failures:
        print(f"FAILED (dead letters kept in {directory})", flush=True)
        return 1
    shutil.rmtree(directory)
    print("OK", flush=True)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--sync-timeouts",
        action="store_true",
        help="make 5%% of sync runs outlast the sync timeout (documented 504s)",
    )
    parser.add_argument("--rss-slack", type=float, default=30.0, help="MiB")
    parser.add_argument("--report", help="also write the JSON report to this file")
    args = parser.parse_args()
    if not (args.duration > 0 and math.isfinite(args.duration)) or args.clients < 1:
        parser.error("--duration and --clients must be positive")
    # Expected failures (panics, refused callbacks) would flood the output otherwise.
    logging.basicConfig(level=logging.CRITICAL)
    sys.exit(trio.run(stress, args))


if __name__ == "__main__":
    main()
