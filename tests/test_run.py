"""Tests for funtask.Run: identity, steps, progress, cancellation flag, logging, threads."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
import trio

import funtask
from funtask.testing import make_run


class TestIdentity:
    def test_job_id_and_task(self) -> None:
        run = funtask.Run("countdown", "job-123")
        assert run.task == "countdown"
        assert run.job_id == "job-123"

    def test_make_run_defaults(self) -> None:
        run = make_run()
        assert run.task == "test"
        assert run.job_id == "test-job"

    def test_make_run_custom(self) -> None:
        run = make_run(task="export", job_id="abc")
        assert (run.task, run.job_id) == ("export", "abc")
        run = make_run("export2", "def")
        assert (run.task, run.job_id) == ("export2", "def")

    def test_identity_read_only(self) -> None:
        run = make_run()
        with pytest.raises(AttributeError):
            run.job_id = "other"  # type: ignore[misc]
        with pytest.raises(AttributeError):
            run.task = "other"  # type: ignore[misc]

    def test_repr(self) -> None:
        text = repr(funtask.Run("t1", "j1"))
        assert "t1" in text
        assert "j1" in text


class TestStep:
    def test_initial_state(self) -> None:
        run = make_run()
        assert run.steps == []
        assert run.state.step == ""
        assert run.state.progress is None
        assert run.state.last_step_at is None

    def test_steps_recorded_in_order(self) -> None:
        run = make_run()
        run.step("fetching")
        run.step("parsing")
        run.step("saving")
        assert run.steps == ["fetching", "parsing", "saving"]
        assert run.state.step == "saving"

    def test_repeated_step_recorded_each_time(self) -> None:
        run = make_run()
        run.step("same")
        run.step("same")
        assert run.steps == ["same", "same"]

    def test_step_sets_timestamp(self) -> None:
        run = make_run()
        before = time.time()
        run.step("x")
        after = time.time()
        assert run.state.last_step_at is not None
        assert before - 1 <= run.state.last_step_at <= after + 1

    def test_steps_is_a_copy(self) -> None:
        run = make_run()
        run.step("a")
        steps = run.steps
        steps.append("injected")
        steps.clear()
        assert run.steps == ["a"]

    def test_step_keeps_progress(self) -> None:
        run = make_run()
        run.progress(2, 4, "half")
        run.step("detail")
        assert run.state.step == "detail"
        assert run.state.progress == funtask.Progress(2, 4, 50)

    @pytest.mark.parametrize("message", [None, 1, b"bytes", ["x"]])
    def test_step_refuses_non_str(self, message: Any) -> None:
        run = make_run()
        with pytest.raises(TypeError):
            run.step(message)
        assert run.steps == []

    def test_unicode_step(self) -> None:
        run = make_run()
        run.step("Ölwechsel 🚗")
        assert run.steps == ["Ölwechsel 🚗"]


class TestProgress:
    @pytest.mark.parametrize(
        ("current", "total", "percent"),
        [
            (3, 5, 60.0),
            (0, 5, 0.0),
            (5, 5, 100.0),
            (1, 3, 33.333333333333336),  # Go's float64, unrounded
            (2, 3, 66.66666666666667),
            (999, 1000, 99.9),
            (7, 5, 140.0),
            (0, 0, 0.0),
            (5, 0, 0.0),
            (3, -5, 0.0),
            (0, -1, 0.0),
        ],
    )
    def test_percent(self, current: int, total: int, percent: float) -> None:
        run = make_run()
        run.progress(current, total)
        progress = run.state.progress
        assert progress is not None
        assert progress == funtask.Progress(current, total, percent)
        assert (progress.current, progress.total, progress.percent) == (current, total, percent)
        assert type(progress.percent) is float

    def test_progress_with_message_records_step(self) -> None:
        run = make_run()
        run.progress(1, 3, "item 1")
        run.progress(2, 3, "item 2")
        assert run.steps == ["item 1", "item 2"]
        assert run.state.step == "item 2"
        assert run.state.progress == funtask.Progress(2, 3, 66.66666666666667)

    def test_progress_without_message_keeps_previous_step(self) -> None:
        run = make_run()
        run.step("downloading")
        run.progress(1, 10)
        run.progress(2, 10)
        assert run.state.step == "downloading"
        assert run.steps == ["downloading"]
        assert run.state.progress == funtask.Progress(2, 10, 20)

    def test_progress_without_message_and_no_step(self) -> None:
        run = make_run()
        run.progress(1, 2)
        assert run.state.step == ""
        assert run.steps == []
        assert run.state.progress == funtask.Progress(1, 2, 50)

    def test_progress_sets_timestamp(self) -> None:
        run = make_run()
        run.progress(1, 2)
        assert run.state.last_step_at is not None

    def test_progress_is_exported_named_tuple(self) -> None:
        progress = funtask.Progress(1, 2, 50)
        assert progress._fields == ("current", "total", "percent")
        assert tuple(progress) == (1, 2, 50)

    @pytest.mark.parametrize(
        ("current", "total"),
        [
            (1.0, 2),
            (1, 2.0),
            ("1", 2),
            (1, "2"),
            (None, 2),
            (1, None),
            (True, 2),
            (1, True),
            (False, 5),
            (1, False),
        ],
    )
    def test_type_errors(self, current: Any, total: Any) -> None:
        run = make_run()
        with pytest.raises(TypeError):
            run.progress(current, total)
        assert run.state.progress is None

    def test_message_type_error(self) -> None:
        run = make_run()
        with pytest.raises(TypeError):
            run.progress(1, 2, 3)  # type: ignore[arg-type]
        assert run.state.progress is None
        assert run.steps == []

    def test_state_is_a_snapshot(self) -> None:
        run = make_run()
        run.progress(1, 4, "a")
        snapshot = run.state
        run.progress(2, 4, "b")
        assert snapshot.step == "a"
        assert snapshot.progress == funtask.Progress(1, 4, 25)
        assert run.state.step == "b"


class TestStepHistory:
    def test_make_run_keeps_every_step(self) -> None:
        run = make_run()
        for i in range(250):
            run.step(f"step {i}")
        assert len(run.steps) == 250
        assert run.steps[0] == "step 0"
        assert run.steps[-1] == "step 249"

    def test_make_run_keeps_every_progress_step(self) -> None:
        run = make_run()
        for i in range(150):
            run.progress(i + 1, 150, f"item {i}")
        assert len(run.steps) == 150

    def test_server_run_keeps_last_100(self) -> None:
        run = funtask.Run("t", "j")
        for i in range(250):
            run.step(f"step {i}")
        assert len(run.steps) == 100
        assert run.steps == [f"step {i}" for i in range(150, 250)]
        assert run.state.step == "step 249"

    def test_server_run_under_limit(self) -> None:
        run = funtask.Run("t", "j")
        for i in range(100):
            run.step(f"s{i}")
        assert run.steps == [f"s{i}" for i in range(100)]
        run.step("one more")
        assert run.steps[0] == "s1"
        assert run.steps[-1] == "one more"
        assert len(run.steps) == 100


class TestCancellation:
    def test_not_cancelled_initially(self) -> None:
        run = make_run()
        assert run.cancelled is False
        run.check_cancelled()  # does not raise

    def test_mark_cancelled(self) -> None:
        run = funtask.Run("t", "j")
        run._mark_cancelled()
        assert run.cancelled is True
        with pytest.raises(funtask.JobCancelled):
            run.check_cancelled()
        # idempotent, stays cancelled
        run._mark_cancelled()
        assert run.cancelled is True
        with pytest.raises(funtask.JobCancelled):
            run.check_cancelled()

    def test_job_cancelled_is_a_funtask_error(self) -> None:
        assert issubclass(funtask.JobCancelled, funtask.FuntaskError)
        assert issubclass(funtask.FuntaskError, Exception)
        assert not issubclass(funtask.JobCancelled, ValueError)
        assert str(funtask.JobCancelled()) != ""

    def test_cancelled_is_read_only(self) -> None:
        run = make_run()
        with pytest.raises(AttributeError):
            run.cancelled = True  # type: ignore[misc]

    async def test_thread_sees_cancellation(self) -> None:
        run = funtask.Run("t", "j")
        started = threading.Event()

        def work() -> bool:
            started.set()
            give_up = time.monotonic() + 10  # never hang the suite if the flag is broken
            while not run.cancelled and time.monotonic() < give_up:
                time.sleep(0.001)
            return run.cancelled

        async with trio.open_nursery() as nursery:
            results: list[bool] = []

            async def runner() -> None:
                results.append(await trio.to_thread.run_sync(work))

            nursery.start_soon(runner)
            await trio.to_thread.run_sync(started.wait)
            run._mark_cancelled()
        assert results == [True]

    async def test_thread_check_cancelled_raises(self) -> None:
        run = funtask.Run("t", "j")
        run._mark_cancelled()

        def work() -> None:
            run.check_cancelled()

        with pytest.raises(funtask.JobCancelled):
            await trio.to_thread.run_sync(work)


class TestOnChange:
    def test_called_on_each_update(self) -> None:
        calls: list[tuple[str, funtask.Progress | None]] = []
        run: funtask.Run

        def on_change() -> None:
            calls.append((run.state.step, run.state.progress))

        run = funtask.Run("t", "j", on_change=on_change)
        run.step("a")
        run.progress(1, 2, "b")
        run.progress(2, 2)
        run.step("a")
        assert calls == [
            ("a", None),
            ("b", funtask.Progress(1, 2, 50)),
            ("b", funtask.Progress(2, 2, 100)),
            ("a", funtask.Progress(2, 2, 100)),
        ]

    def test_not_called_on_invalid_update(self) -> None:
        calls: list[None] = []
        run = funtask.Run("t", "j", on_change=lambda: calls.append(None))
        with pytest.raises(TypeError):
            run.step(5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            run.progress(True, 5)
        assert calls == []

    async def test_called_from_worker_thread(self) -> None:
        threads: list[int] = []
        run = funtask.Run("t", "j", on_change=lambda: threads.append(threading.get_ident()))

        def work() -> int:
            for i in range(10):
                run.progress(i + 1, 10, f"item {i + 1}")
            run.step("done")
            return threading.get_ident()

        worker = await trio.to_thread.run_sync(work)
        assert worker != threading.get_ident()
        assert threads == [worker] * 11


class TestThreads:
    async def test_step_and_progress_from_worker_thread(self) -> None:
        run = make_run()

        def work() -> None:
            run.step("start")
            for i in range(5):
                run.progress(i + 1, 5, f"item {i + 1}")

        await trio.to_thread.run_sync(work)
        assert run.steps == ["start", "item 1", "item 2", "item 3", "item 4", "item 5"]
        assert run.state.progress == funtask.Progress(5, 5, 100)

    async def test_many_threads_concurrently(self) -> None:
        run = make_run()
        per_thread = 200

        def work(name: str) -> None:
            for i in range(per_thread):
                run.step(f"{name}-{i}")

        async with trio.open_nursery() as nursery:
            for n in range(4):
                nursery.start_soon(trio.to_thread.run_sync, work, f"w{n}")
        steps = run.steps
        assert len(steps) == 4 * per_thread
        for n in range(4):
            mine = [s for s in steps if s.startswith(f"w{n}-")]
            assert mine == [f"w{n}-{i}" for i in range(per_thread)]

    async def test_server_run_bounded_under_threads(self) -> None:
        run = funtask.Run("t", "j")

        def work() -> None:
            for i in range(500):
                run.step(f"s{i}")

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(trio.to_thread.run_sync, work)
        assert len(run.steps) == 100


class TestLog:
    def test_log_is_logger_adapter(self) -> None:
        run = funtask.Run("t", "j")
        assert isinstance(run.log, logging.LoggerAdapter)
        assert run.log.logger.name.startswith("funtask")

    def test_records_carry_task_and_job_id(self, caplog: pytest.LogCaptureFixture) -> None:
        run = funtask.Run("export", "job-42")
        with caplog.at_level(logging.DEBUG, logger="funtask"):
            run.log.info("processing %d rows", 7)
            run.log.warning("careful")
        records = [r for r in caplog.records if r.name.startswith("funtask")]
        assert len(records) == 2
        for record in records:
            assert record.task == "export"  # type: ignore[attr-defined]
            assert record.job_id == "job-42"  # type: ignore[attr-defined]
        assert "processing 7 rows" in records[0].getMessage()
        assert records[0].levelno == logging.INFO
        assert records[1].levelno == logging.WARNING

    def test_message_mentions_task_and_job(self, caplog: pytest.LogCaptureFixture) -> None:
        run = funtask.Run("export", "job-42")
        with caplog.at_level(logging.INFO, logger="funtask"):
            run.log.info("hello")
        message = caplog.records[-1].getMessage()
        assert "export" in message
        assert "job-42" in message
        assert "hello" in message

    def test_user_extra_is_merged(self, caplog: pytest.LogCaptureFixture) -> None:
        run = funtask.Run("export", "job-42")
        with caplog.at_level(logging.INFO, logger="funtask"):
            run.log.info("x", extra={"rows": 3})
        record = caplog.records[-1]
        assert record.rows == 3  # type: ignore[attr-defined]
        assert record.task == "export"  # type: ignore[attr-defined]
        assert record.job_id == "job-42"  # type: ignore[attr-defined]

    def test_exception_logging(self, caplog: pytest.LogCaptureFixture) -> None:
        run = make_run("t", "j")
        with caplog.at_level(logging.ERROR, logger="funtask"):
            try:
                raise RuntimeError("boom")
            except RuntimeError:
                run.log.exception("failed")
        record = caplog.records[-1]
        assert record.exc_info is not None
        assert record.job_id == "j"  # type: ignore[attr-defined]

    def test_server_run_steps_not_logged_at_info(self, caplog: pytest.LogCaptureFixture) -> None:
        run = funtask.Run("t", "j")
        with caplog.at_level(logging.INFO, logger="funtask"):
            run.step("quiet")
        assert not [r for r in caplog.records if "quiet" in r.getMessage()]

    def test_step_log_record_carries_ids(self, caplog: pytest.LogCaptureFixture) -> None:
        run = funtask.Run("t", "j")
        with caplog.at_level(logging.DEBUG, logger="funtask"):
            run.step("loud")
        records = [r for r in caplog.records if "loud" in r.getMessage()]
        assert len(records) == 1
        assert records[0].task == "t"  # type: ignore[attr-defined]
        assert records[0].job_id == "j"  # type: ignore[attr-defined]
