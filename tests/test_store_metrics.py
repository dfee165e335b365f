"""The store metrics of GET /metrics (SPEC section 6) and the observer hooks that feed them.

With a persistent store a server adds ``funtask_store_up``,
``funtask_store_errors_total{operation}``, ``funtask_jobs_recovered_total{state}``,
``funtask_leases_lost_total`` and ``funtask_results_superseded_total``; with the
memory store none of them exist. Everything runs in process on the real SQLite
store under the autojump mock clock; outages are an authorizer that makes
SQLite refuse every statement (as in ``test_store_server.py``), and the jobs
of a process that is gone are records left by a store opened here with
another owner token (as in ``test_store_contract.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio.testing import MockClock

import funtask
from funtask._deadletters import scan_dead_letters, write_dead_letter
from funtask._jobs import Job
from funtask._observe import (
    STORE_OPERATIONS,
    Observer,
    RecoveredState,
    StoreOperation,
    combine_observers,
)
from funtask._stores import create_store
from funtask._stores.base import HeldJob, StoredJob, new_webhook_id
from funtask._stores.url import parse_store_url
from funtask._wire import FinishedJob, finished_job
from funtask.testing import open_test_client

from _support import (
    CallbackReceiver,
    break_store,
    build_server,
    mend_store,
    sqlite_store,
    wait_idle,
    wait_until,
)

HOOK = "https://hooks.example.com/hooks/done"
STORE_METRICS = (
    "funtask_store_up",
    "funtask_store_errors_total",
    "funtask_jobs_recovered_total",
    "funtask_leases_lost_total",
    "funtask_results_superseded_total",
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def store_url(tmp_path: Path) -> str:
    (tmp_path / "db").mkdir(exist_ok=True)
    return f"sqlite://{tmp_path}/db/jobs.db"


def make_server(tmp_path: Path, **config: Any) -> funtask.Server:
    config.setdefault("store", store_url(tmp_path))
    config.setdefault("callback_allowlist", ["https://hooks.example.com/hooks"])
    server = build_server(tmp_path, **config)

    @server.task
    async def quick(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        return funtask.ok("done")

    @server.task
    async def later(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        await trio.sleep(5)
        return funtask.ok("late")

    return server


def store_ok(server: funtask.Server) -> bool:
    return server._runtime is not None and server._runtime.keeper.ok


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, metric: str, **labels: str) -> float:
    """One sample's value; a missing sample is an error (not 0)."""
    return samples[(metric, frozenset(labels.items()))]


def errors(samples: Samples) -> dict[str, float]:
    """``funtask_store_errors_total`` by operation (every operation's child must exist)."""
    return {
        operation: value(samples, "funtask_store_errors_total", operation=operation)
        for operation in STORE_OPERATIONS
    }


def no_errors_but(**counts: int) -> dict[str, float]:
    return {operation: counts.get(operation, 0) for operation in STORE_OPERATIONS}


# -- with the memory store: nothing ---------------------------------------------------


async def test_the_memory_store_adds_no_store_metrics(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with open_test_client(build_server(tmp_path)) as client:
        assert (await client.post("/run/greet", json={})).status_code == 200
        samples = await scrape(client)
    names = {name for name, _ in samples}
    assert "funtask_jobs_started_total" in names
    assert not [name for name in names if name.startswith(STORE_METRICS)]


# -- start-up and recovery -------------------------------------------------------------


async def test_series_exist_from_start_up(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_test_client(make_server(tmp_path)) as client:
        samples = await scrape(client)
    assert value(samples, "funtask_store_up") == 1
    assert errors(samples) == no_errors_but()
    assert value(samples, "funtask_jobs_recovered_total", state="running") == 0
    assert value(samples, "funtask_jobs_recovered_total", state="delivering") == 0
    assert value(samples, "funtask_leases_lost_total") == 0
    assert value(samples, "funtask_results_superseded_total") == 0


async def leave_jobs_behind(tmp_path: Path) -> None:
    """What a killed process leaves: two running jobs (one with a callback) and a delivery."""
    store = create_store(
        parse_store_url(store_url(tmp_path)), name="testsrv", instance="gone", result_history=10
    )
    async with store:
        await store.claim("later", "lost-cb", callback_url=HOOK)
        await store.heartbeat([HeldJob("later", "lost-cb", "halfway")])
        await store.claim("later", "lost-sync", callback_url=None)
        await store.claim("quick", "delivering", callback_url=HOOK)
        done = finished_job("quick", "delivering", funtask.ok("done"), 0.5)
        settled = await store.settle(
            "quick", "delivering", done, webhook_id=new_webhook_id(), delivering=True
        )
        assert settled.status == "ok"
        await store.claim("quick", "finished", callback_url=None)
        await store.settle(
            "quick",
            "finished",
            finished_job("quick", "finished", funtask.ok("done"), 0.5),
            webhook_id=new_webhook_id(),
            delivering=False,
        )


async def test_jobs_recovered_after_a_restart_by_the_state_they_were_left_in(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    await leave_jobs_behind(tmp_path)
    receiver = CallbackReceiver(200)
    server = make_server(tmp_path)
    async with open_test_client(server, callback_transport=receiver.transport()) as client:
        samples = await scrape(client)
        await wait_until(lambda: len(receiver.attempts) == 2, interval=0.1)
        await wait_idle(client)
        after = await scrape(client)
    assert value(samples, "funtask_jobs_recovered_total", state="running") == 2
    assert value(samples, "funtask_jobs_recovered_total", state="delivering") == 1
    assert value(samples, "funtask_store_up") == 1
    assert errors(samples) == no_errors_but()
    assert sorted(payload["jobId"] for payload in receiver.payloads) == ["delivering", "lost-cb"]
    # Counted once, at start-up: the deliveries that follow add nothing.
    assert value(after, "funtask_jobs_recovered_total", state="running") == 2
    assert value(after, "funtask_jobs_recovered_total", state="delivering") == 1
    # The next start finds nothing left to recover.
    async with open_test_client(make_server(tmp_path)) as client:
        again = await scrape(client)
    assert value(again, "funtask_jobs_recovered_total", state="running") == 0
    assert value(again, "funtask_jobs_recovered_total", state="delivering") == 0


# -- outages ---------------------------------------------------------------------------


async def test_an_outage_sets_store_up_and_counts_failed_calls_by_operation(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path)

    @server.task
    async def breaks_the_store(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        break_store(server)  # so that storing this result is the call that fails
        return funtask.ok("stored later")

    async with open_test_client(server) as client:
        assert (await client.post("/run/quick", json={"jobId": "before"})).status_code == 200
        samples = await scrape(client)
        assert value(samples, "funtask_store_up") == 1
        assert errors(samples) == no_errors_but()

        # /result: the lookup fails; the store is lost.
        break_store(server)
        assert (await client.get("/result/before")).status_code == 503
        # While it is lost, requests are answered 503 without a store call: not counted.
        assert (await client.get("/result/before")).status_code == 503
        assert (await client.post("/run/quick", json={"jobId": "during"})).status_code == 503
        samples = await scrape(client)
        assert value(samples, "funtask_store_up") == 0
        assert errors(samples) == no_errors_but(lookup=1)
        mend_store(server)
        await wait_until(lambda: store_ok(server))
        assert value(await scrape(client), "funtask_store_up") == 1

        # /run: the claim fails (its record is released once the store is back).
        break_store(server)
        assert (await client.post("/run/quick", json={"jobId": "claim"})).status_code == 503
        assert value(await scrape(client), "funtask_store_up") == 0
        mend_store(server)
        await wait_until(lambda: store_ok(server))

        # Idle: the next heartbeat (at most a second away) fails.
        break_store(server)
        await wait_until(lambda: not store_ok(server))
        assert value(await scrape(client), "funtask_store_up") == 0
        mend_store(server)
        await wait_until(lambda: store_ok(server))

        # A finished job: storing its result fails; it waits as an unstored letter.
        answered = await client.post("/run/breaks_the_store", json={"jobId": "settle"})
        assert answered.status_code == 200
        assert not store_ok(server)
        mend_store(server)

        async def stored() -> bool:
            return (await client.get("/result/settle")).status_code == 200

        await wait_until(stored, interval=0.1)
        await wait_until(lambda: not scan_dead_letters(tmp_path)[0], interval=0.1)
        samples = await scrape(client)
    assert value(samples, "funtask_store_up") == 1
    assert errors(samples) == no_errors_but(lookup=1, claim=1, heartbeat=1, settle=1)
    assert value(samples, "funtask_results_superseded_total") == 0
    assert value(samples, "funtask_leases_lost_total") == 0


# -- leases lost and results superseded ----------------------------------------------------


async def test_a_lost_lease_and_a_superseded_result_are_counted(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    receiver = CallbackReceiver(200)
    server = make_server(tmp_path)
    async with open_test_client(server, callback_transport=receiver.transport()) as client:
        response = await client.post("/run/later", json={"jobId": "sup", "callbackUrl": HOOK})
        assert response.status_code == 202
        await trio.sleep(1)
        # Settled elsewhere first (as a sweeper would): the next heartbeat finds the
        # record settled under the running job, which loses its lease and is cancelled;
        # its own result then loses the compare-and-set.
        first = finished_job("later", "sup", funtask.fail("worker_lost", "gone"), 1.0)
        store = sqlite_store(server)
        settled = await store.settle("later", "sup", first, webhook_id="msg_a", delivering=False)
        assert settled.status == "ok"
        await wait_idle(client, "later")
        await trio.sleep(3)  # more heartbeats: counted once all the same
        samples = await scrape(client)
    assert receiver.attempts == []  # never posted
    (letter,) = scan_dead_letters(tmp_path)[0]
    assert letter.superseded
    assert letter.body["error"]["message"] == "job cancelled: lease lost"
    assert value(samples, "funtask_leases_lost_total") == 1
    assert value(samples, "funtask_results_superseded_total") == 1
    assert value(samples, "funtask_store_up") == 1
    assert errors(samples) == no_errors_but()


async def test_an_unstored_letter_superseded_at_start_up_is_counted(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    # A result that a previous process could not store waits as an unstored letter;
    # meanwhile the job was settled by another token.
    store = create_store(
        parse_store_url(store_url(tmp_path)), name="testsrv", instance="gone", result_history=10
    )
    async with store:
        await store.claim("quick", "late", callback_url=HOOK)
        lost = finished_job("quick", "late", funtask.fail("worker_lost", "gone"), 1.0)
        await store.settle("quick", "late", lost, webhook_id="msg_b", delivering=False)
    mine = finished_job("quick", "late", funtask.ok("done"), 0.5)
    meta = {
        "task": "quick",
        "callbackUrl": HOOK,
        "attempts": 0,
        "lastError": "result store unavailable",
        "createdAt": "2026-01-01T00:00:00.000Z",
        "webhookId": "msg_c",
        "token": "the-dead-process",
        "unstored": True,
    }
    await write_dead_letter(tmp_path, "late", mine.response, meta)
    receiver = CallbackReceiver(200)
    server = make_server(tmp_path)
    async with open_test_client(server, callback_transport=receiver.transport()) as client:
        samples = await scrape(client)
    (letter,) = scan_dead_letters(tmp_path)[0]
    assert letter.superseded and not letter.unstored
    assert receiver.attempts == []
    assert value(samples, "funtask_results_superseded_total") == 1
    assert value(samples, "funtask_leases_lost_total") == 0


# -- the hooks ---------------------------------------------------------------------------


class StoreRecorder(Observer):
    """Records the store hooks only."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def store_state(self, up: bool) -> None:
        self.calls.append(("store_state", up))

    def store_error(self, operation: StoreOperation) -> None:
        self.calls.append(("store_error", operation))

    def job_recovered(self, job: StoredJob, was: RecoveredState) -> None:
        self.calls.append(("job_recovered", job.job_id, was))

    def lease_lost(self, job: Job) -> None:
        self.calls.append(("lease_lost", job.job_id))

    def result_superseded(self, record: FinishedJob) -> None:
        self.calls.append(("result_superseded", record.job_id))


class JobsOnly(Observer):
    """Overrides a job hook and no store hook."""

    def job_started(self, job: Job) -> None:
        raise AssertionError("not called here")  # pragma: no cover


def test_the_fan_out_passes_store_hooks_only_to_observers_that_override_them() -> None:
    first, second = StoreRecorder(), StoreRecorder()
    fan_out = combine_observers([first, JobsOnly(), second])
    for hook in ("store_state", "store_error", "job_recovered", "lease_lost"):
        assert [type(o) for o in getattr(fan_out, "_" + hook)] == [StoreRecorder] * 2
    record = finished_job("t", "j", funtask.ok(), 0.0)
    stored = StoredJob("t", "j", "delivering", "token", "gone", 0.0, 0.0, result=record)
    fan_out.store_state(False)
    fan_out.store_error("sweep")
    fan_out.job_recovered(stored, "delivering")
    fan_out.result_superseded(record)
    fan_out.store_state(True)
    expected = [
        ("store_state", False),
        ("store_error", "sweep"),
        ("job_recovered", "j", "delivering"),
        ("result_superseded", "j"),
        ("store_state", True),
    ]
    assert first.calls == second.calls == expected
