"""Operations hooks: the one place where job, delivery and stream events are observed.

The job runner, the ``/run`` route, callback delivery and the ``/events`` hub
call an :class:`Observer` at their change points; metrics (``_metrics.py``)
are one observer, tracing can be another. No other module records metrics or
spans itself.

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
    from ._wire import FinishedJob

__all__ = ["NO_OBSERVER", "DeliveryResult", "Observer", "combine_observers"]

#: How a delivery ended (the ``result`` label of ``funtask_deliveries_total``).
DeliveryResult = Literal["delivered", "dead_lettered", "stopped"]

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


#: The observer of a server that observes nothing.
NO_OBSERVER: Final = Observer()


class _FanOut(Observer):
    """Passes every hook on to several observers, in order."""

    def __init__(self, observers: tuple[Observer, ...]) -> None:
        self.observers = observers
        # Asked once per job: only the observers that may want steps.
        self._step_observers = tuple(
            observer
            for observer in observers
            if type(observer).job_steps is not Observer.job_steps
        )

    def job_started(self, job: Job) -> None:
        for observer in self.observers:
            observer.job_started(job)

    def job_steps(self, job: Job) -> Callable[[str], None] | None:
        listeners = [
            listener
            for listener in (observer.job_steps(job) for observer in self._step_observers)
            if listener is not None
        ]
        if len(listeners) <= 1:
            return listeners[0] if listeners else None

        def every(message: str) -> None:
            for listener in listeners:
                listener(message)

        return every

    @contextlib.contextmanager
    def job_scope(self, job: Job) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for observer in self.observers:
                stack.enter_context(observer.job_scope(job))
            yield

    def job_finished(self, job: Job, record: FinishedJob, duration: float) -> None:
        for observer in self.observers:
            observer.job_finished(job, record, duration)

    @contextlib.contextmanager
    def callback_scope(
        self, record: FinishedJob, url: str, headers: dict[str, str]
    ) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for observer in self.observers:
                stack.enter_context(observer.callback_scope(record, url, headers))
            yield

    def callback_attempted(self, record: FinishedJob, url: str, outcome: AttemptOutcome) -> None:
        for observer in self.observers:
            observer.callback_attempted(record, url, outcome)

    def delivery_ended(self, record: FinishedJob, result: DeliveryResult) -> None:
        for observer in self.observers:
            observer.delivery_ended(record, result)

    def run_answered(self, task: str | None, status: int) -> None:
        for observer in self.observers:
            observer.run_answered(task, status)

    def stream_opened(self) -> None:
        for observer in self.observers:
            observer.stream_opened()

    def stream_closed(self) -> None:
        for observer in self.observers:
            observer.stream_closed()


def combine_observers(observers: Iterable[Observer]) -> Observer:
    """One observer for all of ``observers``: :data:`NO_OBSERVER`, the only one, or a fan-out."""
    chosen = tuple(observer for observer in observers if observer is not NO_OBSERVER)
    if not chosen:
        return NO_OBSERVER
    if len(chosen) == 1:
        return chosen[0]
    return _FanOut(chosen)
