"""Worker threads that keep a mock clock honest.

While a thread works, the Trio loop looks idle; an autojump
:class:`trio.testing.MockClock` would then race virtual time ahead into
spurious timeouts. :func:`hold_mock_clock` stops autojumping for as long as
any thread started through this module runs.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import trio
import trio.testing

if TYPE_CHECKING:
    import outcome

__all__ = ["hold_mock_clock", "run_in_thread"]

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
