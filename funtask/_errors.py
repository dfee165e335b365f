"""The library's own exceptions.

Exception tree::

    FuntaskError
    ├── ConfigError (also a ValueError)   invalid server configuration
    └── JobCancelled                      raised by Run.check_cancelled()
    ParamError (a ValueError)             a task parameter is missing or invalid
    TaskError (an Exception)              raised by a task to fail with a code
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ConfigError", "FuntaskError", "JobCancelled", "ParamError", "TaskError"]


class FuntaskError(Exception):
    """Base class of the exceptions funtask raises itself."""


class ConfigError(FuntaskError, ValueError):
    """The server configuration is invalid; ``problems`` lists every problem found."""

    def __init__(self, server_name: str, problems: Sequence[str]) -> None:
        self.server_name = server_name
        self.problems = tuple(problems)
        super().__init__(f'server "{server_name}": ' + "; ".join(self.problems))


class JobCancelled(FuntaskError):
    """The job was cancelled; raised by :meth:`funtask.Run.check_cancelled`."""

    def __init__(self, message: str = "job cancelled") -> None:
        super().__init__(message)


class ParamError(ValueError):
    """One or more task parameters are missing or have the wrong type.

    ``problems`` holds ``(key, expected)`` pairs, e.g. ``("limit", "int")``.
    Uncaught in a task, it fails the job with code ``invalid_params`` and its
    message: bad parameters are the caller's mistake, not a crash.
    """

    #: The job's error code when a task lets this exception escape.
    error_code: str = "invalid_params"

    def __init__(self, message: str, problems: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class TaskError(Exception):
    """An exception carrying a machine-readable code and a user-facing message.

    Raising it from a task fails the job with ``code``. ``message`` is the
    technical text (``str(exc)``); ``user_message`` is what the caller sees
    and defaults to ``message``.
    """

    def __init__(self, code: str, message: str, *, user_message: str | None = None) -> None:
        if not isinstance(code, str) or not code:
            raise ValueError(f"code must be a non-empty str, not {code!r}")
        super().__init__(message)
        self.error_code = code
        self.user_message = message if user_message is None else user_message
