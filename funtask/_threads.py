"""Worker threads for funtask's own blocking calls, keeping a mock clock honest.

While a thread works, the Trio loop looks idle; an autojump
:class:`trio.testing.MockClock` would then race virtual time ahead into
spurious timeouts. :func:`hold_mock_clock` stops autojumping for as long as
any thread started through this module runs. :func:`run_in_thread` is one
call, one hop; :func:`run_queued` lets calls made while a worker is busy share
its next hop (the dead letters' file operations, several per async job).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, Final, TypeVar

import outcome
import trio
import trio.testing

__all__ = ["hold_mock_clock", "run_in_thread", "run_queued"]

_T = TypeVar("_T")

_holds: weakref.WeakKeyDictionary[trio.testing.MockClock, tuple[int, float]] = (
    weakref.WeakKeyDictionary()
)


@contextmanager
def hold_mock_clock() -> Iterator[None]:
    """Keep an autojump MockClock from jumping inside the block (no-op for real clocks)."""
    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, trio.testing.MockClock):
        yield
        return
    count, saved = _holds.get(clock, (0, clock.autojump_threshold))
    _holds[clock] = (count + 1, saved)
    clock.autojump_threshold = math.inf
    try:
        yield
    finally:
        count, saved = _holds.pop(clock)
        if count > 1:
            _holds[clock] = (count - 1, saved)
        else:
            clock.autojump_threshold = saved


async def run_in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in a worker thread with the mock clock held: funtask's own file I/O.

    What ``trio.to_thread.run_sync`` does (Trio's thread cache, its default
    limiter, not abandoned on cancellation: a cancel waits for ``fn`` and is
    raised at the caller's next checkpoint), without what a short internal
    call does not need: renaming the OS thread twice per call (``/proc``
    writes through ctypes) and copying the context. For user code, use
    ``trio.to_thread.run_sync``.
    """
    limiter = trio.to_thread.current_default_thread_limiter()
    with hold_mock_clock():
        borrower = object()
        await limiter.acquire_on_behalf_of(borrower)
        try:
            task = trio.lowlevel.current_task()
            token = trio.lowlevel.current_trio_token()

            def deliver(result: outcome.Outcome[_T]) -> None:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(trio.lowlevel.reschedule, task, result)

            trio.lowlevel.start_thread_soon(partial(fn, *args), deliver)
            value: _T = await trio.lowlevel.wait_task_rescheduled(_never_abort)
            return value
        finally:
            limiter.release_on_behalf_of(borrower)


def _never_abort(raise_cancel: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


#: A call that finds every worker of the queue stuck this long on its batch (a slow
#: disk, a network filesystem) starts another worker, so that slow fsyncs overlap
#: (and the kernel can commit them together) instead of waiting in line.
SPILL_AFTER: Final = 0.02
#: At most this many workers per queue.
MAX_WORKERS: Final = 8


class _FileQueue:
    """Calls run by worker threads that take everything queued at once.

    Under load, calls made while a worker is busy are taken together by its
    next turn: the thread hand-offs (waking a worker, waking the loop,
    rescheduling) are paid once per batch instead of once per call, and the
    GIL changes hands far less often. A worker stuck for longer than
    :data:`SPILL_AFTER` does not hold the others up: the next call starts
    another one.
    """

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._queue: list[tuple[Callable[..., Any], tuple[Any, ...], trio.lowlevel.Task]] = []
        self._workers = 0
        self._progress = 0.0  # time.monotonic() of the workers' last step

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        with self._lock:
            self._queue.append((fn, args, trio.lowlevel.current_task()))
            if self._workers and (
                self._workers >= MAX_WORKERS or time.monotonic() - self._progress < SPILL_AFTER
            ):
                return  # a worker will take it on its next turn
            self._workers += 1
            self._progress = time.monotonic()
        trio.lowlevel.start_thread_soon(self._work, _reraise)

    def _work(self) -> None:
        """In a worker thread: run what is queued, hand the outcomes back, until empty."""
        while True:
            with self._lock:
                batch = self._queue
                if not batch:
                    self._workers -= 1
                    return
                self._queue = []
                self._progress = time.monotonic()
            done = []
            for fn, args, task in batch:
                done.append((task, outcome.capture(fn, *args)))
                self._progress = time.monotonic()
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(_reschedule_all, done)


def _reschedule_all(done: list[tuple[trio.lowlevel.Task, outcome.Outcome[Any]]]) -> None:
    for task, result in done:
        trio.lowlevel.reschedule(task, result)


def _reraise(result: outcome.Outcome[None]) -> None:
    result.unwrap()  # _work captures every call's outcome: only a bug in it gets here


_file_queue: trio.lowlevel.RunVar[_FileQueue] = trio.lowlevel.RunVar("funtask_file_queue")


async def run_queued(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in a worker thread of this run's queue; the mock clock held meanwhile.

    As :func:`run_in_thread` (never abandoned: a cancellation waits for ``fn``
    and is raised at the caller's next checkpoint; a call cancelled before it
    starts never runs), but a call made while a worker is busy is run by that
    worker's next turn, with every other call made meanwhile, in order. For
    funtask's short and frequent file operations (dead letters), not for
    anything that could block for long.
    """
    await trio.lowlevel.checkpoint_if_cancelled()  # a cancelled call never starts
    try:
        queue = _file_queue.get()
    except LookupError:
        queue = _FileQueue()
        _file_queue.set(queue)
    with hold_mock_clock():
        queue.submit(fn, args)
        value: _T = await trio.lowlevel.wait_task_rescheduled(_never_abort)
        return value
