"""The HTTP routes on quart-trio: auth, /run, /stop, /result, /health and the probes."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, RequestTimeout
from werkzeug.routing import PathConverter

from ._config import RESERVED_PATHS
from ._dashboard import dashboard_page
from ._duration import format_duration, format_duration_seconds
from ._keeper import STORE_UNAVAILABLE
from ._openapi import openapi_body
from ._params import Params
from ._request import RequestError, new_job_id, parse_run_body, validate_job_id
from ._stores.base import Claim, StoredJob, StoreUnavailable
from ._wire import dumps

if TYPE_CHECKING:
    from ._jobs import Job
    from ._runtime import Runtime
    from ._server import Server

__all__ = ["create_app", "json_response", "open_quart"]

logger: Final = logging.getLogger("funtask.http")

_JSON: Final = "application/json"
_ALL_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_BEARER: Final = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +(.*)")
BODY_TIMEOUT: Final = 60.0  # seconds to receive a whole request body


def json_response(obj: Any, status: int = 200) -> Response:
    """A JSON response with the given status."""
    return Response(dumps(obj), status=status, content_type=_JSON)


def raw_json_response(body: bytes, status: int = 200) -> Response:
    """A response from already serialised JSON."""
    return Response(body, status=status, content_type=_JSON)


def error_response(message: str, status: int, **extra: Any) -> Response:
    """The ``{"error": message}`` envelope, with optional extra members."""
    return json_response({"error": message, **extra}, status)


def unread_body_response(response: Response) -> Response:
    """Close the connection after an answer given before the request body was read.

    The unread body would otherwise be taken for the next request on a
    keep-alive connection; reading it instead would let anyone make the
    server read large bodies without a token.
    """
    if request.method in ("POST", "PUT", "PATCH"):
        response.headers["Connection"] = "close"
    return response


_UNAUTHORIZED: Final = b'{"error":"unauthorized"}'
_NOT_RUNNING: Final = b'{"error":"server is not running (ASGI lifespan not started)"}'
_DRAINING_RUN: Final = b'{"error":"Server is shutting down"}'


def bearer_token(header: str | None) -> bytes | None:
    """The token of an ``Authorization: Bearer ...`` header value, as bytes."""
    if not header:
        return None
    match = _BEARER.fullmatch(header.encode("latin-1", "replace"))
    return match.group(1).strip() if match else None


async def read_body_limited(limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` bytes.

    Reads chunk by chunk and stops at the limit, whatever the Quart version
    does with ``MAX_CONTENT_LENGTH`` (some buffer the whole body first).
    A body still incomplete after :data:`BODY_TIMEOUT` seconds raises
    :class:`~werkzeug.exceptions.RequestTimeout` (a 408).
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        return None
    body = request.body
    complete = getattr(body, "_complete", None)
    if complete is not None and complete.is_set():
        return await _collect(body, limit)  # it came with the request: nothing to wait for
    with trio.move_on_after(BODY_TIMEOUT) as scope:
        data = await _collect(body, limit)
    if scope.cancelled_caught:
        raise RequestTimeout()
    return data


async def _collect(body: AsyncIterable[bytes], limit: int) -> bytes | None:
    data = bytearray()
    try:
        async for chunk in body:
            data += chunk
            if len(data) > limit:
                return None
    except RequestEntityTooLarge:
        return None
    return bytes(data)


def _etags(header: str) -> set[str]:
    """The entity tags listed in an ``If-None-Match`` header (weak ones compare equal)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def _go_path(path: str) -> str:
    """Turn Go ``ServeMux`` wildcards (``{id}``, ``{rest...}``) into Quart rules."""
    path = re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)\.\.\.\}", r"<path:\1>", path)
    path = re.sub(r"\{\$\}", "", path)
    return re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", r"<\1>", path)


class HttpApi:
    """The built-in routes, bound to the server whose runtime they serve."""

    def __init__(self, server: Server) -> None:
        self.server = server

    @property
    def runtime(self) -> Runtime | None:
        """The running server state, or None outside the lifespan."""
        return self.server._runtime

    def guarded(
        self, view: Callable[..., Awaitable[Response]]
    ) -> Callable[..., Awaitable[Response]]:
        """Wrap ``view`` with the bearer-token check; it gets the runtime as first argument."""

        async def wrapper(**kwargs: Any) -> Response:
            runtime = self.server._runtime
            if runtime is None:
                return raw_json_response(_NOT_RUNNING, 503)
            if not runtime.authorized(bearer_token(request.headers.get("Authorization"))):
                return unread_body_response(raw_json_response(_UNAUTHORIZED, 401))
            return await view(runtime, **kwargs)

        wrapper.__name__ = view.__name__
        return wrapper

    def observed_run(
        self, view: Callable[..., Awaitable[Response]]
    ) -> Callable[..., Awaitable[Response]]:
        """Wrap the ``/run`` view: tell the server's observer how each request was answered."""

        async def wrapper(task: str) -> Response:
            try:
                response = await view(task=task)
            except HTTPException as exc:  # answered by the error handler (408, 413)
                self._run_answered(task, exc.code or 500)
                raise
            except Exception:
                self._run_answered(task, 500)
                raise
            self._run_answered(task, response.status_code)
            return response

        wrapper.__name__ = view.__name__
        return wrapper

    def _run_answered(self, task: str, status: int) -> None:
        runtime = self.server._runtime
        if runtime is not None:  # no lifespan: nothing observes
            known = status != 401 and task in runtime.slots  # paths never become labels
            runtime.observer.run_answered(task if known else None, status)

    # -- /run ---------------------------------------------------------------

    async def run_task(self, runtime: Runtime, task: str) -> Response:
        """POST /run/{task}: the checks of SPEC 1 in order, then a sync or async run."""
        if runtime.draining:
            return unread_body_response(raw_json_response(_DRAINING_RUN, 503))
        slot = runtime.slots.get(task)
        if slot is None:
            message = f"task {json.dumps(task, ensure_ascii=False)} not found"
            return unread_body_response(error_response(message, 404))
        raw = await read_body_limited(runtime.max_body_size)
        if raw is None:
            return unread_body_response(error_response("request body too large", 413))
        try:
            body = parse_run_body(raw)
        except RequestError as exc:
            return error_response(str(exc), 400)
        callback_url: str | None = None
        if body.callback_url is not None:
            if not runtime.allowlist:
                return error_response("callback URLs not allowed (no allowlist configured)", 400)
            callback_url = runtime.allowlist.check(body.callback_url)
            if callback_url is None:
                return error_response("callback URL not allowed", 400)
        if body.job_id:
            if not validate_job_id(body.job_id):
                return error_response("invalid jobId", 400)
            job_id = body.job_id
            current = slot.current
            if current is not None:
                if current.job_id == job_id:
                    if current.record is not None:
                        return raw_json_response(current.record.body)
                    return json_response(_running_doc(runtime, current))
                # The slot is busy: a read-only lookup answers rule 6, else 409.
                answer = await _stored_or_running(runtime, task, job_id)
                if answer is not None:
                    return answer
        else:
            job_id = new_job_id()
        current = slot.current
        if (
            current is not None
            and current.record is not None
            and current.callback_url is None
            and runtime.keeper.persistent
        ):
            # A sync job whose caller was answered is still storing its result (one
            # store round trip): the same caller's next request waits for the slot.
            with trio.move_on_after(runtime.keeper.store.store_timeout):
                await current.released.wait()
            current = slot.current
        if current is not None:
            return _busy(runtime, task, current)
        keeper = runtime.keeper
        if not keeper.ok:
            return _store_unavailable()
        job = runtime.runner.reserve(slot, job_id, Params(body.params), callback_url=callback_url)
        try:
            # Shielded (the call is bounded by store_timeout): a caller that goes away
            # mid-claim must not leave the slot reserved or a claim nobody handles.
            with trio.CancelScope(shield=True):
                claim = await runtime.store.claim(task, job_id, callback_url=callback_url)
        except StoreUnavailable as exc:
            runtime.runner.unreserve(slot, job)
            keeper.failed("claim", exc)
            runtime.nursery.start_soon(keeper.release_later, task, job_id)
            return _store_unavailable()
        if claim.status != "claimed":
            runtime.runner.unreserve(slot, job)
            return _claim_answer(claim)
        runtime.runner.launch(slot, job, headers=request.headers)
        if callback_url is not None:
            return json_response({"jobId": job_id}, 202)
        record = await runtime.wait_sync(job)
        if record is None:
            return error_response(
                f"Sync mode timeout exceeded ({format_duration(runtime.sync_timeout)}). "
                "Use callbackUrl for long-running tasks.",
                504,
                jobId=job_id,
            )
        return raw_json_response(record.body)

    # -- /stop, /result, /health ----------------------------------------------

    async def stop_task(self, runtime: Runtime, task: str) -> Response:
        """POST /stop/{task}: cancel the running job, or end its callback retries.

        An optional jobId (``?jobId=``, else a JSON body ``{"jobId": "…"}``)
        names the job to stop; any other body is ignored.
        """
        slot = runtime.slots.get(task)
        if slot is None:
            message = f"task {json.dumps(task, ensure_ascii=False)} not found"
            return unread_body_response(error_response(message, 404))
        job_id = request.args.get("jobId") or None
        pool = runtime.keeper.store.pool
        if job_id is None and (slot.current is not None or pool):
            # The body is read only when it could matter (Go never reads it).
            job_id = _stop_body_job_id(await read_body_limited(runtime.max_body_size))
        if job_id is not None and not validate_job_id(job_id):
            return unread_body_response(error_response("invalid jobId", 400))
        job = slot.current
        if pool:
            return await _stop_in_pool(runtime, task, job_id, job)
        if job is None:
            no_job = json_response({"task": task, "message": "No running job"})
            return unread_body_response(no_job)
        if job_id is not None and job.job_id != job_id:
            return json_response({"task": task, "message": "No running job"})
        runtime.stop_job(job)
        return json_response(
            {"task": task, "jobId": job.job_id, "message": "Cancellation requested"}
        )

    async def get_result(self, runtime: Runtime, job_id: str) -> Response:
        """GET /result/{jobId}: the newest stored result with that jobId."""
        raw_path = request.scope.get("raw_path")
        if raw_path:
            # One segment, percent-decoded: "a%2Fb" is the jobId "a/b"; "a/b" is no route.
            from urllib.parse import unquote

            segment = raw_path.split(b"?", 1)[0][len(b"/result/") :]
            if b"/" in segment:
                return error_response("not found", 404)
            job_id = unquote(segment.decode("latin-1"), encoding="utf-8", errors="replace")
        if not runtime.keeper.ok:
            return _store_unavailable()
        try:
            found = await runtime.store.lookup(job_id)
        except StoreUnavailable as exc:
            runtime.keeper.failed("lookup", exc)
            return _store_unavailable()
        if found is None or found.result is None:
            return error_response("result not found", 404)
        return raw_json_response(found.result.body)

    async def health(self, runtime: Runtime) -> Response:
        """GET /health: server status, per-task progress and result history."""
        return raw_json_response(runtime.health_body())

    async def metrics(self, runtime: Runtime) -> Response:
        """GET /metrics: the Prometheus text format, or OpenMetrics when ``Accept`` asks."""
        assert runtime.metrics is not None  # the route exists only with metrics on
        body, content_type = await runtime.metrics.render(request.headers.get("Accept"))
        return Response(body, content_type=content_type)

    async def metrics_without_auth(self) -> Response:
        """GET /metrics with ``metrics_auth=False``."""
        runtime = self.runtime
        if runtime is None:
            return raw_json_response(_NOT_RUNNING, 503)
        return await self.metrics(runtime)

    async def events(self) -> Response:
        """GET /events: Server-Sent Events, a health snapshot per change."""
        runtime = self.runtime
        if runtime is None:
            return raw_json_response(_NOT_RUNNING, 503)
        presented = bearer_token(request.headers.get("Authorization"))
        if presented is None and "token" in request.args:
            presented = request.args["token"].encode("utf-8", "surrogateescape")
        if not runtime.authorized(presented):
            return raw_json_response(_UNAUTHORIZED, 401)
        if runtime.draining or runtime.events.closed:
            return error_response("server is shutting down", 503)
        if runtime.events.full():
            return error_response("too many event streams", 503)
        response = Response(
            runtime.events.open_stream(),
            content_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        response.timeout = None  # streams outlive any response timeout
        return response

    async def dashboard(self) -> Response:
        """GET /dashboard: the built-in page (no auth: it asks for the token itself)."""
        runtime = self.runtime
        page = dashboard_page("" if runtime is None else runtime.instance)
        headers = {
            "ETag": page.etag,
            "Cache-Control": "no-cache",
            "Content-Security-Policy": page.content_security_policy,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        tags = _etags(request.headers.get("If-None-Match", ""))
        if page.etag in tags or "*" in tags:
            return Response(b"", status=304, headers=headers)
        return Response(page.body, content_type="text/html; charset=utf-8", headers=headers)

    async def openapi(self) -> Response:
        """GET /openapi.json: the OpenAPI 3.1 description of this API (no auth, no secrets)."""
        body = openapi_body(self.server.name, tuple(self.server.tasks))
        return raw_json_response(body)

    async def livez(self) -> Response:
        """GET /livez: always ok."""
        return json_response({"status": "ok"})

    async def readyz(self) -> Response:
        """GET /readyz: 503 while draining or when the readiness check fails."""
        runtime = self.runtime
        if runtime is None:
            return raw_json_response(_NOT_RUNNING, 503)
        if runtime.draining:
            return error_response("server is shutting down", 503)
        if not runtime.keeper.ok:
            return error_response(STORE_UNAVAILABLE, 503)
        problem = await runtime.readiness_error()
        if problem is not None:
            return error_response(problem, 503)
        return json_response({"status": "ok"})


async def _stop_in_pool(
    runtime: Runtime, task: str, job_id: str | None, local: Job | None
) -> Response:
    """``/stop`` with a Redis store: the named job wherever it runs in the pool (rule 8).

    The stop flag is set in the store; the owner acts on it at its next heartbeat
    (a job of this process is also stopped at once). Without a jobId the task's
    one job in the pool is stopped; several answer 409 naming them.
    """
    if local is not None and job_id is not None and local.job_id != job_id:
        local = None
    found: list[StoredJob] = []
    try:
        if runtime.keeper.ok:
            found = await runtime.store.request_stop(task, job_id)
        elif local is None:
            return _store_unavailable()
    except StoreUnavailable as exc:
        runtime.keeper.failed("stop", exc)
        if local is None:
            return _store_unavailable()
    if len(found) > 1:
        names = [job.job_id for job in found]
        message = (
            f"several jobs of task {json.dumps(task, ensure_ascii=False)} are running; "
            "name one with jobId"
        )
        return json_response({"error": message, "task": task, "jobIds": names}, 409)
    if found and local is not None and found[0].job_id != local.job_id:
        local = None
    if local is not None:
        runtime.stop_job(local)
    if not found and local is None:
        return json_response({"task": task, "message": "No running job"})
    stopped = found[0].job_id if found else job_id or (local.job_id if local else "")
    return json_response({"task": task, "jobId": stopped, "message": "Cancellation requested"})


def _store_unavailable() -> Response:
    response = error_response(STORE_UNAVAILABLE, 503)
    response.headers["Retry-After"] = "1"
    return response


def _running_doc(runtime: Runtime, job: Job) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "jobId": job.job_id,
        "status": "running",
        "running": runtime.running_for(job),
    }
    if job.run.state.step:
        doc["currentStep"] = job.run.state.step
    return doc


def _busy(runtime: Runtime, task: str, current: Job) -> Response:
    return error_response(
        "Task is busy with a different job",
        409,
        task=task,
        currentJob={"jobId": current.job_id, "running": runtime.running_for(current)},
    )


def _claim_answer(claim: Claim) -> Response:
    """Rule 6's answer for a job the store already holds: its result, or ``running``."""
    job = claim.job
    if job.result is not None:
        return raw_json_response(job.result.body)
    doc: dict[str, Any] = {
        "jobId": job.job_id,
        "status": "running",
        "running": format_duration_seconds(max(0.0, time.time() - job.started)),
        "instance": job.instance,
    }
    if job.last_step:
        doc["currentStep"] = job.last_step
    return json_response(doc)


async def _stored_or_running(runtime: Runtime, task: str, job_id: str) -> Response | None:
    """A read-only store lookup for a busy slot: the stored result, running elsewhere, or None."""
    if not runtime.keeper.ok:
        return _store_unavailable()
    try:
        found = await runtime.store.find(task, job_id)
    except StoreUnavailable as exc:
        runtime.keeper.failed("lookup", exc)
        return _store_unavailable()
    if found is None:
        return None
    return _claim_answer(Claim("stored" if found.finished else "running", found))


def _stop_body_job_id(raw: bytes | None) -> str | None:
    """The jobId of a ``/stop`` body ``{"jobId": "…"}``; None for any other body (ignored)."""
    if not raw or not raw.strip():
        return None
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    value = document.get("jobId")
    if value is None:
        for key, item in document.items():
            if isinstance(key, str) and key.lower() == "jobid":
                value = item
                break
    return value if isinstance(value, str) and value else None


class _AnyPath(PathConverter):
    """Werkzeug's ``path`` converter, but also matching a leading or doubled slash.

    ``get_result`` reads the jobId from the raw path; the rule only has to match.
    """

    regex = ".+"
    part_isolating = False  # werkzeug would otherwise match one part between slashes


def create_app(server: Server) -> QuartTrio:
    """Build the quart-trio app serving ``server``'s routes."""
    app = QuartTrio(f"funtask.{server.name}")
    app.config["MAX_CONTENT_LENGTH"] = server.settings.max_body_size
    app.config["RESPONSE_TIMEOUT"] = None  # sync runs and /events outlive any fixed timeout
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.url_map.strict_slashes = False
    api = HttpApi(server)
    app.add_url_rule(
        "/run/<task>", "run", api.observed_run(api.guarded(api.run_task)), methods=["POST"]
    )
    app.add_url_rule("/stop/<task>", "stop", api.guarded(api.stop_task), methods=["POST"])
    # Never merge slashes here: "/result/%2Fabs" is the jobId "/abs", not a redirect.
    app.url_map.converters["segment_path"] = _AnyPath
    app.add_url_rule(
        "/result/<segment_path:job_id>",
        "result",
        api.guarded(api.get_result),
        methods=["GET"],
        merge_slashes=False,
    )
    app.add_url_rule("/health", "health", api.guarded(api.health), methods=["GET"])
    app.add_url_rule("/events", "events", api.events, methods=["GET"])
    if server.settings.dashboard:
        app.add_url_rule("/dashboard", "dashboard", api.dashboard, methods=["GET"])
    if server.settings.metrics:
        metrics: Callable[..., Awaitable[Response]] = api.metrics_without_auth
        if server.settings.metrics_auth:
            metrics = api.guarded(api.metrics)
        app.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])
    app.add_url_rule("/openapi.json", "openapi", api.openapi, methods=["GET"])
    app.add_url_rule("/livez", "livez", api.livez, methods=["GET"])
    app.add_url_rule("/readyz", "readyz", api.readyz, methods=["GET"])
    for index, handler in enumerate(server._handlers):
        methods = [handler.method] if handler.method else list(_ALL_METHODS)
        rule = _go_path(handler.path)
        assert handler.view is not None and rule not in RESERVED_PATHS
        app.add_url_rule(rule, f"handler_{index}", handler.view, methods=methods)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        messages = {
            404: "not found",
            405: "method not allowed",
            413: "request body too large",
            408: "request timeout",
        }
        response = error_response(messages.get(status, exc.name.lower()), status)
        if status in (405, 408, 413):
            unread_body_response(response)
        allowed = getattr(exc, "valid_methods", None)
        if status == 405 and allowed:
            response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    async def unexpected_error(exc: Exception) -> Response:
        logger.error("unhandled error serving %s %s", request.method, request.path, exc_info=exc)
        return error_response("internal server error", 500)

    return app


@asynccontextmanager
async def open_quart(app: QuartTrio) -> AsyncIterator[QuartTrio]:
    """Run Quart's own startup and shutdown around the block, with its own nursery.

    quart-trio keeps background tasks in ``app.nursery`` and cancels it on
    shutdown, so it gets a nursery of its own, never the server's.
    """
    async with trio.open_nursery() as nursery:
        app.nursery = nursery
        await app.startup()
        try:
            yield app
        finally:
            with trio.CancelScope(shield=True):
                await app.shutdown()
