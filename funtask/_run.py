"""The job context a task receives: :class:`Run`."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Any, Final, NamedTuple

from ._errors import JobCancelled

__all__ = ["JobLogAdapter", "Progress", "Run", "RunState", "job_log"]

SERVER_STEP_HISTORY: Final = 100  # steps kept per server job

task_logger: Final = logging.getLogger("funtask.task")


class Progress(NamedTuple):
    """Structured progress: ``current`` of ``total``, and ``percent`` as Go computes it."""

    current: int
    total: int
    percent: float


class RunState(NamedTuple):
    """An immutable snapshot of what a job reported, swapped atomically on each update."""

    step: str
    progress: Progress | None
    last_step_at: float | None  # wall-clock seconds since the epoch


class JobLogAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger adapter that prefixes records with the task and jobId and adds them as extras.

    The extras are ``task``, ``job_id`` (and ``instance`` when given), plus
    ``funtask_prefix``, the ``"[task jobId] "`` text that the JSON log format
    strips again.
    """

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        """Prefix the message and attach ``task`` and ``job_id`` to the record."""
        extra = self.extra or {}
        prefix = f"[{extra.get('task')} {extra.get('job_id')}] "
        kwargs["extra"] = {**extra, "funtask_prefix": prefix, **kwargs.get("extra", {})}
        return prefix + str(msg), kwargs

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Log with the prefix; a ``%`` in a jobId never reaches %-formatting as a directive."""
        if not self.isEnabledFor(level):
            return
        text, options = self.process(msg, kwargs)
        if args:
            prefix: str = options["extra"]["funtask_prefix"]
            text = prefix.replace("%", "%%") + text[len(prefix) :]
        # One frame more than LoggerAdapter's own, so records name the real caller.
        options["stacklevel"] = options.get("stacklevel", 1) + 1
        self.logger.log(level, text, *args, **options)


def job_log(
    logger: logging.Logger, task: str, job_id: str, instance: str | None = None
) -> JobLogAdapter:
    """``logger`` with the ``[task jobId]`` prefix and the job's extras on every record."""
    extra = {"task": task, "job_id": job_id}
    if instance is not None:
        extra["instance"] = instance
    return JobLogAdapter(logger, extra)


def _noop() -> None:
    pass


_FLOAT_MAX: Final = sys.float_info.max


def _huge_percent(current: int, total: int) -> float:
    """The percent for counts beyond a float's range, kept finite so JSON can carry it."""
    try:
        percent = current * 100 / total  # exact integer division, rounded once
    except OverflowError:
        percent = math.inf if current > 0 else -math.inf
    return max(-_FLOAT_MAX, min(_FLOAT_MAX, percent))


class Run:
    """The context of one job: its identity, progress reporting and cancellation flag.

    Tasks report with :meth:`step` and :meth:`progress`; both are cheap (no
    I/O) and safe to call from a worker thread. Cancellation itself is
    Trio's (the job's cancel scope); :attr:`cancelled` and
    :meth:`check_cancelled` let a plain ``def`` task running in a thread
    notice it cooperatively.
    """

    def __init__(
        self,
        task: str,
        job_id: str,
        *,
        max_steps: int | None = SERVER_STEP_HISTORY,
        step_log_level: int = logging.DEBUG,
        on_change: Callable[[], None] = _noop,
        instance: str | None = None,
    ) -> None:
        self._task = task
        self._job_id = job_id
        self._steps: deque[str] = deque(maxlen=max_steps)
        # (step, current, total, percent, last_step_at): a plain tuple swapped atomically;
        # the RunState snapshot is built only when someone reads it.
        self._raw: tuple[str, int | None, int, float, float | None] = ("", None, 0, 0.0, None)
        self._cancelled = False  # set once from the Trio thread; a bool store is atomic
        self._on_change = on_change
        self._on_step: Callable[[str], None] | None = None  # set by the runner when observed
        self._step_log_level = step_log_level
        self.log: logging.LoggerAdapter = job_log(  # type: ignore[type-arg]
            task_logger, task, job_id, instance
        )

    def __repr__(self) -> str:
        return f"Run(task={self._task!r}, job_id={self._job_id!r})"

    @property
    def job_id(self) -> str:
        """The job's id (the caller's ``jobId`` or a generated UUID4)."""
        return self._job_id

    @property
    def task(self) -> str:
        """The name of the task this job runs."""
        return self._task

    @property
    def steps(self) -> list[str]:
        """The step messages reported so far, oldest first (the last 100 in server jobs)."""
        return list(self._steps)

    @property
    def state(self) -> RunState:
        """The latest step, progress and step time as one snapshot."""
        step, current, total, percent, at = self._raw
        progress = None if current is None else Progress(current, total, percent)
        return RunState(step, progress, at)

    def step(self, message: str) -> None:
        """Report the step the job is in; shown on ``/health`` and as ``error.step``."""
        if not isinstance(message, str):
            raise TypeError(f"message must be a str, not {message!r}")
        _, current, total, percent, _ = self._raw
        self._note_step(message)
        self._raw = (message, current, total, percent, time.time())
        self._on_change()

    def progress(self, current: int, total: int, message: str = "") -> None:
        """Report ``current`` of ``total`` items done, with an optional step message.

        ``percent`` is the float ``current * 100 / total`` as Go's ``float64``
        computes it, unrounded (1 of 3 is ``33.333333333333336``), or 0.0 when
        ``total <= 0``.
        """
        if type(current) is not int or type(total) is not int:  # fast path: plain ints
            for name, value in (("current", current), ("total", total)):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TypeError(f"{name} must be an int, not {value!r}")
        if type(message) is not str and not isinstance(message, str):
            raise TypeError(f"message must be a str, not {message!r}")
        try:
            percent = current * 100.0 / total if total > 0 else 0.0  # Go's float64 arithmetic
        except OverflowError:
            percent = _huge_percent(current, total)
        if not -_FLOAT_MAX <= percent <= _FLOAT_MAX:
            percent = _huge_percent(current, total)
        step = self._raw[0]
        if message and message != step:
            self._note_step(message)
            step = message
        self._raw = (step, current, total, percent, time.time())
        self._on_change()

    def _note_step(self, message: str) -> None:
        if message:
            self._steps.append(message)
            if self._on_step is not None:
                self._on_step(message)
            if self.log.isEnabledFor(self._step_log_level):
                self.log.log(self._step_log_level, "step: %s", message)

    @property
    def cancelled(self) -> bool:
        """Whether the job has been cancelled (thread-safe)."""
        return self._cancelled

    def check_cancelled(self) -> None:
        """Raise :class:`funtask.JobCancelled` if the job has been cancelled."""
        if self._cancelled:
            raise JobCancelled()

    def _mark_cancelled(self) -> None:
        self._cancelled = True
