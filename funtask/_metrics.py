"""Prometheus metrics (SPEC section 6): an :class:`~funtask._observe.Observer` and ``/metrics``.

Every server that serves with ``metrics=True`` gets a :class:`Metrics` of its
own, with its own :class:`prometheus_client.CollectorRegistry` (never the
global one) holding the process, platform and GC collectors and funtask's
metrics. The counters are fed only through the observer hooks; the scrape is
rendered in a worker thread.

With a persistent store (SQLite or Redis) the registry also holds the store
metrics (``funtask_store_up``, ``funtask_store_errors_total{operation}``,
``funtask_jobs_recovered_total{state}``, ``funtask_leases_lost_total``,
``funtask_results_superseded_total``), every child created at start-up; with
the memory store they do not exist.

Label values never come from a request: ``task`` is a registered task name
(or ``(unknown)``), ``code`` one of at most :data:`MAX_CODES_PER_TASK` error
codes per task (the rest ``other``), ``status`` an HTTP status funtask chose.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

from ._deadletters import count_dead_letters
from ._observe import STORE_OPERATIONS, DeliveryResult, Observer, RecoveredState, StoreOperation
from ._threads import hold_mock_clock

if TYPE_CHECKING:
    from ._callbacks import AttemptOutcome
    from ._jobs import Job
    from ._stores.base import StoredJob
    from ._wire import FinishedJob

__all__ = [
    "DEAD_LETTER_RECOUNT_INTERVAL",
    "JOB_DURATION_BUCKETS",
    "MAX_CODES_PER_TASK",
    "MAX_CODE_LENGTH",
    "OTHER_CODE",
    "UNKNOWN_TASK",
    "Metrics",
]

logger: Final = logging.getLogger("funtask.metrics")

JOB_DURATION_BUCKETS: Final = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    *(30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0),
)  # seconds
MAX_CODES_PER_TASK: Final = 100  # distinct error codes labelled per task; the rest are "other"
MAX_CODE_LENGTH: Final = 64  # characters; a longer code is "other"
OTHER_CODE: Final = "other"
UNKNOWN_TASK: Final = "(unknown)"  # /run of a task that is not registered, and every 401
DEAD_LETTER_RECOUNT_INTERVAL: Final = 10.0  # seconds between counts of the dead-letter dir
DELIVERY_RESULTS: Final[tuple[DeliveryResult, ...]] = ("delivered", "dead_lettered", "stopped")
RECOVERED_STATES: Final[tuple[RecoveredState, ...]] = ("running", "delivering")


def _label(text: str) -> str:
    """``text`` as a label value UTF-8 can carry (a lone surrogate becomes its escape)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _TaskMetrics:
    """One task's label children, created at start-up (error codes as they come)."""

    __slots__ = (
        "codes",
        "duration",
        "finished",
        "name",
        "ok",
        "other",
        "running",
        "started",
    )

    def __init__(self, metrics: Metrics, task: str) -> None:
        self.name = task
        self.started = metrics.jobs_started.labels(task)
        self.running = metrics.jobs_running.labels(task)
        self.duration = metrics.job_duration.labels(task)
        self.finished = metrics.jobs_finished
        self.ok = self.finished.labels(task, "success", "")
        self.other: Counter | None = None
        self.codes: dict[str, Counter] = {}

    def failure(self, code: str) -> Counter:
        """The ``failure`` child for ``code``: its own while under the limits, else ``other``."""
        child = self.codes.get(code)
        if child is not None:
            return child
        if (
            code != OTHER_CODE
            and len(self.codes) < MAX_CODES_PER_TASK
            and len(code) <= MAX_CODE_LENGTH
            and _label(code) == code
        ):
            child = self.codes[code] = self.finished.labels(self.name, "failure", code)
            return child
        if self.other is None:
            self.other = self.finished.labels(self.name, "failure", OTHER_CODE)
        return self.other


class _StoreMetrics:
    """The store metrics of a server with a persistent store, every child made at start-up."""

    __slots__ = ("errors", "leases_lost", "recovered", "superseded", "up")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.up = Gauge(
            "funtask_store_up",
            "1 while the result store answers, 0 during an outage.",
            registry=registry,
        )
        errors = Counter(
            "funtask_store_errors",
            "Store calls that failed (no answer in time), by operation.",
            ["operation"],
            registry=registry,
        )
        self.errors = {operation: errors.labels(operation) for operation in STORE_OPERATIONS}
        recovered = Counter(
            "funtask_jobs_recovered",
            "Jobs of a process that is gone taken over, by the state they were left in.",
            ["state"],
            registry=registry,
        )
        self.recovered = {state: recovered.labels(state) for state in RECOVERED_STATES}
        self.leases_lost = Counter(
            "funtask_leases_lost",
            "Running jobs cancelled because their lease was lost.",
            registry=registry,
        )
        self.superseded = Counter(
            "funtask_results_superseded",
            "Results not stored because another process settled the job first.",
            registry=registry,
        )


class Metrics(Observer):
    """A server's Prometheus metrics, fed by the observer hooks; renders ``/metrics``."""

    def __init__(
        self,
        *,
        tasks: Iterable[str],
        name: str,
        instance: str,
        version: str,
        dead_letter_dir: str | None,
        store: bool = False,
    ) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.jobs_started = Counter(
            "funtask_jobs_started", "Jobs started.", ["task"], registry=registry
        )
        self.jobs_finished = Counter(
            "funtask_jobs_finished",
            'Jobs finished, by outcome ("success" or "failure") and error code '
            f'(at most {MAX_CODES_PER_TASK} per task, the rest "{OTHER_CODE}").',
            ["task", "outcome", "code"],
            registry=registry,
        )
        self.job_duration = Histogram(
            "funtask_job_duration_seconds",
            "Run time of finished jobs.",
            ["task"],
            buckets=JOB_DURATION_BUCKETS,
            registry=registry,
        )
        self.jobs_running = Gauge(
            "funtask_jobs_running",
            "Jobs whose task is running (started, no result yet).",
            ["task"],
            registry=registry,
        )
        self.run_requests = Counter(
            "funtask_run_requests",
            f'/run requests by answer status (task "{UNKNOWN_TASK}": not registered, or 401).',
            ["task", "status"],
            registry=registry,
        )
        self.callback_attempts = Counter(
            "funtask_callback_attempts",
            'Callback POSTs, by result ("delivered" or "failed").',
            ["result"],
            registry=registry,
        )
        self.deliveries = Counter(
            "funtask_deliveries",
            'Finished callback deliveries, by result ("delivered", "dead_lettered", "stopped").',
            ["result"],
            registry=registry,
        )
        self.dead_letters = Gauge(
            "funtask_dead_letters",
            "Dead-letter files in the dead-letter directory "
            f"(counted at most every {DEAD_LETTER_RECOUNT_INTERVAL:g} s).",
            registry=registry,
        )
        self.event_streams = Gauge(
            "funtask_event_streams", "Open /events streams.", registry=registry
        )
        # A plain count read at scrape time: a stream may be released from a finalizer,
        # which must not take the gauge's lock.
        self._streams = 0
        self.event_streams.set_function(lambda: self._streams)
        Info("funtask", "This funtask server.", registry=registry).info(
            {"version": version, "name": _label(name), "instance": _label(instance)}
        )
        # With a persistent store only: the memory store adds nothing.
        self._store = _StoreMetrics(registry) if store else None

        self._tasks = {task: _TaskMetrics(self, task) for task in tasks}
        self._requests: dict[str, dict[int, Counter]] = {
            task: {} for task in (*self._tasks, UNKNOWN_TASK)
        }
        self._attempts = {
            True: self.callback_attempts.labels("delivered"),
            False: self.callback_attempts.labels("failed"),
        }
        self._deliveries = {result: self.deliveries.labels(result) for result in DELIVERY_RESULTS}
        self._dead_letter_dir = dead_letter_dir
        self._counted_at: float | None = None
        self._render_limiter = trio.CapacityLimiter(1)  # one scrape renders at a time

    # -- the observer hooks ------------------------------------------------------

    def job_started(self, job: Job) -> None:
        task = self._tasks[job.task.name]
        task.started.inc()
        task.running.inc()

    def job_finished(self, job: Job, record: FinishedJob, duration: float) -> None:
        task = self._tasks[job.task.name]
        task.running.dec()
        task.duration.observe(duration)
        result = record.result
        if result.success:
            task.ok.inc()
        else:
            task.failure(result.error_code).inc()

    def run_answered(self, task: str | None, status: int) -> None:
        label = task if task is not None and task in self._tasks else UNKNOWN_TASK
        children = self._requests[label]
        child = children.get(status)
        if child is None:  # statuses are funtask's own: a dozen at most
            child = children[status] = self.run_requests.labels(label, str(status))
        child.inc()

    def callback_attempted(self, record: FinishedJob, url: str, outcome: AttemptOutcome) -> None:
        self._attempts[outcome.delivered].inc()

    def delivery_ended(self, record: FinishedJob, result: DeliveryResult) -> None:
        self._deliveries[result].inc()

    def stream_opened(self) -> None:
        self._streams += 1

    def stream_closed(self) -> None:
        self._streams -= 1

    def store_state(self, up: bool) -> None:
        if self._store is not None:
            self._store.up.set(1 if up else 0)

    def store_error(self, operation: StoreOperation) -> None:
        if self._store is not None:
            self._store.errors[operation].inc()

    def job_recovered(self, job: StoredJob, was: RecoveredState) -> None:
        if self._store is not None:
            self._store.recovered[was].inc()

    def lease_lost(self, job: Job) -> None:
        if self._store is not None:
            self._store.leases_lost.inc()

    def result_superseded(self, record: FinishedJob) -> None:
        if self._store is not None:
            self._store.superseded.inc()

    # -- the scrape --------------------------------------------------------------

    async def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition for a scraper that sent ``accept``, and its content type.

        Renders in a worker thread, after recounting the dead letters there if
        the last count is :data:`DEAD_LETTER_RECOUNT_INTERVAL` seconds old.
        """
        encoder, content_type = choose_encoder(accept or "")
        now = trio.current_time()
        directory = self._dead_letter_dir
        recount = directory is not None and (
            self._counted_at is None or now - self._counted_at >= DEAD_LETTER_RECOUNT_INTERVAL
        )
        if recount:
            self._counted_at = now

        def work() -> bytes:
            if recount:
                assert directory is not None
                try:
                    self.dead_letters.set(count_dead_letters(directory))
                except OSError as exc:
                    logger.warning("cannot count the dead letters in %s: %s", directory, exc)
            return encoder(self.registry)

        with hold_mock_clock():
            return await trio.to_thread.run_sync(work, limiter=self._render_limiter), content_type
