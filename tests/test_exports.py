"""The public API: ``__all__``, docstrings, the Go-to-Python name table, py.typed."""

from __future__ import annotations

import dataclasses
import importlib.resources
import inspect
import types
from typing import Any

import pytest

import funtask
import funtask.testing

UNDOCUMENTED = {"__version__", "MISSING"}


def test_all_is_sorted() -> None:
    assert funtask.__all__ == sorted(funtask.__all__)


def test_all_has_no_duplicates() -> None:
    assert len(funtask.__all__) == len(set(funtask.__all__))


@pytest.mark.parametrize("name", funtask.__all__)
def test_every_name_exists(name: str) -> None:
    assert hasattr(funtask, name)


@pytest.mark.parametrize("name", sorted(set(funtask.__all__) - UNDOCUMENTED))
def test_every_name_has_a_docstring(name: str) -> None:
    obj = getattr(funtask, name)
    doc = obj.__doc__
    assert isinstance(doc, str)
    assert doc.strip()
    if dataclasses.is_dataclass(obj):
        # dataclasses invent "Result(success: bool, ...)" when there is no docstring
        assert not doc.startswith(f"{name}(")


def test_public_names_are_exported() -> None:
    """Every public class or function defined by funtask is listed in ``__all__``."""
    for name, obj in vars(funtask).items():
        if name.startswith("_") or isinstance(obj, types.ModuleType):
            continue
        if getattr(obj, "__module__", "").startswith("funtask"):
            assert name in funtask.__all__, name


def test_star_import() -> None:
    namespace: dict[str, Any] = {}
    exec("from funtask import *", namespace)
    assert set(funtask.__all__) <= set(namespace)


def test_version() -> None:
    assert isinstance(funtask.__version__, str)
    assert funtask.__version__.count(".") >= 1


def test_missing_sentinel() -> None:
    assert repr(funtask.MISSING) == "MISSING"
    assert funtask.MISSING is funtask.MISSING


def test_testing_all_is_sorted_and_exists() -> None:
    assert funtask.testing.__all__ == sorted(funtask.testing.__all__)
    for name in funtask.testing.__all__:
        obj = getattr(funtask.testing, name)
        assert obj.__doc__ and obj.__doc__.strip(), name


def test_testing_has_no_public_name_starting_with_test() -> None:
    public = [name for name in dir(funtask.testing) if not name.startswith("_")]
    assert public  # sanity
    offenders = [name for name in public if name.lower().startswith("test")]
    assert offenders == []


def test_ships_py_typed() -> None:
    marker = importlib.resources.files("funtask").joinpath("py.typed")
    assert marker.is_file()


# -- Go API name -> Python counterpart (SPEC section 3 and the seed index) ------

GO_TO_PYTHON: dict[str, str] = {
    # constructors and the server
    "New": "Server",
    "Server": "Server",
    "Option": "Server.__init__",
    "Task": "Server.task",
    "Task (function form)": "Server.add_task",
    "TaskDef": "TaskDef",
    "ListenAndServe": "Server.run",
    "Server.ListenAndServe": "Server.run",
    # results
    "Result": "Result",
    "OK": "ok",
    "Fail": "fail",
    "FailFromError": "fail_from_error",
    "Result.WithData": "Result.with_data",
    "Result.WithCause": "Result.with_cause",
    "ErrorCoder": "ErrorCoder",
    "UserMessager": "UserMessager",
    # run
    "Run": "Run",
    "Run.Step": "Run.step",
    "Run.Progress": "Run.progress",
    "Run.Steps": "Run.steps",
    # params
    "Params": "Params",
    "Params.String": "Params.str",
    "Params.Int": "Params.int",
    "Params.Float": "Params.float",
    "Params.Bool": "Params.bool",
    "Params.Time": "Params.time",
    "Params.Raw": "Params.raw",
    "Params.Reader": "Params.reader",
    "ParamReader": "ParamReader",
    "ParamReader.String": "ParamReader.str",
    "ParamReader.Int": "ParamReader.int",
    "ParamReader.Float": "ParamReader.float",
    "ParamReader.Bool": "ParamReader.bool",
    "ParamReader.Time": "ParamReader.time",
    "ParamReader.Err": "ParamReader.err",
    # testing helpers
    "TestRun": "testing.make_run",
    "TestRunWithContext": "testing.make_run",
    "TestParams": "testing.make_params",
    "TestParamsRaw": "testing.make_raw_params",
}

#: Go Result struct fields -> Python dataclass fields.
GO_RESULT_FIELDS: dict[str, str] = {
    "Success": "success",
    "Message": "message",
    "ErrorCode": "error_code",
    "Data": "data",
    "LastStep": "last_step",
}

#: Go ``With*`` options and ``TaskDef`` builder methods -> Python keyword arguments.
GO_KEYWORDS: dict[str, tuple[str, str]] = {
    "WithAuthToken": ("Server.__init__", "auth_token"),
    "WithDeadLetterDir": ("Server.__init__", "dead_letter_dir"),
    "WithCallbackAllowlist": ("Server.__init__", "callback_allowlist"),
    "WithCallbackRetries": ("Server.__init__", "callback_retries"),
    "WithCallbackTimeout": ("Server.__init__", "callback_timeout"),
    "WithDashboard": ("Server.__init__", "dashboard"),
    "WithMaxDuration": ("Server.__init__", "max_duration"),
    "WithSyncTimeout": ("Server.__init__", "sync_timeout"),
    "WithShutdownTimeout": ("Server.__init__", "shutdown_timeout"),
    "WithResultHistory": ("Server.__init__", "result_history"),
    "WithReadiness": ("Server.__init__", "readiness"),
    "TaskDef.Description": ("Server.task", "description"),
    "TaskDef.Example": ("Server.task", "example"),
    "TaskDef.KeepResults": ("Server.task", "keep_results"),
    "TaskDef.Description (function form)": ("Server.add_task", "description"),
    "TaskDef.Example (function form)": ("Server.add_task", "example"),
    "TaskDef.KeepResults (function form)": ("Server.add_task", "keep_results"),
}

#: Python-only settings from SPEC section 2.
PYTHON_ONLY_KEYWORDS = [
    "max_body_size",
    "callback_signing_secret",
    "max_event_clients",
    "lifespan",
    "metrics",
    "metrics_auth",
    "instance_id",
]

#: The Go names in the seed's index; each must be covered by a table above.
SEED_INDEX = [
    "ErrorCoder",
    "Option",
    "WithAuthToken",
    "WithCallbackAllowlist",
    "WithCallbackRetries",
    "WithCallbackTimeout",
    "WithDashboard",
    "WithDeadLetterDir",
    "WithHandler",
    "WithMaxDuration",
    "WithReadiness",
    "WithResultHistory",
    "WithShutdownTimeout",
    "WithSyncTimeout",
    "ParamReader",
    "ParamReader.Bool",
    "ParamReader.Err",
    "ParamReader.Float",
    "ParamReader.Int",
    "ParamReader.String",
    "Params",
    "TestParams",
    "TestParamsRaw",
    "Params.Bool",
    "Params.Float",
    "Params.Int",
    "Params.Raw",
    "Params.Reader",
    "Params.String",
    "Params.Time",
    "Result",
    "Fail",
    "FailFromError",
    "Result.WithCause",
    "Result.WithData",
    "Run",
    "TestRun",
    "TestRunWithContext",
    "Run.Progress",
    "Server",
    "Server.ListenAndServe",
    "TaskDef",
    "TaskDef.Description",
    "TaskDef.Example",
    "TaskDef.KeepResults",
    "TaskFunc",
    "UserMessager",
]

#: Go names whose Python counterpart is something other than a name or keyword.
GO_HANDLERS = {"WithHandler": ("Server.add_handler", "Server.handler")}

#: ``TaskFunc`` is ``async def fn(run: Run, params: Params) -> Result``: no name of its own.
GO_CONCEPTS = {"TaskFunc": ("Run", "Params", "Result")}


def resolve(dotted: str) -> Any:
    """Resolve ``Name.attr`` on ``funtask`` (or ``testing.name`` on ``funtask.testing``)."""
    parts = dotted.split(".")
    obj: Any = funtask
    if parts[0] == "testing":
        obj = funtask.testing
        parts = parts[1:]
        assert parts[0] in funtask.testing.__all__, dotted
    else:
        assert parts[0] in funtask.__all__, dotted
    for part in parts:
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize(("go", "python"), sorted(GO_TO_PYTHON.items()))
def test_go_name_has_python_counterpart(go: str, python: str) -> None:
    obj = resolve(python)
    assert obj is not None
    if not isinstance(obj, type) and python.split(".")[-1] != "__init__":
        assert callable(obj) or isinstance(obj, property), (go, python)


@pytest.mark.parametrize(("go", "python"), sorted(GO_RESULT_FIELDS.items()))
def test_go_result_field_has_python_counterpart(go: str, python: str) -> None:
    fields = [f.name for f in dataclasses.fields(funtask.Result)]
    assert python in fields


@pytest.mark.parametrize(("go", "target"), sorted(GO_KEYWORDS.items()))
def test_go_option_has_python_keyword(go: str, target: tuple[str, str]) -> None:
    function, keyword = target
    parameters = inspect.signature(resolve(function)).parameters
    assert keyword in parameters, (go, function, keyword)
    assert parameters[keyword].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("keyword", PYTHON_ONLY_KEYWORDS)
def test_python_only_settings_exist(keyword: str) -> None:
    parameters = inspect.signature(funtask.Server).parameters
    assert parameters[keyword].kind is inspect.Parameter.KEYWORD_ONLY


def test_server_name_is_the_only_positional() -> None:
    parameters = inspect.signature(funtask.Server).parameters
    positional = [
        p.name for p in parameters.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY
    ]
    assert positional == ["name"]


def test_handler_counterparts() -> None:
    for names in GO_HANDLERS.values():
        for name in names:
            assert callable(resolve(name))


def test_task_func_concept() -> None:
    for names in GO_CONCEPTS.values():
        for name in names:
            assert isinstance(resolve(name), type)


def test_task_decorator_signature_matches_spec() -> None:
    # SPEC: ``@server.task(name=None, *, description=, example=, keep_results=)``
    parameters = inspect.signature(funtask.Server.task).parameters
    assert "name" in parameters
    assert parameters["name"].default is None


def test_seed_index_fully_covered() -> None:
    covered = set(GO_TO_PYTHON) | set(GO_KEYWORDS) | set(GO_HANDLERS) | set(GO_CONCEPTS)
    covered |= {f"Result.{name}" for name in GO_RESULT_FIELDS}
    missing = [name for name in SEED_INDEX if name not in covered]
    assert missing == []


def test_server_is_asgi_app() -> None:
    assert inspect.iscoroutinefunction(funtask.Server.__call__)


def test_server_serve_signature() -> None:
    assert inspect.iscoroutinefunction(funtask.Server.serve)
    parameters = inspect.signature(funtask.Server.serve).parameters
    assert parameters["shutdown_trigger"].kind is inspect.Parameter.KEYWORD_ONLY
    assert parameters["task_status"].kind is inspect.Parameter.KEYWORD_ONLY


def test_testing_open_test_client_exists() -> None:
    assert callable(funtask.testing.open_test_client)


def test_exception_hierarchy() -> None:
    assert issubclass(funtask.ConfigError, funtask.FuntaskError)
    assert issubclass(funtask.ConfigError, ValueError)
    assert issubclass(funtask.JobCancelled, funtask.FuntaskError)
    assert issubclass(funtask.ParamError, ValueError)
    assert issubclass(funtask.TaskError, Exception)
