"""GET /metrics and the observer hooks that feed it (SPEC section 6).

Every scrape here goes through ``open_test_client`` under the autojump mock
clock and is parsed with ``prometheus_client``'s own parsers, so the counts
checked are what a Prometheus server would read.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
import trio
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from quart import Response
from trio.testing import MockClock

import funtask
from funtask import _runtime
from funtask._callbacks import AttemptOutcome
from funtask._jobs import Job
from funtask._observe import NO_OBSERVER, DeliveryResult, Observer, combine_observers
from funtask._tracing import Tracing
from funtask._wire import FinishedJob
from funtask.testing import open_test_client

from _support import TOKEN, wait_until

ALLOW = ["https://hooks.example.com/hooks"]
OK_URL = "https://hooks.example.com/hooks/ok"
FAIL_URL = "https://hooks.example.com/hooks/fail"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def make_server(tmp_path: Path, **config: Any) -> funtask.Server:
    config.setdefault("auth_token", TOKEN)
    config.setdefault("callback_allowlist", ALLOW)
    server = funtask.Server("metered", dead_letter_dir=tmp_path, **config)

    @server.task
    async def greet(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        return funtask.ok("hello")

    @server.task
    async def fails(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        return funtask.fail(params.str("code", "db_error"), "it failed")

    @server.task
    async def raises(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        raise RuntimeError("boom")

    @server.task
    async def nap(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        await trio.sleep(params.float("seconds", 4.0))
        return funtask.ok("rested")

    @server.task
    async def notify(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        return funtask.ok("notified")

    return server


def callbacks(request: httpx.Request) -> httpx.Response:
    """The receiver: ``/hooks/ok`` takes every callback, ``/hooks/fail`` none."""
    return httpx.Response(200 if request.url.path.endswith("/ok") else 500)


def parse(text: str, *, openmetrics: bool = False) -> Samples:
    """Every sample of a scrape by (name, labels)."""
    families = openmetrics_families(text) if openmetrics else text_string_to_metric_families(text)
    samples: Samples = {}
    for family in families:
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def value(samples: Samples, metric: str, **labels: str) -> float:
    """One sample's value; a missing sample is an error (not 0)."""
    return samples[(metric, frozenset(labels.items()))]


def label_values(samples: Samples) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    return {key for key in samples if key[0].startswith("funtask_")}


async def idle(client: httpx.AsyncClient) -> bool:
    health = (await client.get("/health")).json()
    return all(task["status"] == "idle" for task in health["tasks"].values())


# -- the counts after a known mix of jobs ------------------------------------------------


async def test_counts_after_a_mix_of_jobs(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = make_server(tmp_path, callback_retries=3)
    transport = httpx.MockTransport(callbacks)
    sync_answers: list[httpx.Response] = []

    async def run_long(client: httpx.AsyncClient) -> None:
        sync_answers.append(await client.post("/run/nap", json={"jobId": "long"}))

    async with (
        open_test_client(server, callback_transport=transport) as client,
        trio.open_nursery() as nursery,
    ):
        for _ in range(3):
            assert (await client.post("/run/greet")).json()["success"] is True
        for code in ("db_error", "db_error", "timeout"):
            response = await client.post("/run/fails", json={"params": {"code": code}})
            assert response.json()["error"]["code"] == code
        assert (await client.post("/run/raises")).json()["error"]["code"] == "panic"
        assert (await client.post("/run/greet", content=b"[")).status_code == 400

        # A sync job stopped after 1 s, with a 409 meanwhile.
        nursery.start_soon(run_long, client)
        await trio.sleep(1)
        busy = await client.post("/run/nap", json={"jobId": "other"})
        assert busy.status_code == 409
        during = await scrape(client)
        assert value(during, "funtask_jobs_running", task="nap") == 1
        assert value(during, "funtask_jobs_started_total", task="nap") == 1
        assert (await client.post("/stop/nap")).json()["message"] == "Cancellation requested"
        await wait_until(lambda: sync_answers)
        assert sync_answers[0].json()["error"]["code"] == "cancelled"

        # Unknown task, and no token: both "(unknown)".
        assert (await client.post("/run/nope")).status_code == 404
        for path in ("/run/greet", "/run/nope"):
            unauthorized = await client.post(path, headers={"Authorization": "Bearer wrong"})
            assert unauthorized.status_code == 401

        # Async: every attempt fails (3 in all) -> dead-lettered.
        accepted = await client.post("/run/notify", json={"callbackUrl": FAIL_URL})
        assert accepted.status_code == 202
        await wait_until(lambda: idle(client))
        # Async: stopped between its first attempt and the retry 1 s later.
        accepted = await client.post("/run/notify", json={"callbackUrl": FAIL_URL})
        assert accepted.status_code == 202
        await trio.sleep(0.5)
        assert (await client.post("/stop/notify")).json()["message"] == "Cancellation requested"
        await wait_until(lambda: idle(client))
        # Async: delivered at once.
        accepted = await client.post("/run/notify", json={"callbackUrl": OK_URL})
        assert accepted.status_code == 202
        await wait_until(lambda: idle(client))

        await trio.sleep(10)  # the dead letters were counted at the first scrape
        samples = await scrape(client)

    started = {"greet": 3, "fails": 3, "raises": 1, "nap": 1, "notify": 3}
    for task, count in started.items():
        assert value(samples, "funtask_jobs_started_total", task=task) == count
        assert value(samples, "funtask_jobs_running", task=task) == 0
        assert value(samples, "funtask_job_duration_seconds_count", task=task) == count
    finished = [
        ("greet", "success", "", 3),
        ("fails", "failure", "db_error", 2),
        ("fails", "failure", "timeout", 1),
        ("raises", "failure", "panic", 1),
        ("nap", "failure", "cancelled", 1),
        ("notify", "success", "", 3),
    ]
    for task, outcome, code, count in finished:
        labels = {"task": task, "outcome": outcome, "code": code}
        assert value(samples, "funtask_jobs_finished_total", **labels) == count
    # No other finished series with a count (the success children of failing tasks are 0).
    counted = {
        (dict(labels)["task"], dict(labels)["outcome"], dict(labels)["code"])
        for (name, labels), v in samples.items()
        if name == "funtask_jobs_finished_total" and v
    }
    assert counted == {(t, o, c) for t, o, c, _ in finished}

    # Durations in virtual time: the stopped nap ran 1 s, every other job 0 s.
    assert value(samples, "funtask_job_duration_seconds_sum", task="nap") == pytest.approx(1.0)
    assert value(samples, "funtask_job_duration_seconds_sum", task="greet") == 0
    assert value(samples, "funtask_job_duration_seconds_bucket", task="nap", le="0.5") == 0
    assert value(samples, "funtask_job_duration_seconds_bucket", task="nap", le="1.0") == 1
    assert value(samples, "funtask_job_duration_seconds_bucket", task="greet", le="0.005") == 3

    requests = {
        ("greet", "200"): 3,
        ("greet", "400"): 1,
        ("fails", "200"): 3,
        ("raises", "200"): 1,
        ("nap", "200"): 1,
        ("nap", "409"): 1,
        ("notify", "202"): 3,
        ("(unknown)", "404"): 1,
        ("(unknown)", "401"): 2,
    }
    seen = {
        (dict(labels)["task"], dict(labels)["status"]): v
        for (name, labels), v in samples.items()
        if name == "funtask_run_requests_total"
    }
    assert seen == requests

    assert value(samples, "funtask_callback_attempts_total", result="failed") == 4
    assert value(samples, "funtask_callback_attempts_total", result="delivered") == 1
    assert value(samples, "funtask_deliveries_total", result="delivered") == 1
    assert value(samples, "funtask_deliveries_total", result="dead_lettered") == 1
    assert value(samples, "funtask_deliveries_total", result="stopped") == 1
    assert value(samples, "funtask_dead_letters") == 2
    assert len([p for p in tmp_path.iterdir() if p.suffix == ".json"]) == 2
    assert value(samples, "funtask_event_streams") == 0


async def test_series_exist_from_start_up(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_test_client(make_server(tmp_path)) as client:
        samples = await scrape(client)
    for task in ("greet", "fails", "raises", "nap", "notify"):
        assert value(samples, "funtask_jobs_started_total", task=task) == 0
        assert value(samples, "funtask_jobs_running", task=task) == 0
        assert value(samples, "funtask_job_duration_seconds_count", task=task) == 0
        labels = {"task": task, "outcome": "success", "code": ""}
        assert value(samples, "funtask_jobs_finished_total", **labels) == 0
    for result in ("delivered", "failed"):
        assert value(samples, "funtask_callback_attempts_total", result=result) == 0
    for result in ("delivered", "dead_lettered", "stopped"):
        assert value(samples, "funtask_deliveries_total", result=result) == 0
    assert value(samples, "funtask_dead_letters") == 0
    assert value(samples, "funtask_event_streams") == 0
    # The process, platform and GC collectors are on the server's registry.
    names = {name for name, _ in samples}
    assert "process_cpu_seconds_total" in names
    assert "python_info" in names
    assert "python_gc_objects_collected_total" in names


async def test_info_names_the_server_and_instance(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with open_test_client(make_server(tmp_path, instance_id="worker-7")) as client:
        custom = await scrape(client)
    labels = {"version": funtask.__version__, "name": "metered", "instance": "worker-7"}
    assert value(custom, "funtask_info", **labels) == 1
    async with open_test_client(make_server(tmp_path)) as client:
        default = await scrape(client)
    labels["instance"] = f"{socket.gethostname()}:{os.getpid()}"
    assert value(default, "funtask_info", **labels) == 1


@pytest.mark.parametrize("instance_id", ["", "   ", "a\nb", "tab\there", "\ud800", 7, b"id"])
def test_instance_id_must_be_a_printable_str(tmp_path: Path, instance_id: Any) -> None:
    server = make_server(tmp_path, instance_id=instance_id)
    with pytest.raises(funtask.ConfigError, match="instance_id must be a non-empty printable"):
        server.validate()


# -- label values stay bounded -------------------------------------------------------------


async def test_error_codes_are_capped_per_task(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_test_client(make_server(tmp_path)) as client:
        codes = [f"code_{i:03d}" for i in range(150)]
        for code in [*codes, "x" * 65, codes[0]]:
            response = await client.post("/run/fails", json={"params": {"code": code}})
            assert response.status_code == 200
        # A lone surrogate: valid JSON, but no UTF-8 label value.
        response = await client.post("/run/fails", content=b'{"params":{"code":"\\ud800x"}}')
        assert response.json()["error"]["code"] == "\ud800x"
        await client.post("/run/greet")
        samples = await scrape(client)
    failures = {
        dict(labels)["code"]: v
        for (name, labels), v in samples.items()
        if name == "funtask_jobs_finished_total" and ("outcome", "failure") in labels
    }
    # The first 100 distinct codes keep their label; the 50 after them, the 65-character
    # code and the one UTF-8 cannot carry are "other".
    assert set(failures) == {*codes[:100], "other"}
    assert failures["other"] == 52
    assert failures[codes[0]] == 2
    assert all(failures[code] == 1 for code in codes[1:100])
    # Another task has its own 100.
    assert value(samples, "funtask_jobs_finished_total", task="greet", outcome="success", code="")


async def test_request_paths_never_become_label_values(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with open_test_client(make_server(tmp_path)) as client:
        await client.post("/run/unknown-task")
        await client.post("/run/greet", headers={"Authorization": "Bearer wrong"})
        before = await scrape(client)
        names = ["x", "greet ", "GREET", "greet%00", "%F0%9F%98%80", "(unknown)", "a%2Fb", ".."]
        answered = {401: 0, 404: 0}  # by the /run route (a%2Fb and .. match no route)
        for index in range(1000):
            name = names[index % len(names)] + (str(index) if index % 3 else "")
            headers = {"Authorization": "Bearer wrong"} if index % 4 == 0 else {}
            response = await client.post(f"/run/{name}", headers=headers)
            assert response.status_code in answered
            if response.status_code == 401 or response.json()["error"].startswith("task "):
                answered[response.status_code] += 1
        after = await scrape(client)
    assert label_values(after) == label_values(before)
    assert answered[401] == 250
    assert 500 < answered[404] < 750
    for status, count in answered.items():
        labels = {"task": "(unknown)", "status": str(status)}
        assert value(after, "funtask_run_requests_total", **labels) == 1 + count


# -- the route -------------------------------------------------------------------------------


async def test_metrics_off_is_a_json_404(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = make_server(tmp_path, metrics=False)
    async with open_test_client(server) as client:
        response = await client.get("/metrics")
        assert server._runtime is not None
        # No metrics hook does any work; only the tracing one remains (opentelemetry-api
        # is installed here).
        assert isinstance(server._runtime.observer, Tracing)
        assert server._runtime.metrics is None
    assert response.status_code == 404
    assert response.json() == {"error": "not found"}


async def test_metrics_need_the_token(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_test_client(make_server(tmp_path), authorized=False) as client:
        missing = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer wrong"})
        right = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert missing.status_code == wrong.status_code == 401
    assert missing.json() == {"error": "unauthorized"}
    assert right.status_code == 200


async def test_metrics_auth_off(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = make_server(tmp_path, metrics_auth=False)
    async with open_test_client(server, authorized=False) as client:
        response = await client.get("/metrics")
        health = await client.get("/health")
    assert response.status_code == 200
    assert ("funtask_dead_letters", frozenset()) in parse(response.text)
    assert health.status_code == 401  # only /metrics is open


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        "application/openmetrics-text",
        # What Prometheus sends.
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
        "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    ],
)
async def test_openmetrics_when_accept_asks(
    autojump_clock: MockClock, tmp_path: Path, accept: str
) -> None:
    async with open_test_client(make_server(tmp_path)) as client:
        await client.post("/run/greet")
        response = await client.get("/metrics", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    samples = parse(response.text, openmetrics=True)
    assert value(samples, "funtask_jobs_started_total", task="greet") == 1


@pytest.mark.parametrize("accept", ["", "text/plain", "*/*", "application/json"])
async def test_text_format_otherwise(
    autojump_clock: MockClock, tmp_path: Path, accept: str
) -> None:
    async with open_test_client(make_server(tmp_path)) as client:
        response = await client.get("/metrics", headers={"Accept": accept})
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "funtask_info{" in response.text


async def test_served_while_draining(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = make_server(tmp_path)
    async with open_test_client(server) as client:
        assert server._runtime is not None
        server._runtime.begin_draining()
        assert (await client.post("/run/greet")).status_code == 503
        samples = await scrape(client)
    assert value(samples, "funtask_run_requests_total", task="greet", status="503") == 1


async def custom_view() -> Response:
    return Response("mine")


@pytest.mark.parametrize("pattern", ["GET /metrics", "/metrics", "POST /metrics/"])
def test_a_handler_on_metrics_is_a_config_error(tmp_path: Path, pattern: str) -> None:
    server = make_server(tmp_path)
    server.add_handler(pattern, custom_view)
    with pytest.raises(funtask.ConfigError, match="metrics=False") as caught:
        server.validate()
    assert "/metrics" in str(caught.value)


async def test_metrics_off_frees_the_path(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = make_server(tmp_path, metrics=False)
    server.add_handler("GET /metrics", custom_view)
    async with open_test_client(server, authorized=False) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.text == "mine"


async def test_each_server_has_its_own_registry(autojump_clock: MockClock, tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one, two = make_server(tmp_path / "one"), make_server(tmp_path / "two")
    async with open_test_client(one) as first, open_test_client(two) as second:
        await first.post("/run/greet")
        await first.post("/run/greet")
        await second.post("/run/greet")
        counts = [
            value(await scrape(client), "funtask_jobs_started_total", task="greet")
            for client in (first, second)
        ]
    assert counts == [2, 1]
    global_names = {metric.name for metric in prometheus_client.REGISTRY.collect()}
    assert not [name for name in global_names if name.startswith("funtask")]


async def test_dead_letters_are_recounted_at_most_every_10_s(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    (tmp_path / "old.json").write_text("{}")
    async with open_test_client(make_server(tmp_path)) as client:
        assert value(await scrape(client), "funtask_dead_letters") == 1
        (tmp_path / "new.json").write_text("{}")
        (tmp_path / ".tmp-partial").write_text("{")  # a letter being written: not counted
        await trio.sleep(9.5)
        assert value(await scrape(client), "funtask_dead_letters") == 1
        await trio.sleep(0.5)
        assert value(await scrape(client), "funtask_dead_letters") == 2
        (tmp_path / "old.json").unlink()
        await trio.sleep(10)
        assert value(await scrape(client), "funtask_dead_letters") == 1


async def test_event_streams_gauge(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_test_client(make_server(tmp_path)) as client:
        async with client.stream("GET", "/events") as first, client.stream("GET", "/events"):
            assert first.status_code == 200
            assert value(await scrape(client), "funtask_event_streams") == 2
        await wait_until(lambda: server_streams(client, 0))


async def server_streams(client: httpx.AsyncClient, expected: int) -> bool:
    return value(await scrape(client), "funtask_event_streams") == expected


# -- the observer hooks (what tracing builds on) ---------------------------------------------

current_job: contextvars.ContextVar[str] = contextvars.ContextVar("current_job", default="")


class Recorder(Observer):
    """Records every hook; its job scope sets a context variable, its callback scope a header."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def job_started(self, job: Job) -> None:
        self.calls.append(("job_started", job.task.name))

    @contextlib.contextmanager
    def job_scope(self, job: Job) -> Iterator[None]:
        self.calls.append(("job_scope", job.task.name))
        token = current_job.set(job.job_id)
        try:
            yield
        finally:
            current_job.reset(token)
            self.calls.append(("job_scope_exit", job.task.name))

    def job_finished(self, job: Job, record: FinishedJob, duration: float) -> None:
        self.calls.append(("job_finished", job.task.name, record.result.error_code, duration))

    def callback_scope(
        self, record: FinishedJob, url: str, headers: dict[str, str]
    ) -> AbstractContextManager[None]:
        headers["traceparent"] = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
        self.calls.append(("callback_scope", record.job_id))
        return contextlib.nullcontext()

    def callback_attempted(self, record: FinishedJob, url: str, outcome: AttemptOutcome) -> None:
        self.calls.append(("callback_attempted", record.job_id, outcome.delivered))

    def delivery_ended(self, record: FinishedJob, result: DeliveryResult) -> None:
        self.calls.append(("delivery_ended", record.job_id, result))

    def run_answered(self, task: str | None, status: int) -> None:
        self.calls.append(("run_answered", task, status))

    def stream_opened(self) -> None:
        self.calls.append(("stream_opened",))

    def stream_closed(self) -> None:
        self.calls.append(("stream_closed",))


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    make = _runtime.Runtime._make_observers

    def with_recorder(self: _runtime.Runtime) -> list[Observer]:
        return [*make(self), recorder]

    monkeypatch.setattr(_runtime.Runtime, "_make_observers", with_recorder)
    return recorder


async def test_hooks_in_order_with_metrics_alongside(
    autojump_clock: MockClock, tmp_path: Path, recorder: Recorder
) -> None:
    seen: dict[str, str] = {}
    posted: list[httpx.Request] = []
    server = make_server(tmp_path)

    @server.task
    async def sees_scope(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        seen["async"] = current_job.get()
        return funtask.ok()

    @server.task
    def sees_scope_in_thread(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        seen["thread"] = current_job.get()
        return funtask.ok()

    def receive(request: httpx.Request) -> httpx.Response:
        posted.append(request)
        return httpx.Response(204)

    transport = httpx.MockTransport(receive)
    async with open_test_client(server, callback_transport=transport) as client:
        await client.post("/run/sees_scope", json={"jobId": "a1"})
        await client.post("/run/sees_scope_in_thread", json={"jobId": "t1"})
        await client.post("/run/nap", json={"jobId": "n1", "params": {"seconds": 2}})
        await client.post("/run/notify", json={"jobId": "c1", "callbackUrl": OK_URL})
        await wait_until(lambda: idle(client))
        await client.post("/run/nope")
        samples = await scrape(client)

    assert seen == {"async": "a1", "thread": "t1"}
    assert posted[0].headers["traceparent"].startswith("00-111")
    assert [call for call in recorder.calls if call[0] != "run_answered" or call[1] != "nap"] == [
        ("job_started", "sees_scope"),
        ("job_scope", "sees_scope"),
        ("job_scope_exit", "sees_scope"),
        ("job_finished", "sees_scope", "", 0.0),
        ("run_answered", "sees_scope", 200),
        ("job_started", "sees_scope_in_thread"),
        ("job_scope", "sees_scope_in_thread"),
        ("job_scope_exit", "sees_scope_in_thread"),
        ("job_finished", "sees_scope_in_thread", "", 0.0),
        ("run_answered", "sees_scope_in_thread", 200),
        ("job_started", "nap"),
        ("job_scope", "nap"),
        ("job_scope_exit", "nap"),
        ("job_finished", "nap", "", 2.0),
        ("job_started", "notify"),
        ("run_answered", "notify", 202),
        ("job_scope", "notify"),
        ("job_scope_exit", "notify"),
        ("job_finished", "notify", "", 0.0),
        ("callback_scope", "c1"),
        ("callback_attempted", "c1", True),
        ("delivery_ended", "c1", "delivered"),
        ("run_answered", None, 404),
    ]
    # The metrics observer saw the same events.
    assert value(samples, "funtask_jobs_started_total", task="nap") == 1
    assert value(samples, "funtask_job_duration_seconds_sum", task="nap") == 2.0
    assert value(samples, "funtask_deliveries_total", result="delivered") == 1


async def test_stream_hooks(autojump_clock: MockClock, tmp_path: Path, recorder: Recorder) -> None:
    async with open_test_client(make_server(tmp_path)) as client:
        async with client.stream("GET", "/events") as stream:
            assert stream.status_code == 200
            assert recorder.calls == [("stream_opened",)]
        await wait_until(lambda: len(recorder.calls) == 2)
    assert recorder.calls == [("stream_opened",), ("stream_closed",)]


def test_combine_observers() -> None:
    first, second = Recorder(), Recorder()
    assert combine_observers([]) is NO_OBSERVER
    assert combine_observers([NO_OBSERVER]) is NO_OBSERVER
    assert combine_observers([first, NO_OBSERVER]) is first
    both = combine_observers([first, second])
    both.run_answered("x", 200)
    both.stream_opened()
    headers: dict[str, str] = {}
    record = FinishedJob("t", "j", funtask.ok(), "0s", 0.0, {}, b"{}", {})
    with both.callback_scope(record, "https://h", headers):
        pass
    both.callback_attempted(record, "https://h", AttemptOutcome(False, "HTTP 500"))
    both.delivery_ended(record, "stopped")
    both.stream_closed()
    expected = [
        ("run_answered", "x", 200),
        ("stream_opened",),
        ("callback_scope", "j"),
        ("callback_attempted", "j", False),
        ("delivery_ended", "j", "stopped"),
        ("stream_closed",),
    ]
    assert first.calls == second.calls == expected
    assert "traceparent" in headers
