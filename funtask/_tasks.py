"""Task definitions: what ``@server.task`` registers."""

from __future__ import annotations

import copy
import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeAlias

if TYPE_CHECKING:
    from ._params import Params
    from ._result import Result
    from ._run import Run

__all__ = ["AsyncTaskFunction", "SyncTaskFunction", "TaskDef", "TaskFunction", "task_name_problem"]

AsyncTaskFunction: TypeAlias = "Callable[[Run, Params], Awaitable[Result]]"
SyncTaskFunction: TypeAlias = "Callable[[Run, Params], Result]"
TaskFunction: TypeAlias = "AsyncTaskFunction | SyncTaskFunction"

_TASK_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,128}")


def task_name_problem(name: object) -> str | None:
    """Return why ``name`` is not a valid task name, or ``None``."""
    if not isinstance(name, str) or not _TASK_NAME.fullmatch(name):
        return f"invalid task name {name!r} (1-128 characters of A-Z a-z 0-9 . _ -)"
    return None


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` returns a coroutine (async functions, partials, async __call__)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isclass(fn):
        return False
    call = getattr(fn, "__call__", None)  # noqa: B004
    return call is not None and not inspect.isfunction(fn) and inspect.iscoroutinefunction(call)


@dataclass(frozen=True)
class TaskDef:
    """A registered task: its name, function and the metadata shown on ``/health``."""

    name: str
    fn: TaskFunction
    description: str = ""
    example: Mapping[str, Any] | None = None
    keep_results: int | None = None
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "example", copy.deepcopy(dict(self.example or {})) or None)
        object.__setattr__(self, "is_async", is_async_callable(self.fn))
