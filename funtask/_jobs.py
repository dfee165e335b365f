"""Task slots and the job runner: one cancel scope per job, one result per job.

This layer knows nothing of HTTP. It takes a task, params and a jobId, runs
the job in its own :class:`trio.CancelScope` inside the server's jobs
nursery, and turns whatever happened into exactly one finished record.
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio
import trio.testing

from ._duration import format_duration
from ._errors import JobCancelled, ParamError
from ._observe import NO_OBSERVER, Observer
from ._params import Params
from ._result import Result, fail, fail_from_error
from ._run import Run
from ._tasks import TaskDef
from ._threads import hold_mock_clock
from ._tracecontext import HeaderLookup
from ._wire import FinishedJob, finished_job

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["MAX_RESULT_SIZE", "Job", "JobRunner", "TaskSlot"]

logger: Final = logging.getLogger("funtask.jobs")

MAX_RESULT_SIZE: Final = 10 * 1024 * 1024  # 10 MiB, serialised

REASON_STOP: Final = "job cancelled via /stop"
REASON_SYNC_TIMEOUT: Final = "job cancelled: sync timeout"
REASON_DISCONNECT: Final = "job cancelled: client disconnected"
REASON_SHUTDOWN: Final = "job cancelled: server shutting down"


class Job:
    """One run of a task: its :class:`Run`, cancel scope and, once finished, its record."""

    def __init__(
        self,
        task: TaskDef,
        job_id: str,
        params: Params,
        run: Run,
        *,
        callback_url: str | None,
        max_duration: float | None,
    ) -> None:
        self.task = task
        self.job_id = job_id
        self.params = params
        self.run = run
        self.callback_url = callback_url
        self.started_at = trio.current_time()
        self.scope = trio.CancelScope()
        if max_duration is not None:
            self.scope.deadline = self.started_at + max_duration
        self.max_duration = max_duration
        self.cancel_reason: str | None = None
        self.finished = trio.Event()
        self.released = trio.Event()  # the job left its slot (result handed over)
        self.record: FinishedJob | None = None
        self.unsent: str | None = None  # why a sync caller will not receive the result
        self.settled = False  # the result has been handed on (delivery or dead letter)
        self.delivery_stopped = False
        self.lease_lost = False  # the store's heartbeat found its lease lost (reported once)
        self.delivery_scope: trio.CancelScope | None = None
        self.thread_scope: trio.CancelScope | None = None
        self.waiter: trio.CancelScope | None = None  # a sync caller's wait, ended with the job
        # Tracing (SPEC 6): the /run request's headers, for the job_started hook only;
        # the W3C trace context kept with the job (``traceparent``/``tracestate``, also
        # written into its dead letter); the tracing observer's own state.
        self.request_headers: HeaderLookup | None = None
        self.trace_context: dict[str, str] | None = None
        self.tracing: Any = None
        self.webhook_id: str | None = None  # drawn once, when the result is settled

    def __repr__(self) -> str:
        return f"<Job {self.task.name}/{self.job_id!r}>"

    def cancel(self, reason: str) -> None:
        """Cancel the job's scope; the first reason given is the one reported."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.run._mark_cancelled()
        self.scope.cancel()


class TaskSlot:
    """A task's single job slot and its bounded result history."""

    def __init__(self, task: TaskDef, keep_results: int) -> None:
        self.task = task
        self.current: Job | None = None
        self.history: deque[FinishedJob] = deque(maxlen=keep_results)
        self.thread_limiter = trio.CapacityLimiter(1)

    def find(self, job_id: str) -> FinishedJob | None:
        """The newest stored result with ``job_id``, or None."""
        for record in self.history:
            if record.job_id == job_id:
                return record
        return None


class _Outcome:
    """What the task function did: returned a value or raised."""

    __slots__ = ("error", "returned", "value")

    def __init__(self) -> None:
        self.returned = False
        self.value: object = None
        self.error: BaseException | None = None


def _collapse(exc: BaseException) -> BaseException:
    """Unwrap exception groups that hold a single exception."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class JobRunner:
    """Starts jobs in the jobs nursery and turns each into one finished record."""

    def __init__(
        self,
        slots: dict[str, TaskSlot],
        *,
        max_duration: float | None,
        on_change: Callable[[], None],
        on_finished: Callable[[Job, FinishedJob], Awaitable[None]],
        on_progress: Callable[[], None] | None = None,
        observer: Observer = NO_OBSERVER,
        instance: str | None = None,
    ) -> None:
        self.slots = slots
        self.instance = instance  # on every job log record (``extra``)
        self.observer = observer
        self.max_duration = max_duration
        self._on_change = on_change  # a job started, finished or left its slot
        self._on_progress = on_progress or on_change  # a job reported a step or progress
        self._on_finished = on_finished
        self.nursery: trio.Nursery | None = None

    def start(
        self,
        slot: TaskSlot,
        job_id: str,
        params: Params,
        *,
        callback_url: str | None,
        headers: HeaderLookup | None = None,
    ) -> Job:
        """Occupy ``slot`` with a new job and start it; the caller checked the slot is free.

        ``headers`` are the ``/run`` request's (the trace context's source, SPEC 6).
        """
        job = self.reserve(slot, job_id, params, callback_url=callback_url)
        self.launch(slot, job, headers=headers)
        return job

    def reserve(
        self, slot: TaskSlot, job_id: str, params: Params, *, callback_url: str | None
    ) -> Job:
        """Occupy ``slot`` with a new job that has not started (while the store claims it)."""
        if self.nursery is None:
            raise RuntimeError("the job runner is not running")
        run = Run(slot.task.name, job_id, on_change=self._on_progress, instance=self.instance)
        job = Job(
            slot.task,
            job_id,
            params,
            run,
            callback_url=callback_url,
            max_duration=self.max_duration,
        )
        slot.current = job
        return job

    def unreserve(self, slot: TaskSlot, job: Job) -> None:
        """Free ``slot`` of a reserved job that will not start (the claim failed)."""
        if slot.current is job:
            slot.current = None

    def launch(self, slot: TaskSlot, job: Job, *, headers: HeaderLookup | None = None) -> None:
        """Start a reserved job in the jobs nursery.

        ``headers`` are the ``/run`` request's (the trace context's source, SPEC 6); call
        this in the request's task, where an instrumentation's span is current.
        """
        assert self.nursery is not None
        job.request_headers = headers
        self.observer.job_started(job)
        job.request_headers = None
        job.run._on_step = self.observer.job_steps(job)
        self.nursery.start_soon(self._run_job, slot, job, name="funtask job")
        self._on_change()

    def jobs(self) -> list[Job]:
        """The jobs currently holding a slot (running or delivering)."""
        return [slot.current for slot in self.slots.values() if slot.current is not None]

    def find_result(self, job_id: str) -> FinishedJob | None:
        """The newest stored result with ``job_id`` across every task."""
        best: FinishedJob | None = None
        for slot in self.slots.values():
            record = slot.find(job_id)
            if record is not None and (best is None or record.finished_at > best.finished_at):
                best = record
        return best

    async def _run_job(self, slot: TaskSlot, job: Job) -> None:
        try:
            result = await self._execute(slot, job)
            self.finish(slot, job, result)
            assert job.record is not None
            await self._on_finished(job, job.record)
        finally:
            if slot.current is job:
                slot.current = None
            job.released.set()
            self._on_change()

    def finish(self, slot: TaskSlot, job: Job, result: Result) -> FinishedJob:
        """Store ``result`` as the job's one record (first call wins) and wake waiters."""
        if job.record is not None:
            return job.record
        duration = trio.current_time() - job.started_at
        if not result.last_step and job.run.state.step:
            result = result._copy(last_step=job.run.state.step)
        record = _serialise(job, result, duration)
        job.record = record
        slot.history.appendleft(record)
        job.finished.set()
        if job.waiter is not None:
            job.waiter.cancel()
        self._log_outcome(job, result, record)
        self.observer.job_finished(job, record, duration)
        self._on_change()
        return record

    async def _execute(self, slot: TaskSlot, job: Job) -> Result:
        outcome = _Outcome()
        with job.scope, self.observer.job_scope(job):
            try:
                if job.task.is_async:
                    outcome.value = await job.task.fn(job.run, job.params)  # type: ignore[misc]
                    outcome.returned = True
                else:
                    await self._call_in_thread(slot, job, outcome)
            except trio.Cancelled:
                raise
            except BaseExceptionGroup as group:
                _, rest = group.split(trio.Cancelled)
                if rest is None:
                    raise
                outcome.error = _collapse(rest)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # whatever the task does becomes a result
                outcome.error = exc
        return self._judge(job, outcome)

    async def _call_in_thread(self, slot: TaskSlot, job: Job, outcome: _Outcome) -> None:
        def call() -> None:
            try:
                outcome.value = job.task.fn(job.run, job.params)
                outcome.returned = True
            except BaseException as exc:
                outcome.error = exc

        async def watch_cancellation() -> None:
            try:
                await trio.sleep_forever()
            finally:
                job.run._mark_cancelled()

        with hold_mock_clock():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_cancellation)
                # The thread is awaited even when the job is cancelled (cooperative
                # cancellation through run.cancelled); only shutdown abandons it.
                with trio.CancelScope(shield=True) as job.thread_scope:
                    await trio.to_thread.run_sync(
                        call, limiter=slot.thread_limiter, abandon_on_cancel=True
                    )
                nursery.cancel_scope.cancel()
        if outcome.error is not None:
            raise outcome.error

    def _judge(self, job: Job, outcome: _Outcome) -> Result:
        scope = job.scope
        if (
            job.max_duration is not None
            and scope.cancel_called
            and trio.current_time() >= scope.deadline
        ):
            return fail(
                "max_duration_exceeded",
                f"job exceeded maximum duration ({format_duration(job.max_duration)})",
            )
        error = outcome.error
        if error is not None:
            if isinstance(error, JobCancelled) and job.run.cancelled:
                return _cancelled(job).with_cause(error)
            result = fail_from_error(error, "panic")
            if not result.message:
                result = result._copy(message=type(error).__name__)
            if result.error_code == "panic":
                job.run.log.error("task raised %s", type(error).__name__, exc_info=error)
            elif isinstance(error, ParamError):  # the caller's mistake: no traceback
                job.run.log.info("invalid parameters: %s", result.message)
            else:
                job.run.log.info("task failed with %s", result.error_code, exc_info=error)
            return result
        if not outcome.returned:
            return _cancelled(job)
        value = outcome.value
        if not isinstance(value, Result):
            job.run.log.error("task returned %s, not a funtask.Result", type(value).__name__)
            return fail("invalid_result", f"task returned {type(value).__name__}, not a Result")
        return value

    def _log_outcome(self, job: Job, result: Result, record: FinishedJob) -> None:
        if result.success:
            job.run.log.info("job succeeded in %s", record.duration)
        else:
            job.run.log.info(
                "job failed in %s: %s: %s", record.duration, result.error_code, result.message
            )
        if result.cause is not None and result.error_code not in ("panic",):
            job.run.log.debug("failure cause", exc_info=result.cause)


def _cancelled(job: Job) -> Result:
    return fail("cancelled", job.cancel_reason or "job cancelled")


def _serialise(job: Job, result: Result, duration: float) -> FinishedJob:
    try:
        record = finished_job(job.task.name, job.job_id, result, duration)
    except (TypeError, ValueError, RecursionError, OverflowError) as exc:
        job.run.log.error("result could not be serialized", exc_info=exc)
        failure = fail("result_serialization_failed", "result could not be serialized")
        return finished_job(job.task.name, job.job_id, _with_step(failure, result), duration)
    if len(record.body) > MAX_RESULT_SIZE:
        job.run.log.error("result of %d bytes exceeds the maximum size", len(record.body))
        failure = fail("result_too_large", "result exceeds maximum size (10 MB)")
        return finished_job(job.task.name, job.job_id, _with_step(failure, result), duration)
    return record


def _with_step(failure: Result, original: Result) -> Result:
    return failure._copy(last_step=original.last_step[:1000])
