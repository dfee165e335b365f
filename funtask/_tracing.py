"""Traces (SPEC section 6): an :class:`~funtask._observe.Observer` built on ``opentelemetry-api``.

Imported only when ``opentelemetry-api`` is installed (``Runtime._make_observers``
adds it then); funtask never configures an SDK, the application does.

With an SDK configured when the server starts serving (the global tracer
provider is no longer the API's proxy), each job gets one span ``funtask.job``:

- its parent is the ``/run`` request's current span when that one is recording
  (an ASGI instrumentation), else the W3C ``traceparent``/``tracestate`` of the
  request's headers, else none (a new trace). ``job_started`` runs in the
  request's task, which is where both are found; the job's own task (started
  with ``start_soon`` from the server's nursery) would see neither;
- it is current while the task function runs (``job_scope``), in its nurseries
  and in a ``def`` task's worker thread, so the task's own spans nest under it;
- it carries ``funtask.task`` and ``funtask.job_id``, the first
  :data:`MAX_STEP_EVENTS` steps as events, and once the result exists
  ``funtask.outcome`` and ``funtask.error.code``, status ERROR on failure, and
  the exception (with its traceback) for ``panic`` only; then it ends.

Each callback attempt is a span ``funtask.callback`` (kind CLIENT) under the
job's, whose ``traceparent`` (and ``tracestate``) the POST carries.

The job's trace context (its span's, or without an SDK the validated incoming
headers) is kept on the job as a W3C carrier dict (``Job.trace_context``); the
delivery writes it into the dead letter and starts each attempt's headers from
it, so without an SDK the incoming headers are forwarded verbatim and no span
is made, and a replayed dead letter continues the trace.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ._allowlist import redact_url
from ._observe import Observer
from ._tracecontext import TRACEPARENT, TRACESTATE, carrier_from_headers

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._callbacks import AttemptOutcome
    from ._jobs import Job
    from ._wire import FinishedJob

__all__ = ["MAX_STEP_EVENTS", "Tracing"]

MAX_STEP_EVENTS: Final = 100  # step events per job span; later steps are not recorded
JOB_SPAN: Final = "funtask.job"
CALLBACK_SPAN: Final = "funtask.callback"
STEP_EVENT: Final = "funtask.step"

_W3C: Final = TraceContextTextMapPropagator()
# What the global provider is while no SDK is configured.
_NO_SDK: Final = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_NO_SCOPE: Final[AbstractContextManager[None]] = contextlib.nullcontext()


class _JobTrace:
    """A job's span, the context that makes it current, and its step-event count."""

    __slots__ = ("context", "span", "steps")

    def __init__(self, span: trace.Span, context: Context) -> None:
        self.span = span
        self.context = context
        self.steps = 0

    def add_step(self, message: str) -> None:
        """Record a step as a span event (the first :data:`MAX_STEP_EVENTS`; any thread)."""
        if self.steps < MAX_STEP_EVENTS and self.span.is_recording():
            self.steps += 1
            self.span.add_event(STEP_EVENT, {STEP_EVENT: message})


class _Current(AbstractContextManager[None]):
    """Makes an OpenTelemetry context current in this task for the ``with`` block."""

    __slots__ = ("_context", "_token")

    def __init__(self, context: Context) -> None:
        self._context = context
        self._token: Token[Context] | None = None

    def __enter__(self) -> None:
        self._token = otel_context.attach(self._context)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            otel_context.detach(self._token)


class _CallbackSpan(AbstractContextManager[None]):
    """One callback attempt's CLIENT span; its ``traceparent`` goes into the POST's headers."""

    __slots__ = ("_headers", "_owner", "_record", "_span", "_token", "_tracer", "_url")

    def __init__(
        self,
        owner: Tracing,
        tracer: trace.Tracer,
        record: FinishedJob,
        url: str,
        headers: dict[str, str],
    ) -> None:
        self._owner = owner
        self._tracer = tracer
        self._record = record
        self._url = url
        self._headers = headers
        self._span: trace.Span = trace.INVALID_SPAN
        self._token: Token[Context] | None = None

    def __enter__(self) -> None:
        headers = self._headers
        parent = _W3C.extract(headers)  # the job's context, which the delivery put there
        self._span = span = self._tracer.start_span(
            CALLBACK_SPAN,
            context=parent,
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": "POST",
                "url.full": redact_url(self._url),  # no user-info, query or fragment
                "funtask.task": self._record.task,
                "funtask.job_id": self._record.job_id,
            },
        )
        context = trace.set_span_in_context(span, parent)
        headers.pop(TRACEPARENT, None)
        headers.pop(TRACESTATE, None)
        _W3C.inject(headers, context=context)
        self._token = otel_context.attach(context)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
        if exc is None:  # callback_attempted ends it with the outcome
            self._owner._attempts[id(self._record)] = self._span
        else:  # /stop or shutdown cut the attempt short
            self._span.set_status(Status(StatusCode.ERROR, "attempt cut short"))
            self._span.end()


class Tracing(Observer):
    """Makes job and callback spans when an SDK is configured, else forwards trace context."""

    def __init__(self, version: str) -> None:
        # The global provider is looked at once, when the server starts serving: the
        # application configures its SDK before that (in the module that builds the
        # Server), and a per-job look costs as much as the rest of this observer.
        provider = trace.get_tracer_provider()
        self._tracer: trace.Tracer | None = (
            None if isinstance(provider, _NO_SDK) else provider.get_tracer("funtask", version)
        )
        self._attempts: dict[int, trace.Span] = {}  # id(record) -> span, scope to outcome

    def tracer(self) -> trace.Tracer | None:
        """funtask's tracer, or None when no SDK was configured as the server started."""
        return self._tracer

    def job_started(self, job: Job) -> None:
        """Find the job's parent (in the request's task) and start its span."""
        tracer = self._tracer
        headers = job.request_headers
        incoming = None if headers is None else carrier_from_headers(headers)
        if tracer is None:
            job.trace_context = incoming  # forwarded verbatim, no span
            return
        if trace.get_current_span().is_recording():
            parent = otel_context.get_current()  # an instrumentation's request span
        else:
            parent = _W3C.extract(incoming) if incoming else Context()
        span = tracer.start_span(
            JOB_SPAN,
            context=parent,
            attributes={"funtask.task": job.task.name, "funtask.job_id": job.job_id},
        )
        context = trace.set_span_in_context(span, parent)
        job.tracing = _JobTrace(span, context)
        carrier: dict[str, str] = {}
        _W3C.inject(carrier, context=context)
        job.trace_context = carrier or incoming

    def job_steps(self, job: Job) -> Callable[[str], None] | None:
        """Steps become events of a recording job span; otherwise nothing is installed."""
        state: _JobTrace | None = job.tracing
        if state is None or not state.span.is_recording():
            return None
        return state.add_step

    def job_scope(self, job: Job) -> AbstractContextManager[None]:
        """Make the job's span current around the task function."""
        state: _JobTrace | None = job.tracing
        return _NO_SCOPE if state is None else _Current(state.context)

    def job_finished(self, job: Job, record: FinishedJob, duration: float) -> None:
        """Set the outcome on the job's span and end it."""
        state: _JobTrace | None = job.tracing
        if state is None:
            return
        span = state.span
        result = record.result
        if result.success:
            span.set_attribute("funtask.outcome", "success")
        else:
            code = result.error_code
            span.set_attribute("funtask.outcome", "failure")
            span.set_attribute("funtask.error.code", code)
            if code == "panic" and result.cause is not None:
                span.record_exception(result.cause)
            span.set_status(Status(StatusCode.ERROR, code))
        span.end()

    def callback_scope(
        self, record: FinishedJob, url: str, headers: dict[str, str]
    ) -> AbstractContextManager[None]:
        """A CLIENT span around one POST, its context in ``headers`` (no SDK: nothing)."""
        tracer = self._tracer
        if tracer is None:
            return _NO_SCOPE  # the headers already hold the forwarded context
        return _CallbackSpan(self, tracer, record, url, headers)

    def callback_attempted(self, record: FinishedJob, url: str, outcome: AttemptOutcome) -> None:
        """End the attempt's span with its outcome."""
        span = self._attempts.pop(id(record), None)
        if span is None:
            return
        if outcome.status is not None:
            span.set_attribute("http.response.status_code", outcome.status)
        if not outcome.delivered:
            span.set_status(Status(StatusCode.ERROR, outcome.error))
        span.end()
