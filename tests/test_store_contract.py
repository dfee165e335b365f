"""The store contract (SPEC section 5): one module, run against every store.

Every test takes ``store_url``; add a store by adding a param to that fixture
(the Redis store adds ``"redis"`` with its own server fixture). Nothing is
skipped: where stores differ by design (the memory store keeps nothing
across processes and bounds its history as Go does), the test says so with
``store.persistent``.

A "second process" is simulated by giving the same store object another
owner token (``store.token = ...``), which is all that ownership is.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import funtask
from funtask._stores import create_store
from funtask._stores.base import (
    WORKER_LOST_MESSAGE,
    HeldJob,
    Store,
    StoreUnavailable,
    new_token,
    new_webhook_id,
    restore_finished_job,
)
from funtask._stores.url import parse_store_url
from funtask._wire import FinishedJob, finished_job

from _redis import RedisServer


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL for each kind of store (extend ``params`` to add one)."""
    if request.param == "memory":
        return "memory"
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/store.db"
    if request.param == "redis":
        pytest.importorskip("coredis")
        redis: RedisServer = request.getfixturevalue("redis_server")
        return redis.url
    raise AssertionError(f"no store URL for {request.param!r}")  # pragma: no cover


@asynccontextmanager
async def open_store(url: str, **options: Any) -> AsyncIterator[Store]:
    settings: dict[str, Any] = {
        "name": "contract",
        "instance": "worker-1",
        "result_history": 10,
        **options,
    }
    store = create_store(parse_store_url(url), **settings)
    async with store:
        yield store


def result(
    job_id: str, message: str = "done", *, task: str = "t", at: float | None = None
) -> FinishedJob:
    return finished_job(task, job_id, funtask.ok(message).with_data("n", 1), 0.25, finished_at=at)


def failure(job_id: str, step: str = "", *, task: str = "t") -> FinishedJob:
    outcome = funtask.fail("boom", "it broke")
    if step:
        outcome = outcome._copy(last_step=step)
    return finished_job(task, job_id, outcome, 1.5)


async def test_claim_creates_a_running_record(store_url: str) -> None:
    async with open_store(store_url) as store:
        before = time.time()
        claim = await store.claim("t", "j1", callback_url="http://h/cb")
        assert claim.status == "claimed"
        job = claim.job
        assert (job.task, job.job_id, job.state) == ("t", "j1", "running")
        assert job.token == store.token
        assert job.instance == "worker-1"
        assert job.callback_url == "http://h/cb"
        assert before - 1 <= job.started <= time.time() + 1
        assert job.result is None and not job.finished
        found = await store.find("t", "j1")
        assert found is not None and found.state == "running"
        assert await store.lookup("j1") is None  # not a result until settled


async def test_claim_is_idempotent_for_its_own_token(store_url: str) -> None:
    async with open_store(store_url) as store:
        assert (await store.claim("t", "j1", callback_url=None)).status == "claimed"
        # A claim whose answer was lost finds its own token: claimed again.
        assert (await store.claim("t", "j1", callback_url=None)).status == "claimed"


async def test_claim_held_by_another_token_is_running(store_url: str) -> None:
    async with open_store(store_url) as store:
        await store.claim("t", "j1", callback_url=None)
        store.token = new_token()  # another process
        claim = await store.claim("t", "j1", callback_url=None)
        assert claim.status == "running"
        assert claim.job.instance == "worker-1"
        # Per (task, jobId): the same id in another task is a different job.
        assert (await store.claim("other", "j1", callback_url=None)).status == "claimed"


async def test_settle_then_claim_answers_stored(store_url: str) -> None:
    async with open_store(store_url) as store:
        await store.claim("t", "j1", callback_url=None)
        record = result("j1")
        webhook_id = new_webhook_id()
        settled = await store.settle("t", "j1", record, webhook_id=webhook_id, delivering=False)
        assert settled.status == "ok"
        assert settled.job is not None and settled.job.state == "done"
        claim = await store.claim("t", "j1", callback_url=None)
        assert claim.status == "stored"
        assert claim.job.result is not None
        assert claim.job.result.body == record.body
        assert claim.job.webhook_id == webhook_id
        found = await store.lookup("j1")
        assert found is not None and found.result is not None
        assert found.result.body == record.body
        assert found.result.entry == record.entry
        assert found.result.finished_at == pytest.approx(record.finished_at)


async def test_settle_is_compare_and_set(store_url: str) -> None:
    async with open_store(store_url) as store:
        await store.claim("t", "j1", callback_url=None)
        first = result("j1", "first")
        webhook_id = new_webhook_id()
        ok = await store.settle("t", "j1", first, webhook_id=webhook_id, delivering=False)
        assert ok.status == "ok"
        # The same settle again (a lost answer, re-executed): ok.
        again = await store.settle("t", "j1", first, webhook_id=webhook_id, delivering=False)
        assert again.status == "ok"
        # A late, different result is superseded and never stored over the first.
        late = await store.settle(
            "t", "j1", result("j1", "late"), webhook_id=new_webhook_id(), delivering=False
        )
        assert late.status == "superseded"
        assert late.job is not None and late.job.result is not None
        assert late.job.result.body == first.body
        found = await store.lookup("j1")
        assert found is not None and found.result is not None
        assert found.result.body == first.body


async def test_settle_with_another_token_is_superseded(store_url: str) -> None:
    async with open_store(store_url) as store:
        await store.claim("t", "j1", callback_url=None)
        settled = await store.settle(
            "t", "j1", result("j1"), webhook_id=new_webhook_id(), delivering=False, token="x"
        )
        assert settled.status == "superseded"
        found = await store.find("t", "j1")
        assert found is not None and found.state == "running"


async def test_delivering_counts_as_found_then_done(store_url: str) -> None:
    async with open_store(store_url) as store:
        await store.claim("t", "j1", callback_url="http://h/cb")
        record = failure("j1", "step 3")
        settled = await store.settle(
            "t", "j1", record, webhook_id=new_webhook_id(), delivering=True
        )
        assert settled.status == "ok"
        found = await store.lookup("j1")
        assert found is not None and found.state == "delivering"
        assert (await store.claim("t", "j1", callback_url=None)).status == "stored"
        await store.delivered("t", "j1", outcome="dead_lettered", attempts=5)
        done = await store.find("t", "j1")
        assert done is not None
        assert (done.state, done.delivery, done.attempts) == ("done", "dead_lettered", 5)
        assert done.result is not None and done.result.response["error"]["step"] == "step 3"


async def test_release_deletes_only_an_unstarted_claim_of_its_own(store_url: str) -> None:
    async with open_store(store_url) as store:
        await store.claim("t", "mine", callback_url=None)
        await store.release("t", "mine")
        assert await store.find("t", "mine") is None
        await store.claim("t", "done", callback_url=None)
        await store.settle("t", "done", result("done"), webhook_id="w", delivering=False)
        await store.release("t", "done")
        assert await store.find("t", "done") is not None
        mine = store.token
        await store.claim("t", "theirs", callback_url=None)
        store.token = new_token()
        await store.release("t", "theirs")
        store.token = mine
        assert await store.find("t", "theirs") is not None


async def test_lookup_finds_the_newest_across_tasks(store_url: str) -> None:
    async with open_store(store_url) as store:
        now = time.time()
        for task, at in (("a", now - 5), ("b", now - 1), ("c", now - 3)):
            await store.claim(task, "same", callback_url=None)
            await store.settle(
                task,
                "same",
                result("same", task, task=task, at=at),
                webhook_id="w",
                delivering=False,
            )
        found = await store.lookup("same")
        assert found is not None and found.task == "b"
        assert await store.lookup("missing") is None


async def test_history_newest_first_and_limited(store_url: str) -> None:
    async with open_store(store_url, result_history=3) as store:
        now = time.time()
        for n in range(5):
            await store.claim("t", f"j{n}", callback_url=None)
            await store.settle(
                "t", f"j{n}", result(f"j{n}", at=now + n), webhook_id="w", delivering=False
            )
        history = await store.history("t", 3)
        assert [record.job_id for record in history] == ["j4", "j3", "j2"]
        assert await store.history("nothing", 3) == []
        # Go's bounded history in memory; every result for result_ttl otherwise.
        expected = "stored" if store.persistent else "claimed"
        assert (await store.claim("t", "j0", callback_url=None)).status == expected


async def test_request_stop(store_url: str) -> None:
    async with open_store(store_url) as store:
        assert await store.request_stop("t", None) == []
        assert await store.request_stop("t", "j1") == []
        await store.claim("t", "j1", callback_url=None)
        flagged = await store.request_stop("t", "j1")
        assert [job.job_id for job in flagged] == ["j1"]
        assert flagged[0].stop
        beat = await store.heartbeat([HeldJob("t", "j1", "working")])
        assert beat.stop == {("t", "j1")}
        await store.claim("t", "j2", callback_url=None)
        several = await store.request_stop("t", None)
        assert sorted(job.job_id for job in several) == ["j1", "j2"]
        beat = await store.heartbeat([HeldJob("t", "j2")])
        assert beat.stop == frozenset()  # several: none flagged


async def test_heartbeat_reports_lost_jobs_and_the_version(store_url: str) -> None:
    async with open_store(store_url) as store:
        first = await store.heartbeat([])
        await store.claim("t", "j1", callback_url=None)
        beat = await store.heartbeat([HeldJob("t", "j1", "step one")])
        assert beat.version > first.version
        assert beat.lost == frozenset()
        found = await store.find("t", "j1")
        assert found is not None and found.last_step == "step one"
        assert found.renewed >= found.started
        store.token = new_token()
        beat = await store.heartbeat([HeldJob("t", "j1", "step two"), HeldJob("t", "gone")])
        assert beat.lost == {("t", "j1"), ("t", "gone")}


async def test_text_round_trips(store_url: str) -> None:
    odd = "a/b/../\u00e9\u2603\ud800 \U0001f600"
    async with open_store(store_url) as store:
        claim = await store.claim("t", odd, callback_url=None)
        assert claim.status == "claimed"
        await store.heartbeat([HeldJob("t", odd, "step \ud800")])
        record = failure(odd, "step \udfff")
        await store.settle("t", odd, record, webhook_id="w", delivering=False)
        found = await store.lookup(odd)
        assert found is not None and found.job_id == odd
        assert found.result is not None and found.result.body == record.body
        assert (await store.claim("t", odd, callback_url=None)).status == "stored"
        assert (
            await store.claim("t", odd.replace("\ud800", "\\ud800"), callback_url=None)
        ).status == "claimed"


async def test_restore_finished_job_is_exact() -> None:
    for record in (result("x"), failure("y", "s"), finished_job("t", "z", funtask.ok(), 61.5)):
        again = restore_finished_job(record.task, record.job_id, record.body, record.finished_at)
        assert again.body == record.body
        assert again.response == record.response
        assert again.entry == record.entry
        assert again.duration == record.duration
        assert again.success == record.success


async def test_status(store_url: str) -> None:
    async with open_store(store_url) as store:
        await store.heartbeat([])
        await store.claim("t", "running", callback_url=None)
        await store.claim("t", "done", callback_url=None)
        await store.settle("t", "done", result("done"), webhook_id="w", delivering=False)
        await store.claim("u", "done", callback_url=None)
        await store.settle("u", "done", result("done", task="u"), webhook_id="w", delivering=False)
        status = await store.status()
        assert [info.instance for info in status.instances] == ["worker-1"]
        assert [job.job_id for job in status.running] == ["running"]
        assert dict(status.results) == {"t": 1, "u": 1}


async def test_status_counts_every_stored_result(store_url: str) -> None:
    async with open_store(store_url, result_history=2) as store:
        for index in range(5):
            job_id = f"j{index}"
            await store.claim("t", job_id, callback_url=None)
            await store.settle("t", job_id, result(job_id), webhook_id="w", delivering=False)
        await store.claim("t", "cb", callback_url="http://h/cb")
        await store.settle("t", "cb", result("cb"), webhook_id="w", delivering=True)
        status = await store.status()
        # A persistent store keeps every result for result_ttl, whatever the history
        # length; the memory store keeps its history (as Go does).
        expected = 6 if store.persistent else 2
        assert dict(status.results) == {"t": expected}


async def test_recover_after_a_crash(store_url: str) -> None:
    # Redis recovers jobs whose lease expired (judged by Redis's clock): a short lease.
    lease: dict[str, Any] = {"store_lease": 1.0} if store_url.startswith("redis") else {}
    async with open_store(store_url, **lease) as store:
        await store.claim("t", "lost", callback_url="http://h/cb")
        await store.heartbeat([HeldJob("t", "lost", "halfway")])
        await store.claim("t", "sync", callback_url=None)
        await store.claim("t", "delivering", callback_url="http://h/cb")
        webhook_id = new_webhook_id()
        await store.settle(
            "t", "delivering", result("delivering"), webhook_id=webhook_id, delivering=True
        )
        await store.claim("t", "done", callback_url=None)
        await store.settle("t", "done", result("done"), webhook_id="w", delivering=False)
        if not store.persistent:  # nothing outlives a memory store's process
            assert await store.recover() == []
            return
    # The process died: its records stay as they were. The next one recovers them.
    if lease:
        await trio.sleep(1.1)
    async with open_store(store_url, instance="worker-2", **lease) as store:
        recovered = {job.job_id: job for job in await store.recover()}
        assert sorted(recovered) == ["delivering", "lost", "sync"]
        lost = recovered["lost"]
        assert (lost.state, lost.token, lost.instance) == ("delivering", store.token, "worker-2")
        assert lost.result is not None
        error = lost.result.response["error"]
        assert error == {"code": "worker_lost", "message": WORKER_LOST_MESSAGE, "step": "halfway"}
        assert lost.webhook_id and "." not in lost.webhook_id
        sync = recovered["sync"]
        assert (sync.state, sync.delivery) == ("done", "unsent")
        delivering = recovered["delivering"]
        assert delivering.state == "delivering"
        assert delivering.webhook_id == webhook_id  # kept for the redelivery
        stored = await store.lookup("lost")
        assert stored is not None and stored.result is not None
        assert stored.result.body == lost.result.body
        # A late result from the dead process is superseded, never stored over it.
        late = await store.settle(
            "t", "lost", result("lost"), webhook_id="w", delivering=True, token="dead-token"
        )
        assert late.status == "superseded"
        assert await store.recover() == []  # once


async def test_purge_drops_expired_results(store_url: str) -> None:
    async with open_store(store_url, result_ttl=60.0) as store:
        await store.claim("t", "old", callback_url=None)
        await store.settle(
            "t", "old", result("old", at=time.time() - 120), webhook_id="w", delivering=False
        )
        await store.claim("t", "new", callback_url=None)
        await store.settle("t", "new", result("new"), webhook_id="w", delivering=False)
        purged = await store.purge()
        if store.kind == "redis":  # Redis expires results by itself (finished + result_ttl)
            assert purged == 0
            assert await store.lookup("old") is None
        elif store.persistent:
            assert purged == 1
            assert await store.lookup("old") is None
            assert (await store.claim("t", "old", callback_url=None)).status == "claimed"
        else:  # the memory store's history is bounded instead
            assert purged == 0
        assert await store.lookup("new") is not None


async def test_calls_on_a_closed_persistent_store_are_unavailable(store_url: str) -> None:
    store = create_store(
        parse_store_url(store_url), name="contract", instance="w", result_history=10
    )
    if not store.persistent:  # the memory store has nothing to be unavailable
        assert await store.check()
        return
    with pytest.raises(StoreUnavailable, match="unavailable"):
        await store.claim("t", "j", callback_url=None)
    assert not await store.check()
