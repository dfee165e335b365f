"""Keeping secrets out of logs: httpx logs each request's full URL at INFO."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from ._allowlist import redact_url

__all__ = ["RedactURLs", "redacting_httpx_logs"]

HTTPX_LOGGER: Final = "httpx"


class RedactURLs(logging.Filter):
    """Rewrite URL arguments of log records without query string, fragment or user-info."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact every argument that looks like an http(s) URL; never drops a record."""
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(_redact(arg) for arg in args)
        return True


def _redact(value: object) -> object:
    text = str(value) if type(value).__name__ == "URL" else value
    if isinstance(text, str) and text.startswith(("http://", "https://")):
        return redact_url(text)
    return value


_FILTER: Final = RedactURLs()


@contextmanager
def redacting_httpx_logs() -> Iterator[None]:
    """Install the URL filter on the ``httpx`` logger while the block runs."""
    logger = logging.getLogger(HTTPX_LOGGER)
    logger.addFilter(_FILTER)
    try:
        yield
    finally:
        logger.removeFilter(_FILTER)
