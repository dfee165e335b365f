"""Tests for funtask.testing: make_run, make_params, make_raw_params."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

import funtask
from funtask.testing import make_params, make_raw_params, make_run, open_test_client

from _support import wait_until

# -- a real task, as a user would write it (SPEC section 3) --------------------


async def countdown(run: funtask.Run, params: funtask.Params) -> funtask.Result:
    start = params.int("start")
    for i in range(start):
        run.progress(i + 1, start, f"T-{start - i}")
        await trio.sleep(1)
    return funtask.ok("Countdown complete.").with_data("start", start)


def sync_report(run: funtask.Run, params: funtask.Params) -> funtask.Result:
    reader = params.reader()
    since = reader.time("since")
    limit = reader.int("limit")
    if (err := reader.err()) is not None:
        return funtask.fail("bad_params", str(err))
    run.step(f"querying since {since:%Y-%m-%d}")
    return funtask.ok(f"{limit} rows").with_data("limit", limit)


# -- make_params --------------------------------------------------------------


class TestMakeParams:
    def test_plain_values(self) -> None:
        data = {"s": "x", "i": 1, "f": 1.5, "b": True, "n": None}
        params = make_params(data)
        assert isinstance(params, funtask.Params)
        assert dict(params) == data

    def test_none_and_empty(self) -> None:
        assert len(make_params()) == 0
        assert len(make_params(None)) == 0
        assert len(make_params({})) == 0

    def test_nested_containers(self) -> None:
        data = {
            "list": [1, "two", 3.0, None, True],
            "dict": {"a": {"b": [{"c": 1}]}},
            "tuple": (1, 2, (3, 4)),
        }
        params = make_params(data)
        assert params["list"] == [1, "two", 3.0, None, True]
        assert params["dict"] == {"a": {"b": [{"c": 1}]}}
        # tuples arrive as JSON arrays would: as lists
        assert params["tuple"] == [1, 2, [3, 4]]

    def test_any_mapping_accepted(self) -> None:
        params = make_params(OrderedDict([("b", 1), ("a", 2)]))
        assert list(params) == ["b", "a"]
        assert make_params(make_params({"x": {"y": 1}}))["x"] == {"y": 1}

    def test_copies_input(self) -> None:
        data: dict[str, Any] = {"nested": {"items": [1]}}
        params = make_params(data)
        data["nested"]["items"].append(2)
        data["new"] = 1
        assert dict(params) == {"nested": {"items": [1]}}

    def test_big_int_allowed(self) -> None:
        assert make_params({"n": 10**30}).int("n") == 10**30

    @pytest.mark.parametrize(
        "value",
        [
            {1, 2},
            frozenset({1}),
            object(),
            b"bytes",
            bytearray(b"x"),
            math.nan,
            math.inf,
            -math.inf,
            datetime(2024, 1, 1, tzinfo=timezone.utc),
            1 + 2j,
            lambda: None,
            range(3),
        ],
    )
    def test_refuses_what_json_cannot_carry(self, value: Any) -> None:
        with pytest.raises(TypeError):
            make_params({"v": value})

    @pytest.mark.parametrize(
        "data",
        [
            {"outer": {"inner": {1, 2}}},
            {"outer": [1, [2, object()]]},
            {"outer": {"inner": math.nan}},
            {"outer": [math.inf]},
            {"outer": ({1},)},
            {"outer": {1: "non-str key"}},
            {"outer": [{"ok": 1}, {None: 2}]},
            {"outer": {"a": {(1, 2): 3}}},
        ],
    )
    def test_refuses_nested(self, data: dict[str, Any]) -> None:
        with pytest.raises(TypeError):
            make_params(data)

    @pytest.mark.parametrize("key", [1, None, 1.5, (1, 2), b"k"])
    def test_refuses_non_str_top_level_keys(self, key: Any) -> None:
        with pytest.raises(TypeError):
            make_params({key: 1})

    def test_error_names_the_place(self) -> None:
        with pytest.raises(TypeError) as info:
            make_params({"outer": {"inner": [1, {2}]}})
        message = str(info.value)
        assert "outer" in message
        assert "inner" in message

    def test_refusal_is_a_type_error_not_param_error(self) -> None:
        with pytest.raises(TypeError) as info:
            make_params({"v": {1}})
        assert not isinstance(info.value, funtask.ParamError)


# -- make_raw_params ----------------------------------------------------------


class TestMakeRawParams:
    @pytest.mark.parametrize(
        "value",
        [{1, 2}, object(), math.nan, math.inf, b"bytes", 1 + 2j, datetime(2024, 1, 1)],
    )
    def test_accepts_anything(self, value: Any) -> None:
        params = make_raw_params({"v": value})
        assert params["v"] is value

    def test_accepts_non_str_keys(self) -> None:
        params = make_raw_params({1: "one", None: "none"})  # type: ignore[dict-item]
        assert params[1] == "one"  # type: ignore[index]

    def test_none_and_empty(self) -> None:
        assert len(make_raw_params()) == 0
        assert len(make_raw_params(None)) == 0

    def test_accessors_reject_bad_values_cleanly(self) -> None:
        params = make_raw_params({"n": math.nan, "s": {1}, "t": object()})
        with pytest.raises(funtask.ParamError):
            params.int("n")
        with pytest.raises(funtask.ParamError):
            params.float("n")
        with pytest.raises(funtask.ParamError):
            params.str("s")
        with pytest.raises(funtask.ParamError):
            params.time("t")

    def test_tuples_kept_as_is(self) -> None:
        assert make_raw_params({"t": (1, 2)})["t"] == (1, 2)


# -- make_run -----------------------------------------------------------------


class TestMakeRun:
    def test_is_a_run(self) -> None:
        assert isinstance(make_run(), funtask.Run)

    def test_logs_steps_at_info(self, caplog: pytest.LogCaptureFixture) -> None:
        run = make_run("export", "job-1")
        with caplog.at_level(logging.INFO, logger="funtask"):
            run.step("loading")
            run.progress(1, 2, "half way")
        records = [r for r in caplog.records if r.name.startswith("funtask")]
        messages = [r.getMessage() for r in records]
        assert any("loading" in m for m in messages)
        assert any("half way" in m for m in messages)
        for record in records:
            assert record.levelno == logging.INFO
            assert record.task == "export"  # type: ignore[attr-defined]
            assert record.job_id == "job-1"  # type: ignore[attr-defined]

    def test_no_step_log_above_info(self, caplog: pytest.LogCaptureFixture) -> None:
        run = make_run()
        with caplog.at_level(logging.WARNING, logger="funtask"):
            run.step("hidden")
        assert not [r for r in caplog.records if "hidden" in r.getMessage()]

    def test_records_every_step(self) -> None:
        run = make_run()
        for i in range(1000):
            run.step(str(i))
        assert run.steps == [str(i) for i in range(1000)]

    def test_not_cancelled(self) -> None:
        run = make_run()
        assert run.cancelled is False
        run.check_cancelled()

    def test_independent_runs(self) -> None:
        a = make_run()
        b = make_run()
        a.step("only a")
        assert b.steps == []


# -- calling real tasks -------------------------------------------------------


class TestCallingTasks:
    async def test_async_task(self, autojump_clock: trio.testing.MockClock) -> None:
        run = make_run("countdown")
        start = trio.current_time()
        result = await countdown(run, make_params({"start": 3}))
        assert trio.current_time() - start == pytest.approx(3)
        assert result == funtask.ok("Countdown complete.").with_data("start", 3)
        assert run.steps == ["T-3", "T-2", "T-1"]
        assert run.state.progress == funtask.Progress(3, 3, 100)

    async def test_async_task_with_float_param(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        # JSON delivers 2 as 2.0 from some clients; Params.int accepts it.
        result = await countdown(make_run(), make_params({"start": 2.0}))
        assert result.success
        assert result.data["start"] == 2

    async def test_async_task_bad_param(self) -> None:
        with pytest.raises(funtask.ParamError, match="start"):
            await countdown(make_run(), make_params({"start": "three"}))

    async def test_async_task_error_into_result(self) -> None:
        try:
            await countdown(make_run(), make_params({}))
        except funtask.ParamError as exc:
            result = funtask.fail_from_error(exc, "bad_params")
        assert result.error_code == "invalid_params"  # ParamError carries its own code
        assert "start" in result.message

    def test_sync_task_direct_call(self) -> None:
        run = make_run()
        result = sync_report(run, make_params({"since": "2024-05-01T00:00:00Z", "limit": 10}))
        assert result == funtask.ok("10 rows").with_data("limit", 10)
        assert run.steps == ["querying since 2024-05-01"]

    def test_sync_task_bad_params(self) -> None:
        run = make_run()
        result = sync_report(run, make_params({"limit": 2.5}))
        assert result.success is False
        assert result.error_code == "bad_params"
        assert result.message == (
            "missing or invalid parameters: since (expected time), limit (expected int)"
        )
        assert run.steps == []

    async def test_sync_task_in_thread(self) -> None:
        run = make_run()
        params = make_params({"since": "2024-05-01T00:00:00+02:00", "limit": 1})
        result = await trio.to_thread.run_sync(sync_report, run, params)
        assert result.success
        assert run.steps == ["querying since 2024-05-01"]


class TestCancellation:
    async def test_move_on_after(self, autojump_clock: trio.testing.MockClock) -> None:
        run = make_run()
        result: funtask.Result | None = None
        with trio.move_on_after(2.5) as scope:
            result = await countdown(run, make_params({"start": 10}))
        assert scope.cancelled_caught
        assert result is None
        assert run.steps == ["T-10", "T-9", "T-8"]
        assert run.state.progress == funtask.Progress(3, 10, 30)

    async def test_fail_after(self, autojump_clock: trio.testing.MockClock) -> None:
        run = make_run()
        with pytest.raises(trio.TooSlowError):
            with trio.fail_after(600):
                await countdown(run, make_params({"start": 3600}))
        assert len(run.steps) == 600

    async def test_finishes_inside_deadline(self, autojump_clock: trio.testing.MockClock) -> None:
        with trio.move_on_after(10) as scope:
            result = await countdown(make_run(), make_params({"start": 3}))
        assert not scope.cancelled_caught
        assert result.success

    async def test_cancel_scope_does_not_touch_run_flag(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        # In tests cancellation is the test's own scope; the Run flag is for server jobs.
        run = make_run()
        with trio.move_on_after(1.5):
            await countdown(run, make_params({"start": 5}))
        assert run.cancelled is False


class TestOpenTestClientDefaults:
    """``open_test_client`` works for a server built without a token or dead-letter dir."""

    @staticmethod
    def bare_server(**config: Any) -> funtask.Server:
        server = funtask.Server("bare", **config)

        @server.task
        async def hello(run: funtask.Run, params: funtask.Params) -> funtask.Result:
            return funtask.ok("hi")

        @server.task
        async def slow(run: funtask.Run, params: funtask.Params) -> funtask.Result:
            await trio.sleep(3600)
            return funtask.ok()

        return server

    @pytest.fixture(autouse=True)
    def no_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("FUNTASK_AUTH_TOKEN", raising=False)
        monkeypatch.delenv("FUNTASK_DEAD_LETTER_DIR", raising=False)

    async def test_generated_token_and_temporary_dead_letter_dir(
        self, autojump_clock: MockClock
    ) -> None:
        server = self.bare_server(sync_timeout=10)
        original = server.settings
        async with open_test_client(server) as client:
            assert (await client.post("/run/hello")).json()["message"] == "hi"
            unauthorized = await client.get("/health", headers={"Authorization": "Bearer x"})
            assert unauthorized.status_code == 401
            directory = Path(str(server.settings.dead_letter_dir))
            assert directory.is_dir()
            timed_out = await client.post("/run/slow", json={"jobId": "late"})
            assert timed_out.status_code == 504
            await wait_until(lambda: list(directory.glob("late*.json")))  # unsent: dead-lettered
        assert not directory.exists()  # removed afterwards
        assert server.settings is original  # the server is left as it was configured
        with pytest.raises(funtask.ConfigError, match="auth token required"):
            server.validate()

    async def test_configured_token_and_dir_are_used_as_is(
        self, autojump_clock: MockClock, tmp_path: Path
    ) -> None:
        server = self.bare_server(auth_token="mine", dead_letter_dir=tmp_path)
        async with open_test_client(server) as client:
            assert client.headers["Authorization"] == "Bearer mine"
            assert server.settings.dead_letter_dir == tmp_path
            assert (await client.get("/health")).status_code == 200
        assert tmp_path.is_dir()

    async def test_environment_is_configuration(
        self, autojump_clock: MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("FUNTASK_AUTH_TOKEN", "from-env")
        monkeypatch.setenv("FUNTASK_DEAD_LETTER_DIR", str(tmp_path))
        server = self.bare_server()
        async with open_test_client(server) as client:
            assert client.headers["Authorization"] == "Bearer from-env"
            assert server.settings.dead_letter_dir is None  # resolved from the environment
        assert tmp_path.is_dir()

    async def test_other_problems_are_still_reported(self, autojump_clock: MockClock) -> None:
        server = self.bare_server(callback_retries=0)
        with pytest.raises(funtask.ConfigError) as caught:
            async with open_test_client(server):
                pass  # pragma: no cover
        assert caught.value.problems == ("callback_retries must be an int >= 1, not 0",)
