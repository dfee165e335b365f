"""funtask: turn Python functions into HTTP-callable task workers, on Trio.

An orchestrator POSTs ``/run/{task}``, watches ``/health`` and ``/events``,
can ``/stop`` the job, and gets the result in the response or as a callback.
"""

from __future__ import annotations

from ._errors import ConfigError as ConfigError
from ._errors import FuntaskError as FuntaskError
from ._errors import JobCancelled as JobCancelled
from ._errors import ParamError as ParamError
from ._errors import TaskError as TaskError
from ._params import MISSING as MISSING
from ._params import ParamReader as ParamReader
from ._params import Params as Params
from ._result import ErrorCoder as ErrorCoder
from ._result import Result as Result
from ._result import UserMessager as UserMessager
from ._result import fail as fail
from ._result import fail_from_error as fail_from_error
from ._result import ok as ok
from ._run import Progress as Progress
from ._run import Run as Run
from ._server import Server as Server
from ._tasks import TaskDef as TaskDef

__version__ = "0.2.0"

__all__ = [
    "ConfigError",
    "ErrorCoder",
    "FuntaskError",
    "JobCancelled",
    "MISSING",
    "ParamError",
    "ParamReader",
    "Params",
    "Progress",
    "Result",
    "Run",
    "Server",
    "TaskDef",
    "TaskError",
    "UserMessager",
    "__version__",
    "fail",
    "fail_from_error",
    "ok",
]
