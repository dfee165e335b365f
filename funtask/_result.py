"""What a task returns: :class:`Result` and the helpers that build one."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["ErrorCoder", "Result", "UserMessager", "fail", "fail_from_error", "ok"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@runtime_checkable
class ErrorCoder(Protocol):
    """An exception that carries a machine-readable ``error_code``."""

    error_code: str


@runtime_checkable
class UserMessager(Protocol):
    """An exception that carries a ``user_message`` safe to show the caller."""

    user_message: str


@dataclass(frozen=True)
class Result:
    """The outcome of a job: success or a failure with a machine-readable code.

    ``data`` is a read-only mapping copied in. ``cause`` (the exception behind
    a failure) is logged by the server but kept out of ``repr``, equality and
    the JSON sent to callers. Results are immutable and not hashable.
    """

    success: bool
    message: str = ""
    error_code: str = ""
    data: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    last_step: str = ""
    cause: BaseException | None = field(default=None, repr=False, compare=False)

    __hash__ = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if type(self.success) is not bool:
            raise TypeError(f"success must be a bool, not {self.success!r}")
        for name in ("message", "error_code", "last_step"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, not {value!r}")
        data = self.data
        if data is not _EMPTY:
            if type(data) is not dict and not isinstance(data, Mapping):
                raise TypeError(f"data must be a mapping, not {data!r}")
            object.__setattr__(self, "data", MappingProxyType(dict(data)))

    def with_data(self, key: str, value: Any) -> Result:
        """Return a copy with ``data[key] = value``; this result is untouched."""
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {key!r}")
        return self._copy(data=MappingProxyType({**self.data, key: value}))

    def with_cause(self, exc: BaseException | None) -> Result:
        """Return a copy carrying ``exc`` as its cause (logged, never sent)."""
        return self._copy(cause=exc)

    def _copy(self, **changes: Any) -> Result:
        """A copy with ``changes`` applied, which the caller has already validated.

        Cheaper than :func:`dataclasses.replace`, which runs ``__post_init__``
        again and copies ``data`` once more.
        """
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__, **changes)
        return copy


def ok(message: str = "") -> Result:
    """Return a successful :class:`Result` with an optional message."""
    return Result(True, message)


def fail(code: str, message: str = "") -> Result:
    """Return a failed :class:`Result` with a machine-readable ``code``."""
    if not isinstance(code, str) or not code:
        raise ValueError(f"code must be a non-empty str, not {code!r}")
    return Result(False, message, code)


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """Yield ``exc``, its group members, causes and contexts, each once."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        followers: list[BaseException] = []
        if isinstance(current, BaseExceptionGroup):
            followers.extend(current.exceptions)
        if current.__cause__ is not None:
            followers.append(current.__cause__)
        if current.__context__ is not None and not current.__suppress_context__:
            followers.append(current.__context__)
        stack.extend(reversed(followers))


def _nonempty_str_attr(exc: BaseException, name: str) -> str | None:
    value = getattr(exc, name, None)
    return value if isinstance(value, str) and value else None


def fail_from_error(exc: BaseException, fallback_code: str) -> Result:
    """Turn an exception into a failed :class:`Result`.

    The code comes from the first exception in the chain (``exc``, the
    members of exception groups, ``__cause__``, then ``__context__`` unless
    suppressed) that has an ``error_code``, else ``fallback_code``. The
    message comes from the first that has a ``user_message``, else
    ``str(exc)``. ``exc`` is kept as the cause.
    """
    code: str | None = None
    message: str | None = None
    for item in _exception_chain(exc):
        if code is None:
            code = _nonempty_str_attr(item, "error_code")
        if message is None:
            message = _nonempty_str_attr(item, "user_message")
        if code is not None and message is not None:
            break
    return fail(code or fallback_code, str(exc) if message is None else message).with_cause(exc)
