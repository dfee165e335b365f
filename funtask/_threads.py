"""Worker threads that keep a mock clock honest.

While a thread works, the Trio loop looks idle; an autojump
:class:`trio.testing.MockClock` would then race virtual time ahead into
spurious timeouts. :func:`hold_mock_clock` stops autojumping for as long as
any thread started through this module runs.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import trio
import trio.testing

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
    """``trio.to_thread.run_sync(fn, *args)`` with the mock clock held."""
    with hold_mock_clock():
        return await trio.to_thread.run_sync(fn, *args)
