"""Three real worker processes sharing one redis-server act as one pool (SPEC section 5).

Real clock throughout: leases are judged by Redis's clock. The soak
(``-m soak``) is run by hand: ``python -m pytest -m soak tests/test_pool_redis.py``.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from funtask._stores.url import parse_store_url

from _redis import RedisServer
from _support import TOKEN, CallbackReceiver, WorkerProcess, worker_env, worker_process

pytest.importorskip("coredis")

AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 60.0  # seconds; a safety net per test, never a wait for a state


class Replica:
    """One worker process of the pool; :meth:`start` again after a kill."""

    def __init__(
        self, name: str, env: dict[str, str], dead_letters: Path, nursery: trio.Nursery
    ) -> None:
        self.name = name
        self.env = env
        self.dead_letters = dead_letters
        self.nursery = nursery
        self.worker: WorkerProcess | None = None
        self.quit = trio.Event()
        self.done = trio.Event()

    @property
    def url(self) -> str:
        assert self.worker is not None
        return self.worker.url

    async def start(self) -> None:
        """Start the process (in the pool's nursery); return once it serves."""
        self.quit, self.done = trio.Event(), trio.Event()
        await self.nursery.start(self._run)

    async def _run(self, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            args = [sys.executable, "tests/pool_app.py", "127.0.0.1:0"]
            async with worker_process(args, env=self.env) as worker:
                self.worker = worker
                task_status.started()
                await self.quit.wait()
        finally:
            self.worker = None
            self.done.set()

    def kill(self) -> None:
        """``kill -9`` the process."""
        assert self.worker is not None
        self.worker.send(signal.SIGKILL)

    async def stop(self) -> None:
        """Kill the process group (if still there) and wait until it is gone."""
        self.quit.set()
        await self.done.wait()

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=AUTH, timeout=LIMIT)


@asynccontextmanager
async def open_pool(
    redis: RedisServer,
    tmp_path: Path,
    receiver_url: str,
    *,
    replicas: int = 3,
    store_lease: float = 60,
    callback_retries: int = 2,
) -> AsyncIterator[list[Replica]]:
    origin = receiver_url.rsplit("/", 1)[0]
    async with trio.open_nursery() as nursery:
        pool = []
        for index in range(replicas):
            dead_letters = tmp_path / f"dead-letters-{index}"
            dead_letters.mkdir()
            env = worker_env(
                FUNTASK_STORE=redis.url,
                FUNTASK_AUTH_TOKEN=TOKEN,
                FUNTASK_DEAD_LETTER_DIR=str(dead_letters),
                POOL_APP_INSTANCE=f"replica-{index}",
                POOL_APP_STORE_LEASE=str(store_lease),
                POOL_APP_CALLBACK_ALLOWLIST=origin,
                POOL_APP_CALLBACK_RETRIES=str(callback_retries),
            )
            pool.append(Replica(f"replica-{index}", env, dead_letters, nursery))
        try:
            async with trio.open_nursery() as starting:
                for replica in pool:
                    starting.start_soon(replica.start)
            yield pool
        finally:
            for replica in pool:
                replica.quit.set()


def payloads(receiver: CallbackReceiver) -> list[dict[str, Any]]:
    return [json.loads(attempt.body) for attempt in receiver.attempts]


async def wait_for(predicate: Any, limit: float, what: str) -> float:
    """Poll ``predicate`` every 20 ms for up to ``limit`` s; return the seconds it took."""
    start = time.monotonic()
    with trio.move_on_after(limit):
        while True:
            outcome = predicate()
            if not isinstance(outcome, bool):
                outcome = await outcome
            if outcome:
                return time.monotonic() - start
            await trio.sleep(0.02)
    raise AssertionError(f"{what}: not within {limit}s")


async def test_one_job_pool_wide_and_results_from_any_replica(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    receiver = CallbackReceiver()
    with receiver.listen() as hook, trio.fail_after(LIMIT):
        async with open_pool(redis_server, tmp_path, hook) as pool:
            body = {"jobId": "same", "callbackUrl": hook, "params": {"seconds": 0.5}}
            answers: list[httpx.Response] = []

            async def post(replica: Replica) -> None:
                async with replica.client() as client:
                    answers.append(await client.post("/run/slow", json=body))

            async with trio.open_nursery() as nursery:
                for replica in pool:
                    nursery.start_soon(post, replica)
            codes = sorted(answer.status_code for answer in answers)
            assert codes == [200, 200, 202], [a.text for a in answers]
            for answer in answers:
                if answer.status_code == 200:
                    assert answer.json()["status"] == "running"
            await wait_for(lambda: len(receiver.attempts) >= 1, 10, "the callback")
            await trio.sleep(0.5)
            assert [p["jobId"] for p in payloads(receiver)] == ["same"]
            for replica in pool:
                async with replica.client() as client:
                    result = await client.get("/result/same")
                    assert result.status_code == 200
                    assert result.json()["message"] == "slept"
                    again = await client.post("/run/slow", json=body)
                    assert again.status_code == 200
                    assert again.json()["message"] == "slept"


async def test_stop_by_job_id_on_another_replica(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    receiver = CallbackReceiver()
    with receiver.listen() as hook, trio.fail_after(LIMIT):
        async with open_pool(redis_server, tmp_path, hook, store_lease=3) as pool:
            first, second = pool[0], pool[1]
            async with first.client() as client:
                answer = await client.post(
                    "/run/slow", json={"jobId": "long", "callbackUrl": hook}
                )
                assert answer.status_code == 202
            async with second.client() as client:
                # Another replica's /health shows the job in the pool, with its instance.
                await wait_for(lambda: _health_shows(client, "long"), 5, "the pool view")
                health = (await client.get("/health")).json()
                assert health["instance"] == "replica-1"
                (running,) = health["pool"]["running"]
                assert running["instance"] == "replica-0"
                assert running["currentStep"] == "sleeping"
                assert {i["instance"] for i in health["pool"]["instances"]} <= {
                    "replica-0",
                    "replica-1",
                    "replica-2",
                }
                stopped = await client.post("/stop/slow", params={"jobId": "long"})
                sent = time.monotonic()
                assert stopped.status_code == 200, stopped.text
            await wait_for(lambda: len(receiver.attempts) >= 1, 5, "the stopped job's callback")
            elapsed = receiver.attempts[0].at - sent
            assert elapsed < 1.5, elapsed
            assert payloads(receiver)[0]["success"] is False


async def _health_shows(client: httpx.AsyncClient, job_id: str) -> bool:
    """Whether ``/health`` shows the job running in the pool, with its step."""
    health = (await client.get("/health")).json()
    return any(
        job["jobId"] == job_id and "currentStep" in job
        for job in health.get("pool", {}).get("running", [])
    )


async def test_kill_9_is_settled_as_worker_lost(redis_server: RedisServer, tmp_path: Path) -> None:
    receiver = CallbackReceiver()
    lease = 2.0
    with receiver.listen() as hook, trio.fail_after(LIMIT):
        async with open_pool(redis_server, tmp_path, hook, store_lease=lease) as pool:
            victim = pool[0]
            async with victim.client() as client:
                answer = await client.post(
                    "/run/slow", json={"jobId": "doomed", "callbackUrl": hook}
                )
                assert answer.status_code == 202
            await trio.sleep(1.2)  # one heartbeat at least stamps its step
            victim.kill()
            await wait_for(
                lambda: len(receiver.attempts) >= 1, lease + 5, "the worker_lost callback"
            )
            payload = payloads(receiver)[0]
            assert payload["jobId"] == "doomed"
            assert payload["error"]["code"] == "worker_lost"
            assert payload["error"].get("step") == "sleeping"
            async with pool[1].client() as client:
                result = await client.get("/result/doomed")
                assert result.json()["error"]["code"] == "worker_lost"


async def test_redis_outage(redis_server: RedisServer, tmp_path: Path) -> None:
    receiver = CallbackReceiver()
    with receiver.listen() as hook, trio.fail_after(LIMIT):
        async with open_pool(redis_server, tmp_path, hook) as pool:
            for index, replica in enumerate(pool):
                async with replica.client() as client:
                    answer = await client.post(
                        "/run/slow",
                        json={
                            "jobId": f"through-{index}",
                            "callbackUrl": hook,
                            "params": {"seconds": 2},
                        },
                    )
                    assert answer.status_code == 202
            redis_server.stop()
            outage = time.monotonic()
            for replica in pool:
                async with replica.client() as client:
                    for _ in range(3):  # the first call may be the one that notices
                        answer = await client.post("/run/quick", json={})
                    assert answer.status_code == 503
                    assert answer.headers["Retry-After"] == "1"
                    assert answer.json() == {"error": "result store unavailable"}
                    result = await client.get("/result/through-0")
                    assert result.status_code == 503
            await trio.sleep(max(0, outage + 5 - time.monotonic()))
            redis_server.start()
            restarted = time.monotonic()

            async def serving(replica: Replica) -> bool:
                async with replica.client() as client:
                    return (await client.post("/run/quick", json={})).status_code == 200

            for replica in pool:
                await wait_for(
                    lambda replica=replica: serving(replica),
                    max(0.1, restarted + 10 - time.monotonic()),
                    f"{replica.name} serving again",
                )
            await wait_for(lambda: len(receiver.attempts) >= 3, 15, "every result delivered")
            ids = sorted(p["jobId"] for p in payloads(receiver))
            assert ids == ["through-0", "through-1", "through-2"], ids


@pytest.mark.soak
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # killed mid-read
async def test_soak(redis_server: RedisServer, tmp_path: Path) -> None:
    """1,000 async jobs, a third of callback attempts failing, random stops, one kill -9."""
    rng = random.Random(12)
    total = 1000

    def answer(request: httpx.Request) -> int:
        return 500 if rng.random() < 1 / 3 else 200

    receiver = CallbackReceiver(answer)
    accepted: set[str] = set()
    job_tasks: dict[str, str] = {}
    with receiver.listen() as hook, trio.fail_after(600):
        async with open_pool(
            redis_server, tmp_path, hook, store_lease=3, callback_retries=2
        ) as pool:

            async def submit(job_id: str) -> None:
                body = {
                    "jobId": job_id,
                    "callbackUrl": hook,
                    "params": {"seconds": rng.random() / 50},
                }
                task = job_tasks[job_id] = f"slow-{rng.randrange(10)}"
                while True:
                    replica = rng.choice(pool)
                    if replica.worker is None:
                        await trio.sleep(0.05)
                        continue
                    try:
                        async with replica.client() as client:
                            answer = await client.post(f"/run/{task}", json=body)
                            if rng.random() < 0.05:
                                await client.post(f"/stop/{task}", params={"jobId": job_id})
                    except httpx.TransportError:
                        await trio.sleep(0.05)
                        continue
                    if answer.status_code in (200, 202):
                        accepted.add(job_id)
                        return
                    await trio.sleep(0.01)

            limiter = trio.CapacityLimiter(6)

            async def one(index: int) -> None:
                async with limiter:
                    await submit(f"soak-{index}")

            async def kill_halfway() -> None:
                await wait_for(lambda: len(accepted) >= total // 2, 300, "half the jobs")
                victim = pool[1]
                victim.kill()
                await victim.stop()
                await victim.start()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_halfway)
                for index in range(total):
                    nursery.start_soon(one, index)
            assert len(accepted) == total

            # Settled: no lease left in Redis (every job done), then every delivery over.
            leases = "{funtask:pool-app}:leases"
            await wait_for(lambda: redis_server.cli("ZCARD", leases) == "0", 120, "all done")
            from funtask._stores.redis import RedisStore

            store = RedisStore(
                parse_store_url(redis_server.url),
                name="pool-app",
                instance="soak-check",
                result_history=10,
            )
            async with store:
                records = {
                    job_id: await store.find(job_tasks[job_id], job_id)
                    for job_id in sorted(accepted)
                }
            answered = {p["jobId"] for p in payloads(receiver)}  # one attempt at least
            dead = _dead_lettered(pool)
            outcomes = Counter(
                job.delivery if job is not None else "no record" for job in records.values()
            )
            problems = [
                (job_id, job.state if job else None, job.delivery if job else None)
                for job_id, job in records.items()
                if job is None
                or job.state != "done"
                or (job.delivery == "delivered" and job_id not in answered)
                or (job.delivery == "dead_lettered" and job_id not in dead)
            ]
            print(
                f"soak: {total} jobs accepted, {len(receiver.attempts)} callback attempts "
                f"(~1/3 answered 500), outcomes {dict(outcomes)}, {len(dead)} dead letters"
            )
            assert not problems, problems[:20]
            async with pool[0].client() as client:
                for index in range(total):
                    result = await client.get(f"/result/soak-{index}")
                    assert result.status_code == 200, (index, result.text)


def _dead_lettered(pool: list[Replica]) -> set[str]:
    ids = set()
    for replica in pool:
        for path in replica.dead_letters.glob("*.json"):
            try:
                ids.add(json.loads(path.read_text())["jobId"])
            except (ValueError, KeyError, OSError):
                continue
    return ids


async def test_sigterm_is_a_clean_exit_that_leaves_the_pool(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    receiver = CallbackReceiver()
    with receiver.listen() as hook, trio.fail_after(LIMIT):
        async with open_pool(redis_server, tmp_path, hook, replicas=1) as (replica,):
            key = "{funtask:pool-app}:instances"
            await wait_for(lambda: redis_server.cli("ZCARD", key) == "1", 5, "the heartbeat")
            assert replica.worker is not None
            sent = replica.worker.sigterm()
            await replica.worker.exit_after(sent, 15, code=0)
            assert "Traceback" not in replica.worker.log(), replica.worker.log()
            assert redis_server.cli("ZCARD", key) == "0"
