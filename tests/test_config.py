"""Tests for funtask.Server configuration, task registration and validation."""

from __future__ import annotations

import functools
import math
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import funtask

ENV_TOKEN = "FUNTASK_AUTH_TOKEN"
ENV_DIR = "FUNTASK_DEAD_LETTER_DIR"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    monkeypatch.delenv(ENV_DIR, raising=False)


async def async_task(run: funtask.Run, params: funtask.Params) -> funtask.Result:
    """An async task."""
    return funtask.ok()


def sync_task(run: funtask.Run, params: funtask.Params) -> funtask.Result:
    """A sync task."""
    return funtask.ok()


def make_server(tmp_path: Path, **kwargs: Any) -> funtask.Server:
    """A server that is valid unless ``kwargs`` break it."""
    kwargs.setdefault("auth_token", "secret")
    kwargs.setdefault("dead_letter_dir", tmp_path)
    return funtask.Server("counter", **kwargs)


def valid_server(tmp_path: Path, **kwargs: Any) -> funtask.Server:
    server = make_server(tmp_path, **kwargs)
    server.add_task("work", async_task)
    return server


def problems_of(server: funtask.Server) -> str:
    with pytest.raises(funtask.ConfigError) as info:
        server.validate()
    return str(info.value)


# -- ConfigError and "all at once" -------------------------------------------


class TestValidateAllAtOnce:
    def test_exact_message(self) -> None:
        server = funtask.Server("counter")
        with pytest.raises(funtask.ConfigError) as info:
            server.validate()
        assert str(info.value) == (
            'server "counter": no tasks registered; '
            "auth token required (auth_token= or $FUNTASK_AUTH_TOKEN); "
            "dead letter directory required (dead_letter_dir= or $FUNTASK_DEAD_LETTER_DIR)"
        )

    def test_config_error_is_value_error_and_funtask_error(self) -> None:
        assert issubclass(funtask.ConfigError, ValueError)
        assert issubclass(funtask.ConfigError, funtask.FuntaskError)
        with pytest.raises(ValueError):
            funtask.Server("counter").validate()

    def test_problems_attribute(self) -> None:
        with pytest.raises(funtask.ConfigError) as info:
            funtask.Server("counter").validate()
        assert len(info.value.problems) == 3
        assert info.value.problems[0] == "no tasks registered"

    def test_many_problems_reported_together(self, tmp_path: Path) -> None:
        server = funtask.Server(
            "multi",
            callback_retries=0,
            result_history=0,
            sync_timeout=-1,
            max_duration=math.nan,
            callback_allowlist=["not a url"],
        )
        server.add_task("bad name", async_task)
        server.add_handler("/health", lambda: "x")
        with pytest.raises(funtask.ConfigError) as info:
            server.validate()
        message = str(info.value)
        assert message.startswith('server "multi": ')
        for fragment in (
            "auth token required",
            "dead letter directory required",
            "callback_retries",
            "result_history",
            "sync_timeout",
            "max_duration",
            "not a url",
            "bad name",
            "/health",
        ):
            assert fragment in message
        assert "no tasks registered" not in message
        assert len(info.value.problems) == 9

    def test_valid_server_passes(self, tmp_path: Path) -> None:
        valid_server(tmp_path).validate()

    def test_validate_is_repeatable(self, tmp_path: Path) -> None:
        server = valid_server(tmp_path)
        server.validate()
        server.validate()

    def test_name_must_be_str(self) -> None:
        with pytest.raises(TypeError):
            funtask.Server(123)  # type: ignore[arg-type]

    def test_validation_is_lazy(self) -> None:
        # Construction never raises for configuration problems; validate() does.
        server = funtask.Server("x", callback_retries=-5, sync_timeout="soon")  # type: ignore[arg-type]
        with pytest.raises(funtask.ConfigError):
            server.validate()


# -- auth token -------------------------------------------------------------


class TestAuthToken:
    def test_env_token(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(ENV_TOKEN, "from-env")
        server = make_server(tmp_path, auth_token=None)
        server.add_task("work", async_task)
        server.validate()

    def test_env_read_at_validate_time(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        server = make_server(tmp_path, auth_token=None)
        server.add_task("work", async_task)
        assert "auth token required" in problems_of(server)
        monkeypatch.setenv(ENV_TOKEN, "later")
        server.validate()
        monkeypatch.delenv(ENV_TOKEN)
        assert "auth token required" in problems_of(server)

    def test_empty_env_token_is_missing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(ENV_TOKEN, "")
        server = make_server(tmp_path, auth_token=None)
        server.add_task("work", async_task)
        assert "auth token required" in problems_of(server)

    def test_multiple_tokens_as_list(self, tmp_path: Path) -> None:
        valid_server(tmp_path, auth_token=["old", "new"]).validate()

    def test_multiple_tokens_as_tuple(self, tmp_path: Path) -> None:
        valid_server(tmp_path, auth_token=("old", "new")).validate()

    def test_tokens_from_a_one_shot_iterable(self, tmp_path: Path) -> None:
        server = valid_server(tmp_path, auth_token=(t for t in ["old", "new"]))
        server.validate()
        server.validate()  # the tokens must still be there the second time

    @pytest.mark.parametrize("tokens", [[], ["ok", ""], ["ok", 5]])
    def test_bad_token_lists(self, tmp_path: Path, tokens: list[Any]) -> None:
        problems = problems_of(valid_server(tmp_path, auth_token=tokens))
        assert "token" in problems

    def test_empty_token(self, tmp_path: Path) -> None:
        assert "token" in problems_of(valid_server(tmp_path, auth_token=""))

    def test_explicit_token_beats_env(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(ENV_TOKEN, "env")
        valid_server(tmp_path, auth_token="explicit").validate()


# -- dead-letter directory --------------------------------------------------


class TestDeadLetterDir:
    def test_env_dir(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(ENV_DIR, str(tmp_path))
        server = funtask.Server("counter", auth_token="t")
        server.add_task("work", async_task)
        server.validate()

    def test_env_read_at_validate_time(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        server = funtask.Server("counter", auth_token="t")
        server.add_task("work", async_task)
        assert "dead letter directory required" in problems_of(server)
        monkeypatch.setenv(ENV_DIR, str(tmp_path))
        server.validate()

    def test_env_dir_checked_too(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        missing = tmp_path / "nope"
        monkeypatch.setenv(ENV_DIR, str(missing))
        server = funtask.Server("counter", auth_token="t")
        server.add_task("work", async_task)
        assert str(missing) in problems_of(server)

    def test_str_and_pathlike(self, tmp_path: Path) -> None:
        valid_server(tmp_path, dead_letter_dir=str(tmp_path)).validate()
        valid_server(tmp_path, dead_letter_dir=tmp_path).validate()

    def test_missing_dir(self, tmp_path: Path) -> None:
        missing = tmp_path / "does-not-exist"
        message = problems_of(valid_server(tmp_path, dead_letter_dir=missing))
        assert f"dead letter directory {str(missing)!r} does not exist" in message
        assert not missing.exists()  # validation never creates it

    def test_not_a_directory(self, tmp_path: Path) -> None:
        file = tmp_path / "file.txt"
        file.write_text("x")
        message = problems_of(valid_server(tmp_path, dead_letter_dir=file))
        assert f"dead letter directory {str(file)!r} is not a directory" in message
        assert "does not exist" not in message

    @pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() == 0,
        reason="root can write to any directory",
    )
    def test_not_writable(self, tmp_path: Path) -> None:
        readonly = tmp_path / "readonly"
        readonly.mkdir()
        readonly.chmod(0o500)
        try:
            message = problems_of(valid_server(tmp_path, dead_letter_dir=readonly))
        finally:
            readonly.chmod(0o700)
        assert str(readonly) in message
        assert "writable" in message


# -- custom handlers --------------------------------------------------------


def view() -> str:
    return "ok"


class TestHandlers:
    @pytest.mark.parametrize(
        "pattern",
        ["GET /api/orders", "/api/orders", "POST /api/orders/{id}", "/", "/healthz", "/runs"],
    )
    def test_valid_patterns(self, tmp_path: Path, pattern: str) -> None:
        server = valid_server(tmp_path)
        server.add_handler(pattern, view)
        server.validate()

    def test_decorator(self, tmp_path: Path) -> None:
        server = valid_server(tmp_path)

        @server.handler("GET /api/orders")
        async def orders() -> str:
            return "[]"

        assert orders.__name__ == "orders"  # returned unchanged
        server.validate()

    @pytest.mark.parametrize("pattern", ["", "   "])
    def test_empty_pattern(self, tmp_path: Path, pattern: str) -> None:
        server = valid_server(tmp_path)
        server.add_handler(pattern, view)
        assert "empty" in problems_of(server)

    def test_no_view(self, tmp_path: Path) -> None:
        server = valid_server(tmp_path)
        server.add_handler("GET /api/orders", None)
        assert "/api/orders" in problems_of(server)

    def test_non_callable_view(self, tmp_path: Path) -> None:
        server = valid_server(tmp_path)
        server.add_handler("GET /api/orders", "not callable")  # type: ignore[arg-type]
        assert "/api/orders" in problems_of(server)

    @pytest.mark.parametrize(
        "pattern",
        [
            "/health",
            "GET /health",
            "/health/",
            "/livez",
            "GET /livez",
            "/readyz",
            "/events",
            "GET /events",
            "/openapi.json",
            "GET /openapi.json",
        ],
    )
    def test_reserved_paths(self, tmp_path: Path, pattern: str) -> None:
        server = valid_server(tmp_path)
        server.add_handler(pattern, view)
        assert pattern.strip() in problems_of(server)

    @pytest.mark.parametrize(
        "pattern",
        [
            "/run/",
            "/run/{task}",
            "POST /run/x",
            "/run/anything/deeper",
            "/stop/",
            "/stop/{task}",
            "/result/",
            "GET /result/{id}",
            "/run",
            "/stop",
            "/result",
        ],
    )
    def test_reserved_prefixes(self, tmp_path: Path, pattern: str) -> None:
        server = valid_server(tmp_path)
        server.add_handler(pattern, view)
        assert pattern in problems_of(server)

    @pytest.mark.parametrize("pattern", ["/dashboard", "GET /dashboard"])
    def test_dashboard_reserved_only_when_on(self, tmp_path: Path, pattern: str) -> None:
        off = valid_server(tmp_path)
        off.add_handler(pattern, view)
        off.validate()
        on = valid_server(tmp_path, dashboard=True)
        on.add_handler(pattern, view)
        assert pattern in problems_of(on)

    def test_every_bad_handler_reported(self, tmp_path: Path) -> None:
        server = valid_server(tmp_path)
        server.add_handler("/health", view)
        server.add_handler("/run/x", view)
        server.add_handler("", view)
        server.add_handler("/ok", None)
        with pytest.raises(funtask.ConfigError) as info:
            server.validate()
        assert len(info.value.problems) == 4

    def test_pattern_must_be_str(self, tmp_path: Path) -> None:
        server = valid_server(tmp_path)
        with pytest.raises(TypeError):
            server.add_handler(None, view)  # type: ignore[arg-type]


# -- tasks ------------------------------------------------------------------


class TestTaskNames:
    @pytest.mark.parametrize(
        "name", ["a", "A-b_c.d", "x" * 128, "0", "task.v2", "UPPER", "-", ".", "_"]
    )
    def test_valid(self, tmp_path: Path, name: str) -> None:
        server = make_server(tmp_path)
        server.add_task(name, async_task)
        server.validate()
        assert name in server.tasks

    @pytest.mark.parametrize(
        "name",
        ["", "x" * 129, "with space", "a/b", "café", "naïve", "tab\t", "new\nline", "a:b", "🚀"],
    )
    def test_invalid(self, tmp_path: Path, name: str) -> None:
        server = make_server(tmp_path)
        server.add_task(name, async_task)
        message = problems_of(server)
        assert repr(name) in message
        assert "task name" in message

    def test_invalid_via_decorator(self, tmp_path: Path) -> None:
        server = make_server(tmp_path)

        @server.task("bad name")
        async def fn(run: funtask.Run, params: funtask.Params) -> funtask.Result:
            return funtask.ok()

        assert "'bad name'" in problems_of(server)

    def test_duplicate_names(self, tmp_path: Path) -> None:
        server = make_server(tmp_path)
        server.add_task("same", async_task)
        server.add_task("same", sync_task)
        message = problems_of(server)
        assert "duplicate" in message
        assert "'same'" in message

    def test_duplicate_via_decorator_default_name(self, tmp_path: Path) -> None:
        server = make_server(tmp_path)
        server.task(async_task)
        server.task(async_task)
        assert "duplicate task name 'async_task'" in problems_of(server)


class TestRegistration:
    def test_bare_decorator(self, tmp_path: Path) -> None:
        server = make_server(tmp_path)

        @server.task
        async def countdown(run: funtask.Run, params: funtask.Params) -> funtask.Result:
            return funtask.ok()

        assert countdown.__name__ == "countdown"  # returned unchanged
        assert list(server.tasks) == ["countdown"]
        definition = server.tasks["countdown"]
        assert isinstance(definition, funtask.TaskDef)
        assert definition.name == "countdown"
        assert definition.fn is countdown
        assert definition.description == ""
        assert definition.example is None
        assert definition.keep_results is None
        server.validate()

    def test_decorator_with_options(self, tmp_path: Path) -> None:
        server = make_server(tmp_path)

        @server.task(description="Counts down", example={"start": 5}, keep_results=3)
        async def countdown(run: funtask.Run, params: funtask.Params) -> funtask.Result:
            return funtask.ok()

        definition = server.tasks["countdown"]
        assert definition.fn is countdown
        assert definition.description == "Counts down"
        assert definition.example == {"start": 5}
        assert definition.keep_results == 3
        server.validate()

    def test_decorator_empty_parentheses(self, tmp_path: Path) -> None:
        server = make_server(tmp_path)

        @server.task()
        async def plain(run: funtask.Run, params: funtask.Params) -> funtask.Result:
            return funtask.ok()

        assert list(server.tasks) == ["plain"]

    def test_decorator_positional_name(self, tmp_path: Path) -> None:
        server = make_server(tmp_path)

        @server.task("renamed", description="d")
        async def original(run: funtask.Run, params: funtask.Params) -> funtask.Result:
            return funtask.ok()

        assert list(server.tasks) == ["renamed"]
        assert server.tasks["renamed"].fn is original

    def test_decorator_name_keyword(self, tmp_path: Path) -> None:
        # SPEC section 3: ``@server.task(name=None, *, description=, example=, keep_results=)``
        server = make_server(tmp_path)

        @server.task(name="renamed", description="d")
        async def original(run: funtask.Run, params: funtask.Params) -> funtask.Result:
            return funtask.ok()

        assert list(server.tasks) == ["renamed"]
        assert server.tasks["renamed"].fn is original

    def test_name_defaults_to_function_name(self, tmp_path: Path) -> None:
        server = make_server(tmp_path)
        server.add_task(None, sync_task)
        assert list(server.tasks) == ["sync_task"]

    def test_add_task(self, tmp_path: Path) -> None:
        server = make_server(tmp_path)
        definition = server.add_task(
            "export", sync_task, description="Exports", example={"a": 1}, keep_results=2
        )
        assert isinstance(definition, funtask.TaskDef)
        assert server.tasks["export"] is definition
        assert definition.fn is sync_task
        assert definition.description == "Exports"
        assert definition.example == {"a": 1}
        assert definition.keep_results == 2
        server.validate()

    def test_tasks_mapping_in_registration_order(self, tmp_path: Path) -> None:
        server = make_server(tmp_path)
        for name in ("c", "a", "b"):
            server.add_task(name, async_task)
        assert list(server.tasks) == ["c", "a", "b"]
        assert len(server.tasks) == 3
        assert "a" in server.tasks
        assert "zzz" not in server.tasks

    def test_tasks_mapping_is_read_only(self, tmp_path: Path) -> None:
        server = valid_server(tmp_path)
        with pytest.raises(TypeError):
            server.tasks["other"] = server.tasks["work"]  # type: ignore[index]
        assert list(server.tasks) == ["work"]

    def test_example_is_copied(self, tmp_path: Path) -> None:
        server = make_server(tmp_path)
        example: dict[str, Any] = {"start": 5, "nested": {"items": [1, 2]}}

        @server.task(example=example)
        async def countdown(run: funtask.Run, params: funtask.Params) -> funtask.Result:
            return funtask.ok()

        example["start"] = 99
        example["new"] = True
        example["nested"]["items"].append(3)
        assert server.tasks["countdown"].example == {"start": 5, "nested": {"items": [1, 2]}}

    def test_example_copied_by_add_task(self, tmp_path: Path) -> None:
        server = make_server(tmp_path)
        example: dict[str, Any] = {"a": [1]}
        server.add_task("t", async_task, example=example)
        example["a"].append(2)
        assert server.tasks["t"].example == {"a": [1]}

    def test_task_def_is_frozen(self, tmp_path: Path) -> None:
        server = valid_server(tmp_path)
        with pytest.raises(AttributeError):
            server.tasks["work"].name = "other"  # type: ignore[misc]

    def test_not_callable(self, tmp_path: Path) -> None:
        server = make_server(tmp_path)
        with pytest.raises(TypeError):
            server.add_task("x", "not a function")  # type: ignore[arg-type]

    def test_nameless_callable_needs_name(self, tmp_path: Path) -> None:
        server = make_server(tmp_path)
        with pytest.raises(TypeError):
            server.add_task(None, functools.partial(async_task))

    def test_bad_description_and_example_types(self, tmp_path: Path) -> None:
        server = make_server(tmp_path)
        with pytest.raises(TypeError):
            server.add_task("x", async_task, description=5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            server.add_task("x", async_task, example=[1, 2])  # type: ignore[arg-type]

    @pytest.mark.parametrize("keep", [0, -1, True, 1.5, "3"])
    def test_bad_keep_results(self, tmp_path: Path, keep: Any) -> None:
        server = make_server(tmp_path)
        server.add_task("t", async_task, keep_results=keep)
        assert "keep_results" in problems_of(server)

    def test_keep_results_one_is_fine(self, tmp_path: Path) -> None:
        server = make_server(tmp_path)
        server.add_task("t", async_task, keep_results=1)
        server.validate()


class CallableAsync:
    async def __call__(self, run: funtask.Run, params: funtask.Params) -> funtask.Result:
        return funtask.ok()


class CallableSync:
    def __call__(self, run: funtask.Run, params: funtask.Params) -> funtask.Result:
        return funtask.ok()


class Methods:
    async def async_method(self, run: funtask.Run, params: funtask.Params) -> funtask.Result:
        return funtask.ok()

    def sync_method(self, run: funtask.Run, params: funtask.Params) -> funtask.Result:
        return funtask.ok()


async def async_with_extra(
    run: funtask.Run, params: funtask.Params, extra: int = 0
) -> funtask.Result:
    return funtask.ok()


class TestSyncAsyncDetection:
    @pytest.mark.parametrize(
        ("fn", "expected"),
        [
            (async_task, True),
            (sync_task, False),
            (CallableAsync(), True),
            (CallableSync(), False),
            (functools.partial(async_with_extra, extra=1), True),
            (functools.partial(functools.partial(async_with_extra), extra=2), True),
            (functools.partial(sync_task), False),
            (functools.partial(CallableAsync()), True),
            (Methods().async_method, True),
            (Methods().sync_method, False),
            (lambda run, params: funtask.ok(), False),
        ],
    )
    def test_is_async(self, tmp_path: Path, fn: Any, expected: bool) -> None:
        server = make_server(tmp_path)
        server.add_task("t", fn)
        assert server.tasks["t"].is_async is expected
        server.validate()

    def test_decorated_async_def(self, tmp_path: Path) -> None:
        server = make_server(tmp_path)

        @server.task
        async def a(run: funtask.Run, params: funtask.Params) -> funtask.Result:
            return funtask.ok()

        @server.task
        def b(run: funtask.Run, params: funtask.Params) -> funtask.Result:
            return funtask.ok()

        assert server.tasks["a"].is_async is True
        assert server.tasks["b"].is_async is False


# -- durations --------------------------------------------------------------

DURATIONS = ["callback_timeout", "sync_timeout", "shutdown_timeout", "max_duration"]


class TestDurations:
    @pytest.mark.parametrize("name", DURATIONS)
    @pytest.mark.parametrize(
        "value", [0, 0.0, 1, 2.5, 3600, timedelta(seconds=5), timedelta(minutes=10), timedelta(0)]
    )
    def test_accepted(self, tmp_path: Path, name: str, value: Any) -> None:
        valid_server(tmp_path, **{name: value}).validate()

    @pytest.mark.parametrize("name", DURATIONS)
    @pytest.mark.parametrize(
        "value",
        [
            -1,
            -0.001,
            math.nan,
            math.inf,
            -math.inf,
            timedelta(seconds=-1),
            "30",
            "30s",
            True,
            [1],
        ],
    )
    def test_rejected(self, tmp_path: Path, name: str, value: Any) -> None:
        message = problems_of(valid_server(tmp_path, **{name: value}))
        assert name in message

    @pytest.mark.parametrize("name", ["callback_timeout", "sync_timeout", "shutdown_timeout"])
    def test_none_rejected_where_not_optional(self, tmp_path: Path, name: str) -> None:
        assert name in problems_of(valid_server(tmp_path, **{name: None}))

    def test_max_duration_none_means_no_limit(self, tmp_path: Path) -> None:
        valid_server(tmp_path, max_duration=None).validate()

    def test_every_bad_duration_reported(self, tmp_path: Path) -> None:
        server = valid_server(
            tmp_path,
            callback_timeout=-1,
            sync_timeout=math.nan,
            shutdown_timeout=math.inf,
            max_duration=timedelta(seconds=-5),
        )
        with pytest.raises(funtask.ConfigError) as info:
            server.validate()
        assert len(info.value.problems) == 4


# -- integer settings -------------------------------------------------------


class TestIntegerSettings:
    @pytest.mark.parametrize("name", ["callback_retries", "result_history"])
    @pytest.mark.parametrize("value", [0, -1, -100])
    def test_below_one_rejected(self, tmp_path: Path, name: str, value: int) -> None:
        message = problems_of(valid_server(tmp_path, **{name: value}))
        assert name in message

    @pytest.mark.parametrize("name", ["callback_retries", "result_history"])
    @pytest.mark.parametrize("value", [True, 1.0, "3", None])
    def test_wrong_type_rejected(self, tmp_path: Path, name: str, value: Any) -> None:
        assert name in problems_of(valid_server(tmp_path, **{name: value}))

    @pytest.mark.parametrize("name", ["callback_retries", "result_history"])
    @pytest.mark.parametrize("value", [1, 5, 1000])
    def test_accepted(self, tmp_path: Path, name: str, value: int) -> None:
        valid_server(tmp_path, **{name: value}).validate()


# -- callback allowlist -----------------------------------------------------


class TestAllowlist:
    @pytest.mark.parametrize(
        "entries",
        [
            [],
            ["https://hooks.example.com"],
            ["https://hooks.example.com", "http://localhost:5678"],
            ["https://hooks.example.com/n8n/webhook"],
            ("http://10.0.0.1:8080",),
        ],
    )
    def test_valid(self, tmp_path: Path, entries: Any) -> None:
        valid_server(tmp_path, callback_allowlist=entries).validate()

    def test_generator_allowlist(self, tmp_path: Path) -> None:
        server = valid_server(tmp_path, callback_allowlist=(e for e in ["https://a.example"]))
        server.validate()
        server.validate()

    @pytest.mark.parametrize(
        "entry",
        [
            "ftp://x",
            "not a url",
            "",
            "https://",
            "hooks.example.com",
            "https://hooks.example.com?x=1",
            "https://hooks.example.com#frag",
        ],
    )
    def test_malformed_entry(self, tmp_path: Path, entry: str) -> None:
        server = valid_server(tmp_path, callback_allowlist=["https://ok.example", entry])
        message = problems_of(server)
        assert repr(entry) in message

    def test_non_str_entry(self, tmp_path: Path) -> None:
        server = valid_server(tmp_path, callback_allowlist=[b"https://x.example"])
        assert "allowlist" in problems_of(server)

    def test_bare_string_rejected(self, tmp_path: Path) -> None:
        server = valid_server(tmp_path, callback_allowlist="https://hooks.example.com")
        assert "callback_allowlist" in problems_of(server)

    def test_every_bad_entry_reported(self, tmp_path: Path) -> None:
        server = valid_server(tmp_path, callback_allowlist=["ftp://x", "not a url", "https://ok"])
        with pytest.raises(funtask.ConfigError) as info:
            server.validate()
        assert len(info.value.problems) == 2


# -- other settings ---------------------------------------------------------


class TestOtherSettings:
    def test_readiness_must_be_callable(self, tmp_path: Path) -> None:
        assert "readiness" in problems_of(valid_server(tmp_path, readiness="ready"))

    def test_readiness_callable_ok(self, tmp_path: Path) -> None:
        valid_server(tmp_path, readiness=lambda: None).validate()

    def test_lifespan_must_be_callable(self, tmp_path: Path) -> None:
        assert "lifespan" in problems_of(valid_server(tmp_path, lifespan=42))

    @pytest.mark.parametrize("name", ["max_body_size", "max_event_clients"])
    def test_positive_ints(self, tmp_path: Path, name: str) -> None:
        assert name in problems_of(valid_server(tmp_path, **{name: 0}))
        valid_server(tmp_path, **{name: 1}).validate()

    @pytest.mark.parametrize("secret", ["", b"", 5])
    def test_signing_secret(self, tmp_path: Path, secret: Any) -> None:
        message = problems_of(valid_server(tmp_path, callback_signing_secret=secret))
        assert "callback_signing_secret" in message

    @pytest.mark.parametrize("secret", ["whsec_abc", b"\x00\x01"])
    def test_signing_secret_ok(self, tmp_path: Path, secret: Any) -> None:
        valid_server(tmp_path, callback_signing_secret=secret).validate()

    def test_state_namespace(self, tmp_path: Path) -> None:
        server = valid_server(tmp_path)
        server.state.pool = "pool"
        assert server.state.pool == "pool"
        assert funtask.Server("other").state is not server.state

    def test_no_shared_registry_between_servers(self, tmp_path: Path) -> None:
        a = valid_server(tmp_path)
        b = make_server(tmp_path)
        assert "work" in a.tasks
        assert len(b.tasks) == 0

    def test_all_keywords_only(self) -> None:
        with pytest.raises(TypeError):
            funtask.Server("x", "token")  # type: ignore[call-arg]
