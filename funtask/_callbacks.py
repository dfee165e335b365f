"""Callback delivery: dead letter first, then POST with retries on Trio's clock.

This layer knows nothing of HTTP routes: it is handed a finished result and
a callback URL. The order is the spec's: write the dead letter (the safety
net) before the first attempt, delete it after a 2xx, keep it (with the
attempt count and last error) after the final failure.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx
import trio

from ._allowlist import redact_url
from ._deadletters import remove_dead_letter, update_dead_letter, write_dead_letter
from ._duration import format_duration
from ._http11 import LeanHTTP, LeanHTTPError
from ._observe import NO_OBSERVER, DeliveryResult, Observer
from ._run import job_log
from ._signing import signature_headers
from ._wire import FinishedJob, rfc3339

__all__ = [
    "RETRY_DELAYS",
    "AttemptOutcome",
    "CallbackSender",
    "Delivery",
    "DeliveryReport",
    "retry_delay",
]

logger: Final = logging.getLogger("funtask.callbacks")

RETRY_DELAYS: Final = (1.0, 5.0, 15.0, 60.0, 120.0)  # seconds before attempts 2, 3, ...
MAX_RETRY_DELAY: Final = 120.0  # seconds; also the cap on Retry-After


@dataclass
class DeliveryReport:
    """What a delivery did, for the store: how many attempts it made in all."""

    attempts: int = 0


@dataclass(frozen=True)
class AttemptOutcome:
    """What one POST achieved."""

    delivered: bool
    error: str = ""
    retry_after: float | None = None  # seconds the receiver asked us to wait
    status: int | None = None  # the HTTP status answered, if any


def retry_delay(failed_attempts: int, retry_after: float | None) -> float:
    """Seconds to wait after ``failed_attempts`` attempts, honouring a capped Retry-After."""
    index = min(failed_attempts, len(RETRY_DELAYS)) - 1
    delay = RETRY_DELAYS[index]
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_DELAY))
    return delay


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None or moment.tzinfo is None:
        return None
    seconds = moment.timestamp() - time.time()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


class CallbackSender:
    """Makes single callback attempts with the server's shared httpx client.

    With ``lean``, the URLs it can send exactly as httpx would (plain
    ``http://``, see :mod:`funtask._http11`) go through it instead, on
    keep-alive connections of its own, at a fraction of httpx's cost.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        timeout: float,
        signing_key: bytes | None,
        lean: LeanHTTP | None = None,
    ) -> None:
        self.client = client
        self.timeout = timeout
        self.signing_key = signing_key
        self.lean = lean

    async def attempt(
        self,
        url: str,
        body: bytes,
        message_id: str,
        extra_headers: Mapping[str, str] | None = None,
    ) -> AttemptOutcome:
        """POST ``body`` to ``url`` once; any 2xx is success, redirects are failures."""
        headers = {**extra_headers} if extra_headers else {}
        headers["Content-Type"] = "application/json"
        if self.signing_key is not None:
            headers.update(signature_headers(self.signing_key, message_id, int(time.time()), body))
        lean = self.lean
        route = None if lean is None else lean.route(url)
        status: int | None = None
        retry_after_value: str | None = None
        with trio.move_on_after(self.timeout):
            try:
                if route is not None:
                    assert lean is not None
                    status, response_headers = await lean.post(route, body, headers)
                    if status in (429, 503):
                        retry_after_value = _header(response_headers, b"retry-after")
                else:
                    response = await self.client.post(url, content=body, headers=headers)
                    status = response.status_code
                    if status in (429, 503):
                        retry_after_value = response.headers.get("Retry-After")
            except LeanHTTPError as exc:
                return AttemptOutcome(False, str(exc))
            except httpx.HTTPError as exc:
                return AttemptOutcome(False, f"{type(exc).__name__}: {exc}".rstrip(": "))
            except OSError as exc:
                return AttemptOutcome(False, f"{type(exc).__name__}: {exc}")
        if status is None:
            return AttemptOutcome(False, f"timed out after {format_duration(self.timeout)}")
        if 200 <= status < 300:
            return AttemptOutcome(True, status=status)
        retry_after = None
        if status in (429, 503):
            retry_after = parse_retry_after(retry_after_value)
        return AttemptOutcome(False, f"HTTP {status}", retry_after, status)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The first value of header ``name`` (lower case) in h11's response headers."""
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


class Delivery:
    """Delivers finished results to callback URLs, dead-lettering each one first."""

    def __init__(
        self,
        sender: CallbackSender,
        *,
        dead_letter_dir: str,
        retries: int,
        drain_started: trio.Event,
        observer: Observer = NO_OBSERVER,
        instance: str | None = None,
    ) -> None:
        self.sender = sender
        self.observer = observer
        self.instance = instance  # on every job log record (``extra``)
        self.dead_letter_dir = dead_letter_dir
        self.retries = retries
        self.drain_started = drain_started

    async def deliver(
        self,
        record: FinishedJob,
        url: str,
        *,
        single_attempt: bool,
        webhook_id: str,
        letter: trio.Path | None = None,
        attempts: int = 0,
        report: DeliveryReport | None = None,
        trace: Mapping[str, str] | None = None,
    ) -> bool:
        """Dead-letter ``record``, then POST it to ``url`` until a 2xx or the retries run out.

        Returns whether it was delivered. Cancelling the caller's scope (``/stop``
        during delivery) ends the schedule; the dead letter stays for replay.
        ``webhook_id`` is the result's one ``webhook-id`` (the same on every
        attempt, redelivery and replay). ``letter`` adopts an existing dead
        letter (a redelivery after a restart) instead of writing a new one;
        ``attempts`` counts the attempts made before. ``report``, if given,
        receives the attempt count. ``trace`` is the job's W3C trace context:
        kept in the dead letter, and the headers each attempt starts from (the
        observer may replace them).
        """
        log = job_log(logger, record.task, record.job_id, self.instance)
        meta = _meta(
            record, url, attempts=attempts, last_error="", webhook_id=webhook_id, trace=trace
        )
        if letter is None:
            path = await self._write(record, meta, "callback NOT attempted")
            if path is None:
                return False
        else:
            path = letter
            del meta["createdAt"]  # the adopted letter keeps its own
        message_id = webhook_id
        first_attempt = attempts
        outcome = AttemptOutcome(False, "stopped before the attempt ended")
        observer = self.observer
        ended: DeliveryResult = "stopped"  # unless it ends below: /stop or shutdown cut it short
        try:
            while True:
                attempts += 1
                headers: dict[str, str] = dict(trace) if trace else {}
                with observer.callback_scope(record, url, headers):
                    outcome = await self.sender.attempt(url, record.body, message_id, headers)
                observer.callback_attempted(record, url, outcome)
                if outcome.delivered:
                    ended = "delivered"
                    if log.isEnabledFor(logging.INFO):  # redacting the URL costs more than a log
                        log.info(
                            "callback delivered to %s (attempt %d)", redact_url(url), attempts
                        )
                    with trio.CancelScope(shield=True):  # delivered: never leave a copy
                        await remove_dead_letter(path)
                    return True
                log.warning(
                    "callback attempt %d to %s failed: %s",
                    attempts,
                    redact_url(url),
                    outcome.error,
                )
                if (
                    attempts - first_attempt >= self.retries
                    or single_attempt
                    or self.drain_started.is_set()
                ):
                    break
                # Draining cuts the wait short: the next attempt is made at once, and is the last.
                with trio.move_on_after(
                    retry_delay(attempts - first_attempt, outcome.retry_after)
                ):
                    await self.drain_started.wait()
            ended = "dead_lettered"
        finally:
            if report is not None:
                report.attempts = attempts
            with trio.CancelScope(shield=True):
                if not outcome.delivered:
                    meta.update(attempts=attempts, lastError=outcome.error)
                    await self._keep(path, record, url, meta)
            observer.delivery_ended(record, ended)
        return False

    async def _keep(
        self, path: trio.Path, record: FinishedJob, url: str, meta: dict[str, Any]
    ) -> None:
        attempts = meta["attempts"]
        log = job_log(logger, record.task, record.job_id, self.instance)
        try:
            await update_dead_letter(path, meta)
        except OSError:
            log.warning("cannot update the dead letter")
        log.error(
            "callback to %s not delivered after %d attempt(s); dead letter kept at %s",
            redact_url(url),
            attempts,
            path,
        )

    async def keep_unsent(
        self,
        record: FinishedJob,
        reason: str,
        *,
        webhook_id: str | None = None,
        trace: Mapping[str, str] | None = None,
    ) -> None:
        """Dead-letter a sync result whose response could not be sent."""
        meta = _meta(record, "", attempts=0, last_error=reason, webhook_id=webhook_id, trace=trace)
        path = await self._write(record, meta, "the unsent result is lost")
        if path is None:
            return
        job_log(logger, record.task, record.job_id, self.instance).warning(
            "sync result not sent (%s); dead letter at %s",
            reason,
            path,
        )

    async def _write(
        self, record: FinishedJob, meta: dict[str, Any], consequence: str
    ) -> trio.Path | None:
        """Write the dead letter; on failure log why (with the jobId) and return None."""
        try:
            return await write_dead_letter(
                self.dead_letter_dir, record.job_id, record.response, meta, encoded=record.body
            )
        except (OSError, ValueError, TypeError):
            job_log(logger, record.task, record.job_id, self.instance).error(
                "cannot write the dead letter; %s",
                consequence,
                exc_info=True,
            )
            return None


def _meta(
    record: FinishedJob,
    url: str,
    *,
    attempts: int,
    last_error: str,
    webhook_id: str | None = None,
    trace: Mapping[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "task": record.task,
        "callbackUrl": url,
        "attempts": attempts,
        "lastError": last_error,
        "createdAt": rfc3339(time.time()),
    }
    if webhook_id is not None:
        meta["webhookId"] = webhook_id
    if trace:
        meta.update(trace)  # "traceparent" (and "tracestate"): replay sends them again
    meta.update(extra)
    return meta
