"""Operations hooks: the one place where job, delivery and stream events are observed.

The job runner, the ``/run`` route, callback delivery, the ``/events`` hub and
the store keeper call an :class:`Observer` at their change points; metrics
(``_metrics.py``) are one observer, tracing can be another. No other module
records metrics or spans itself.

The hooks, in the order one job meets them:

==========================  ====================================================
``job_started(job)``        the job took its slot (in the task that called
                            ``JobRunner.start``: for ``/run``, the request's)
``job_steps(job)``          a callable for the job's step messages, or None (asked
                            once, right after ``job_started``; it may be called
                            from the worker thread of a ``def`` task)
``job_scope(job)``          context manager around the task function, entered
                            in the job's own task (a span made current here is
                            current in the task, its nurseries and its thread)
``job_finished(job, ...)``  the job's one result exists (also ``worker_shutdown``)
``callback_scope(...)``     context manager around one callback POST; it may add
                            headers (``traceparent``) to the ``headers`` it gets
``callback_attempted(...)`` one POST ended (delivered or failed)
``delivery_ended(...)``     the delivery is over: ``delivered``, ``dead_lettered``
                            or ``stopped`` (``/stop`` or shutdown cut it short)
``run_answered(task, st)``  ``/run`` answered ``st``; ``task`` is None for a task
                            that is not registered and for every 401
``stream_opened()``,        an ``/events`` stream took / released its slot
``stream_closed()``
==========================  ====================================================

With a persistent store (SQLite or Redis; the memory store calls none of these):

============================  ==================================================
``store_state(up)``           the store answers (at start-up, and when it is
                              back) or stopped answering (the outage began)
``store_error(operation)``    one store call failed (did not answer in time);
                              ``operation`` is a :data:`StoreOperation`
``job_recovered(job, was)``   a job whose process is gone was taken over;
                              ``was`` is the state it was left in
``lease_lost(job)``           a running job lost its lease and is cancelled
``result_superseded(record)`` a result was not stored: another process settled
                              the job first (never posted)
============================  ==================================================

Every hook runs in the Trio thread (except the step callable, see above),
must not block or raise, and returns quickly. The base class does nothing, so
a server without metrics pays one no-op call per hook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from ._callbacks import AttemptOutcome
    from ._jobs import Job
    from ._stores.base import StoredJob
    from ._wire import FinishedJob

__all__ = [
    "NO_OBSERVER",
    "STORE_OPERATIONS",
    "DeliveryResult",
    "Observer",
    "RecoveredState",
    "StoreOperation",
    "combine_observers",
]

#: How a delivery ended (the ``result`` label of ``funtask_deliveries_total``).
DeliveryResult = Literal["delivered", "dead_lettered", "stopped"]

#: What a failed store call was for (the ``operation`` label of
#: ``funtask_store_errors_total``): ``claim`` (claiming a job, and releasing a
#: claim that failed), ``heartbeat``, ``settle`` (storing a result, marking its
#: delivery done), ``lookup`` (``/result``, the duplicate check of a busy
#: slot), ``sweep`` (recovery, the Redis sweeper, purging expired results),
#: ``stop`` (``/stop`` in a pool), ``history`` (refreshing the history and
#: pool views).
StoreOperation = Literal["claim", "heartbeat", "settle", "lookup", "sweep", "stop", "history"]
STORE_OPERATIONS: Final[tuple[StoreOperation, ...]] = (
    "claim",
    "heartbeat",
    "settle",
    "lookup",
    "sweep",
    "stop",
    "history",
)

#: The state a recovered job was left in by its process (``funtask_jobs_recovered_total``).
RecoveredState = Literal["running", "delivering"]

_NO_SCOPE: Final[AbstractContextManager[None]] = contextlib.nullcontext()


class Observer:
    """Receives the runtime's change points; every hook here does nothing.

    Subclass it and override the hooks you need (see the module docstring).
    """

    def job_started(self, job: Job) -> None:
        """A job took its task's slot and is about to run."""

    def job_steps(self, job: Job) -> Callable[[str], None] | None:
        """A callable to receive the job's step messages, or None (steps then cost nothing)."""
        return None

    def job_scope(self, job: Job) -> AbstractContextManager[None]:
        """Context entered around the task function, in the job's own task."""
        return _NO_SCOPE

    def job_finished(self, job: Job, record: FinishedJob, duration: float) -> None:
        """The job's one result exists; ``duration`` is its run time in seconds."""

    def callback_scope(
        self, record: FinishedJob, url: str, headers: dict[str, str]
    ) -> AbstractContextManager[None]:
        """Context entered around one callback POST; may add request ``headers``."""
        return _NO_SCOPE

    def callback_attempted(self, record: FinishedJob, url: str, outcome: AttemptOutcome) -> None:
        """One callback POST ended (``outcome.delivered`` or not)."""

    def delivery_ended(self, record: FinishedJob, result: DeliveryResult) -> None:
        """A delivery is over: delivered, dead-lettered after its last attempt, or stopped."""

    def run_answered(self, task: str | None, status: int) -> None:
        """``/run`` answered ``status``; ``task`` is None when unknown or unauthenticated."""

    def stream_opened(self) -> None:
        """An ``/events`` stream took a client slot."""

    def stream_closed(self) -> None:
        """An ``/events`` stream released its client slot."""

    def store_state(self, up: bool) -> None:
        """The persistent store answers (``up``: at start-up, or it is back) or is lost."""

    def store_error(self, operation: StoreOperation) -> None:
        """One call to the persistent store failed (no answer in time)."""

    def job_recovered(self, job: StoredJob, was: RecoveredState) -> None:
        """A job whose process is gone was taken over (``was``: the state it was left in)."""

    def lease_lost(self, job: Job) -> None:
        """A running job lost its lease (another process may settle it); it is cancelled."""

    def result_superseded(self, record: FinishedJob) -> None:
        """``record`` was not stored: another process settled its job first (never posted)."""


#: The observer of a server that observes nothing.
NO_OBSERVER: Final = Observer()


def _overriding(observers: tuple[Observer, ...], hook: str) -> tuple[Observer, ...]:
    """The ``observers`` whose class overrides ``hook`` (the others would do nothing)."""
    base = getattr(Observer, hook)
    return tuple(observer for observer in observers if getattr(type(observer), hook) is not base)


class _FanOut(Observer):
    """Passes every hook on to several observers, in order.

    Each hook goes only to the observers that override it, so a fan-out of
    metrics and tracing costs little more than the two observers' own work.
    """

    def __init__(self, observers: tuple[Observer, ...]) -> None:
        self.observers = observers
        self._job_started = _overriding(observers, "job_started")
        self._job_steps = _overriding(observers, "job_steps")
        self._job_scope = _overriding(observers, "job_scope")
        self._job_finished = _overriding(observers, "job_finished")
        self._callback_scope = _overriding(observers, "callback_scope")
        self._callback_attempted = _overriding(observers, "callback_attempted")
        self._delivery_ended = _overriding(observers, "delivery_ended")
        self._run_answered = _overriding(observers, "run_answered")
        self._stream_opened = _overriding(observers, "stream_opened")
        self._stream_closed = _overriding(observers, "stream_closed")
        self._store_state = _overriding(observers, "store_state")
        self._store_error = _overriding(observers, "store_error")
        self._job_recovered = _overriding(observers, "job_recovered")
        self._lease_lost = _overriding(observers, "lease_lost")
        self._result_superseded = _overriding(observers, "result_superseded")

    def job_started(self, job: Job) -> None:
        for observer in self._job_started:
            observer.job_started(job)

    def job_steps(self, job: Job) -> Callable[[str], None] | None:
        if len(self._job_steps) == 1:
            return self._job_steps[0].job_steps(job)
        listeners = [
            listener
            for listener in (observer.job_steps(job) for observer in self._job_steps)
            if listener is not None
        ]
        if len(listeners) <= 1:
            return listeners[0] if listeners else None

        def every(message: str) -> None:
            for listener in listeners:
                listener(message)

        return every

    def job_scope(self, job: Job) -> AbstractContextManager[None]:
        scoped = self._job_scope
        if len(scoped) == 1:
            return scoped[0].job_scope(job)
        return _nested(observer.job_scope(job) for observer in scoped) if scoped else _NO_SCOPE

    def job_finished(self, job: Job, record: FinishedJob, duration: float) -> None:
        for observer in self._job_finished:
            observer.job_finished(job, record, duration)

    def callback_scope(
        self, record: FinishedJob, url: str, headers: dict[str, str]
    ) -> AbstractContextManager[None]:
        scoped = self._callback_scope
        if len(scoped) == 1:
            return scoped[0].callback_scope(record, url, headers)
        if not scoped:
            return _NO_SCOPE
        return _nested(observer.callback_scope(record, url, headers) for observer in scoped)

    def callback_attempted(self, record: FinishedJob, url: str, outcome: AttemptOutcome) -> None:
        for observer in self._callback_attempted:
            observer.callback_attempted(record, url, outcome)

    def delivery_ended(self, record: FinishedJob, result: DeliveryResult) -> None:
        for observer in self._delivery_ended:
            observer.delivery_ended(record, result)

    def run_answered(self, task: str | None, status: int) -> None:
        for observer in self._run_answered:
            observer.run_answered(task, status)

    def stream_opened(self) -> None:
        for observer in self._stream_opened:
            observer.stream_opened()

    def stream_closed(self) -> None:
        for observer in self._stream_closed:
            observer.stream_closed()

    def store_state(self, up: bool) -> None:
        for observer in self._store_state:
            observer.store_state(up)

    def store_error(self, operation: StoreOperation) -> None:
        for observer in self._store_error:
            observer.store_error(operation)

    def job_recovered(self, job: StoredJob, was: RecoveredState) -> None:
        for observer in self._job_recovered:
            observer.job_recovered(job, was)

    def lease_lost(self, job: Job) -> None:
        for observer in self._lease_lost:
            observer.lease_lost(job)

    def result_superseded(self, record: FinishedJob) -> None:
        for observer in self._result_superseded:
            observer.result_superseded(record)


@contextlib.contextmanager
def _nested(scopes: Iterable[AbstractContextManager[None]]) -> Iterator[None]:
    """Enter each of ``scopes`` in order (each made only once the one before is entered)."""
    with contextlib.ExitStack() as stack:
        for scope in scopes:
            stack.enter_context(scope)
        yield


def combine_observers(observers: Iterable[Observer]) -> Observer:
    """One observer for all of ``observers``: :data:`NO_OBSERVER`, the only one, or a fan-out."""
    chosen = tuple(observer for observer in observers if observer is not NO_OBSERVER)
    if not chosen:
        return NO_OBSERVER
    if len(chosen) == 1:
        return chosen[0]
    return _FanOut(chosen)
