"""JSON log lines: ``python -m funtask serve --log-format json`` (SPEC section 6).

One object per line with ``time``, ``level``, ``logger`` and ``message``;
``task``, ``jobId`` and ``instance`` on records about a job (passed as
``extra`` by the job log adapter); ``traceId``/``spanId`` when a recording
OpenTelemetry span is current; ``exception`` when there is one. Nothing else:
arbitrary extras could carry secrets.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, Final

__all__ = ["JSONFormatter"]

_JOB_FIELDS: Final = (("task", "task"), ("job_id", "jobId"), ("instance", "instance"))


def _timestamp(created: float) -> str:
    moment = datetime.fromtimestamp(created, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _trace_ids() -> tuple[str, str] | None:
    """The current recording span's trace and span ids, if OpenTelemetry is in use."""
    trace = sys.modules.get("opentelemetry.trace")  # never imported just for logging
    if trace is None:
        return None
    span = trace.get_current_span()
    if not span.is_recording():
        return None
    context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


class JSONFormatter(logging.Formatter):
    """Format each record as one line of JSON (see the module docstring for the members)."""

    def format(self, record: logging.LogRecord) -> str:
        """Return ``record`` as a single line of JSON."""
        message = record.getMessage()
        document: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for attribute, member in _JOB_FIELDS:
            value = record.__dict__.get(attribute)
            if value is not None:
                document[member] = str(value)
        prefix = record.__dict__.get("funtask_prefix")
        if isinstance(prefix, str) and message.startswith(prefix):
            document["message"] = message[len(prefix) :]  # the text format's "[task jobId] "
        ids = _trace_ids()
        if ids is not None:
            document["traceId"], document["spanId"] = ids
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        return json.dumps(document, ensure_ascii=False, default=str)
