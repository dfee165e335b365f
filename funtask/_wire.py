"""The JSON shapes of the wire protocol: job responses and history entries."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final

from ._duration import duration_ms, format_duration
from ._result import Result

__all__ = ["FinishedJob", "dumps", "finished_job", "rfc3339"]

_encoder: Final = json.JSONEncoder(
    allow_nan=False, ensure_ascii=False, separators=(",", ":"), check_circular=True
)


def dumps(obj: Any) -> bytes:
    """Serialise ``obj`` as strict, compact UTF-8 JSON (no NaN or infinities).

    A lone surrogate (which UTF-8 cannot carry) is written as its ``\\uXXXX``
    escape, which is what it would be in ASCII JSON.
    """
    return _encoder.encode(obj).encode("utf-8", "backslashreplace")


_second_cache: tuple[int, str] = (0, "1970-01-01T00:00:00")


def rfc3339(wall: float) -> str:
    """Format a wall-clock timestamp as RFC 3339 in UTC with a ``Z``.

    Milliseconds are shown (truncated) when the timestamp has a fractional
    microsecond part, as ``datetime.isoformat(timespec="milliseconds")``.
    """
    global _second_cache
    # Rounded to the microsecond exactly as datetime.fromtimestamp rounds.
    fraction, whole = math.modf(wall)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        whole += 1
        micro -= 1_000_000
    elif micro < 0:
        whole -= 1
        micro += 1_000_000
    second = int(whole)
    cached_second, prefix = _second_cache
    if cached_second != second:
        moment = datetime.fromtimestamp(second, timezone.utc)
        prefix = moment.replace(tzinfo=None).isoformat(timespec="seconds")
        _second_cache = (second, prefix)
    return f"{prefix}.{micro // 1000:03d}Z" if micro else f"{prefix}Z"


@dataclass(frozen=True)
class FinishedJob:
    """A finished job's result as stored in history and sent to callers."""

    task: str
    job_id: str
    result: Result
    duration: str
    finished_at: float  # wall clock, seconds since the epoch
    response: dict[str, Any]  # the job response document
    body: bytes  # ``response`` serialised once
    entry: dict[str, Any]  # the /health history entry

    @property
    def success(self) -> bool:
        """Whether the job succeeded."""
        return self.result.success


def finished_job(
    task: str, job_id: str, result: Result, duration: float, *, finished_at: float | None = None
) -> FinishedJob:
    """Build the stored record of a result.

    Raises:
        TypeError, ValueError, RecursionError: the result's data cannot be serialised.
    """
    wall = time.time() if finished_at is None else finished_at
    text = format_duration(duration)
    response: dict[str, Any] = {"jobId": job_id, "success": result.success}
    entry: dict[str, Any] = {"jobId": job_id, "success": result.success}
    if result.success and result.message:
        response["message"] = entry["message"] = result.message
    response["duration"] = entry["duration"] = text
    response["durationMs"] = duration_ms(duration)
    if result.success:
        if result.data:
            response["data"] = dict(result.data)
    else:
        error: dict[str, Any] = {"code": result.error_code, "message": result.message}
        if result.last_step:
            error["step"] = result.last_step
        response["error"] = error
        # The same object as the job response's (Go's history entries embed it).
        entry["message"] = result.message
        entry["error"] = error
    entry["finished"] = rfc3339(wall)
    body = dumps(response)
    return FinishedJob(task, job_id, result, text, wall, response, body, entry)
