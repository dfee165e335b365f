"""Schemathesis against a live worker: every operation, with and without a valid token.

The worker serves the tasks of ``examples/counter.py`` (``greet``, ``fail-demo``,
``countdown``) on a real loopback port (hypercorn through ``Server.serve``, in a
background thread with its own Trio run), with the dashboard on, a small sync
timeout (so a sync ``countdown`` answers its documented 504 quickly) and a
callback allowlist pointing at a receiver in this process.

For every operation and every credential (a valid bearer token, none, a wrong
one; for ``/events`` also ``?token=``), Schemathesis generates requests in
positive and negative mode from the document the worker serves at
``/openapi.json``; each answer must have a documented status, media type,
headers and body, and negative data must be rejected with a 4xx. No answer may
be a 5xx other than a documented sync-timeout 504 of ``countdown``.

The run is deterministic (``derandomize``) and small; set
``SCHEMATHESIS_MAX_EXAMPLES`` for a larger one (see ``bench/README-stress.md``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

if sys.version_info < (3, 11):  # Schemathesis 4.31+ needs Python 3.11
    pytest.skip("Schemathesis runs on Python 3.11 and later", allow_module_level=True)

import hypothesis
import requests
import schemathesis
import trio
import trio.lowlevel
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import funtask

from _support import CallbackReceiver

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "20"))
TOKEN = "schemathesis-token"
SYNC_TIMEOUT = 0.25  # seconds: a sync countdown (1 s per step) answers 504 at once
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
TASKS = ("greet", "fail-demo", "countdown")
KNOWN_JOB_IDS = ("known", "a/b", "../x y")
AUTH: dict[str, dict[str, str]] = {
    "token": {"Authorization": f"Bearer {TOKEN}"},
    "none": {},
    "wrong": {"Authorization": "Bearer wrong-token"},
}


# -- the live worker and the callback receiver ------------------------------------------


@dataclass
class LiveWorker:
    """A funtask server on a loopback port, run by hypercorn in a background thread."""

    server: funtask.Server
    url: str = ""
    error: BaseException | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _token: trio.lowlevel.TrioToken | None = None
    _stop: trio.Event | None = None

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(
                    partial(self.server.serve, "127.0.0.1:0", shutdown_trigger=self._stop.wait)
                )
                self.url = binds[0]
                self._ready.set()
        finally:
            self._ready.set()

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="live-worker", daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "worker did not start"
        if self.error is not None:
            raise self.error
        assert self.url.startswith("http://127.0.0.1:")

    def stop(self) -> None:
        assert self._thread is not None and self._token is not None and self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(60)
        assert not self._thread.is_alive(), "worker did not stop"
        if self.error is not None:
            raise self.error


def counter_server(dead_letter_dir: Path, callback_prefix: str) -> funtask.Server:
    """The counter example's tasks on a server configured for testing."""
    from examples import counter

    server = funtask.Server(
        "counter",
        auth_token=TOKEN,
        dead_letter_dir=dead_letter_dir,
        callback_allowlist=[callback_prefix],
        dashboard=True,
        sync_timeout=SYNC_TIMEOUT,
        shutdown_timeout=5,
        callback_timeout=5,
    )
    for task in counter.server.tasks.values():
        server.add_task(task.name, task.fn, description=task.description, example=task.example)
    return server


@dataclass
class Live:
    worker: LiveWorker
    callback_url: str
    callbacks: CallbackReceiver


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    callbacks = CallbackReceiver(204)  # accepts every callback POST
    with callbacks.listen("/hooks") as prefix:
        worker = LiveWorker(counter_server(tmp_path_factory.mktemp("dead-letters"), prefix))
        worker.start()
        try:
            yield Live(worker, prefix + "/done", callbacks)
        finally:
            worker.stop()


# -- the run -------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the run saw, for the assertion message and the printed summary."""

    statuses: dict[str, collections.Counter[int]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    failures: list[str] = field(default_factory=list)
    requests: int = 0

    def summary(self) -> str:
        lines = [f"{self.requests} requests"]
        for key in sorted(self.statuses):
            counts = ", ".join(f"{s}x{n}" for s, n in sorted(self.statuses[key].items()))
            lines.append(f"  {key}: {counts}")
        return "\n".join(lines)


def _explore(
    tally: Tally,
    base_url: str,
    operation: Any,
    label: str,
    strategy: Any,
    headers: dict[str, str],
    mode: schemathesis.GenerationMode,
) -> None:
    checks = CHECKS + ([negative_data_rejection] if mode.is_negative else [])

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def explore(case: schemathesis.Case) -> None:
        tally.requests += 1
        if headers:
            # Record the auth header we send in the case itself, so that the
            # negative-data check judges the request that was really made (a
            # "missing Authorization" negation is undone by the header we add).
            case.headers = {**(case.headers or {}), **headers}
        try:
            # A fresh connection per request (no session): on a reused keep-alive
            # connection an early answer can hang the next request; see
            # test_security.py::test_keep_alive_survives_an_early_answer.
            response = case.call(base_url=base_url, headers=dict(headers))
        except requests.RequestException as exc:
            notes = "".join(getattr(exc, "__notes__", ()))
            tally.failures.append(f"{label}: {type(exc).__name__}: {exc}{notes}")
            return
        status = response.status_code
        tally.statuses[label][status] += 1
        task = (case.path_parameters or {}).get("task")
        documented_timeout = (
            status == 504 and operation.path == "/run/{task}" and task == "countdown"
        )
        if status >= 500 and not documented_timeout:
            tally.failures.append(
                f"{label}: {status} {response.text[:300]!r}\n{case.as_curl_command(headers)}"
            )
        try:
            case.validate_response(response, checks=checks, headers=dict(headers))
        except FailureGroup as group:
            tally.failures.append(f"{label} ({mode.value}):\n{group}")

    explore()


def _strategies(
    operation: Any, mode: schemathesis.GenerationMode, auth: str, live: Live, etag: str
) -> Iterator[tuple[str, Any]]:
    """Strategies for one operation: free generation, plus pinned meaningful values."""
    yield "", operation.as_strategy(mode)
    if mode.is_negative:
        return
    path = operation.path
    if path == "/events" and auth == "none":
        yield "query-token", operation.as_strategy(mode, query={"token": TOKEN})
    if path == "/dashboard" and auth == "none":
        yield "etag", operation.as_strategy(mode, headers={"If-None-Match": etag})
    if auth != "token":
        return  # pinned values change nothing about a 401
    if path in ("/run/{task}", "/stop/{task}"):
        for task in TASKS:
            yield task, operation.as_strategy(mode, path_parameters={"task": task})
    if path == "/run/{task}":
        for task in TASKS:
            body = {"callbackUrl": live.callback_url, "params": {"start": 1}}
            yield (
                f"{task}+callback",
                operation.as_strategy(mode, path_parameters={"task": task}, body=body),
            )
        yield (
            "greet+jobId",
            operation.as_strategy(
                mode, path_parameters={"task": "greet"}, body={"jobId": "known"}
            ),
        )
    if path == "/result/{jobId}":
        for job_id in KNOWN_JOB_IDS:
            yield job_id, operation.as_strategy(mode, path_parameters={"jobId": job_id})


def _wait_idle(base_url: str, session: requests.Session) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        health: dict[str, Any] = session.get(
            base_url + "/health", headers=AUTH["token"], timeout=10
        ).json()
        if all(t["status"] == "idle" for t in health["tasks"].values()):
            return health
        assert time.monotonic() < deadline, health
        time.sleep(0.05)


def _seed(base_url: str, session: requests.Session) -> None:
    """Store results for /result to find (again: the history keeps only the newest 10)."""
    _wait_idle(base_url, session)
    for job_id in KNOWN_JOB_IDS:
        session.post(
            base_url + "/run/greet", json={"jobId": job_id}, headers=AUTH["token"], timeout=10
        ).raise_for_status()


def run_schemathesis(live: Live) -> Tally:
    base_url = live.worker.url
    tally = Tally()
    with requests.Session() as session:
        session.headers["Connection"] = "close"
        # Loaded from the served document (from_url would leave /openapi.json itself out).
        served = session.get(base_url + "/openapi.json", timeout=10)
        served.raise_for_status()
        schema = schemathesis.openapi.from_dict(served.json())
        schema.config.update(base_url=base_url, request_timeout=10)
        schema.config.max_stream_events = 1  # read the first /events frame, then hang up
        etag = session.get(base_url + "/dashboard", timeout=10).headers["ETag"]
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path == "/result/{jobId}":
                _seed(base_url, session)
            for mode in (
                schemathesis.GenerationMode.POSITIVE,
                schemathesis.GenerationMode.NEGATIVE,
            ):
                for auth, headers in AUTH.items():
                    for pin, strategy in _strategies(operation, mode, auth, live, etag):
                        label = f"{operation.label} [{auth}{'/' + pin if pin else ''}]"
                        # Unsatisfiable: nothing to negate here (e.g. no parameters at all).
                        with contextlib.suppress(hypothesis.errors.Unsatisfiable):
                            _explore(tally, base_url, operation, label, strategy, headers, mode)
        health = _wait_idle(base_url, session)
    assert health["status"] == "ok"
    return tally


def test_schemathesis_every_operation(live: Live) -> None:
    started = time.monotonic()
    tally = run_schemathesis(live)
    elapsed = time.monotonic() - started
    print(f"\nschemathesis: max_examples={MAX_EXAMPLES}, {elapsed:.1f}s\n{tally.summary()}")
    if report := os.environ.get("SCHEMATHESIS_REPORT"):
        Path(report).write_text(
            json.dumps(
                {
                    "max_examples": MAX_EXAMPLES,
                    "seconds": round(elapsed, 1),
                    "requests": tally.requests,
                    "failures": tally.failures,
                    "statuses": {k: dict(v) for k, v in tally.statuses.items()},
                },
                indent=2,
            )
        )
    assert not tally.failures, "\n\n".join(tally.failures[:20]) + f"\n\n{tally.summary()}"
    # Every operation was reached, with each credential, and the interesting answers appeared.
    seen = collections.Counter[int]()
    for counts in tally.statuses.values():
        seen.update(counts)
    for status in (200, 202, 304, 400, 401, 404, 409, 504):
        assert seen[status], f"never saw a {status}\n{tally.summary()}"
    assert len({key.split(" [")[0] for key in tally.statuses}) == 10
    # Every /events stream ended when its client hung up; callbacks arrived.
    runtime = live.worker.server._runtime
    assert runtime is not None
    deadline = time.monotonic() + 10
    while runtime.events.clients and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runtime.events.clients == 0
    assert [payload["jobId"] for payload in live.callbacks.payloads]
