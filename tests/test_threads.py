"""funtask._threads: the file-operation queue (run_queued) and the worker-thread hop."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import trio
import trio.testing

from funtask import _threads
from funtask._threads import run_queued


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The worker threads started (one entry per ``start_thread_soon``)."""
    started: list[Any] = []
    real = trio.lowlevel.start_thread_soon

    def recording(fn: Any, deliver: Any, **kwargs: Any) -> None:
        started.append(fn)
        real(fn, deliver, **kwargs)

    monkeypatch.setattr(trio.lowlevel, "start_thread_soon", recording)
    return started


def _gate() -> tuple[threading.Event, threading.Event]:
    return threading.Event(), threading.Event()


async def test_calls_made_while_the_worker_is_busy_share_its_next_turn(
    hops: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_threads, "SPILL_AFTER", 3600.0)  # never spill here
    entered, release = _gate()
    made: list[int] = []
    order: list[int] = []
    threads: set[int] = set()
    results: dict[int, int] = {}

    def work(n: int) -> int:
        if n == 0:
            entered.set()
            release.wait(10)
        order.append(n)
        threads.add(threading.get_ident())
        return n * 10

    async def call(n: int) -> None:
        made.append(n)  # run_queued queues the call before its first checkpoint
        results[n] = await run_queued(work, n)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, 0)
        await trio.to_thread.run_sync(entered.wait, 10)
        for n in range(1, 6):
            nursery.start_soon(call, n)
        await trio.testing.wait_all_tasks_blocked()
        assert len(hops) == 1  # the five wait for the busy worker
        release.set()
    assert results == {n: n * 10 for n in range(6)}
    assert order == made and sorted(made) == list(range(6))  # in the order they were made
    assert len(hops) == 1 and len(threads) == 1
    assert threading.get_ident() not in threads


async def test_each_call_gets_its_own_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_threads, "SPILL_AFTER", 3600.0)
    entered, release = _gate()
    outcomes: dict[str, Any] = {}

    def work(name: str) -> str:
        if name == "first":
            entered.set()
            release.wait(10)
        if name == "bad":
            raise FileNotFoundError(name)
        return name.upper()

    async def call(name: str) -> None:
        try:
            outcomes[name] = await run_queued(work, name)
        except OSError as exc:
            outcomes[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "first")
        await trio.to_thread.run_sync(entered.wait, 10)
        for name in ("before", "bad", "after"):
            nursery.start_soon(call, name)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert outcomes["first"] == "FIRST" and outcomes["before"] == "BEFORE"
    assert isinstance(outcomes["bad"], FileNotFoundError)
    assert outcomes["after"] == "AFTER"


async def test_a_stuck_worker_does_not_hold_up_the_next_call(hops: list[Any]) -> None:
    """A slow disk: once a worker is stuck longer than SPILL_AFTER, another one starts."""
    entered, release = _gate()

    def stuck() -> str:
        entered.set()
        release.wait(10)
        return "stuck"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_queued, stuck)
        await trio.to_thread.run_sync(entered.wait, 10)
        # Really stuck for longer than SPILL_AFTER (the worker's last step is older).
        await trio.to_thread.run_sync(time.sleep, _threads.SPILL_AFTER * 2)
        with trio.fail_after(10):
            assert await run_queued(str.upper, "quick") == "QUICK"
        assert len(hops) == 2
        release.set()


async def test_at_most_max_workers(hops: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_threads, "SPILL_AFTER", 0.0)  # every busy worker counts as stuck
    release = threading.Event()
    done: list[int] = []
    lock = threading.Lock()
    inside = 0
    most = 0

    def work(n: int) -> None:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        release.wait(10)
        with lock:
            inside -= 1
        done.append(n)

    async with trio.open_nursery() as nursery:
        for n in range(_threads.MAX_WORKERS + 4):
            nursery.start_soon(run_queued, work, n)
        await trio.testing.wait_all_tasks_blocked()
        assert len(hops) >= _threads.MAX_WORKERS  # a worker that found nothing left exits
        release.set()
    assert sorted(done) == list(range(_threads.MAX_WORKERS + 4))
    assert most <= _threads.MAX_WORKERS


async def test_a_call_cancelled_before_it_starts_never_runs() -> None:
    ran: list[str] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        await run_queued(ran.append, "x")
    assert scope.cancelled_caught and ran == []


async def test_a_cancelled_call_is_waited_for_not_abandoned() -> None:
    entered, release = _gate()
    finished: list[str] = []

    def work() -> None:
        entered.set()
        release.wait(10)
        finished.append("done")

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def cancel_midway() -> None:
                await trio.to_thread.run_sync(entered.wait, 10)
                scope.cancel()
                release.set()

            nursery.start_soon(cancel_midway)
            await run_queued(work)
            assert finished == ["done"]  # the call returned only once the work was done
            await trio.sleep(1)  # the cancellation lands here
    assert scope.cancelled_caught


async def test_the_mock_clock_does_not_jump_while_a_call_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    began = trio.current_time()
    with trio.move_on_after(1) as scope:
        # 50 ms of real work: an autojumping clock would pass the 1 s deadline meanwhile.
        await run_queued(time.sleep, 0.05)
    assert not scope.cancelled_caught
    assert trio.current_time() == began
