"""Parsing and validating the ``/run`` request body, as Go's decoder would."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "MAX_JOB_ID_LENGTH",
    "RequestError",
    "RunRequest",
    "new_job_id",
    "parse_run_body",
    "validate_job_id",
]

MAX_JOB_ID_LENGTH: Final = 256  # characters
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


class RequestError(ValueError):
    """The request body is invalid; the message is the one sent to the client."""


@dataclass(frozen=True)
class RunRequest:
    """The fields of a ``/run`` body; absent or ``null`` fields are ``None``/empty."""

    job_id: str | None = None
    callback_url: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # beyond float64, as Go's decoder refuses it
        raise ValueError(f"number {text[:20]!r} out of range")
    return value


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)


def _decode(body: bytes) -> Any:
    # What json.loads does with bytes, minus building a decoder per call.
    try:
        return _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except (ValueError, RecursionError, UnicodeDecodeError, TypeError) as exc:
        raise RequestError("invalid request body") from exc


def _lookup(document: dict[str, Any], name: str) -> Any:
    """Go's field matching: an exact key first, else a case-insensitive one."""
    if name in document:
        return document[name]
    lowered = name.lower()
    for key, value in document.items():
        if key.lower() == lowered:
            return value
    return None


def parse_run_body(body: bytes) -> RunRequest:
    """Parse a ``/run`` body; raise :class:`RequestError` when it is not valid."""
    if not body.strip():
        return RunRequest()
    document = _decode(body)
    if document is None:
        return RunRequest()
    if not isinstance(document, dict):
        raise RequestError("invalid request body")
    job_id = _lookup(document, "jobId")
    callback_url = _lookup(document, "callbackUrl")
    params = _lookup(document, "params")
    if job_id is not None and not isinstance(job_id, str):
        raise RequestError("invalid request body")
    if callback_url is not None and not isinstance(callback_url, str):
        raise RequestError("invalid request body")
    if params is not None and not isinstance(params, dict):
        raise RequestError("invalid request body")
    return RunRequest(_scrub(job_id) or None, callback_url or None, params or {})


def _scrub(text: str | None) -> str | None:
    """Replace lone surrogates (from ``\\ud800`` escapes) with U+FFFD, as Go's decoder does."""
    if text is None or text.isascii():
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def validate_job_id(job_id: str) -> bool:
    """Whether a client-chosen jobId is acceptable (1-256 chars, not blank, no controls)."""
    return (
        0 < len(job_id) <= MAX_JOB_ID_LENGTH
        and not job_id.isspace()
        and _CONTROL.search(job_id) is None
    )


def new_job_id() -> str:
    """A random UUID4 as text, as ``str(uuid.uuid4())`` gives it, at a third of the cost."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
