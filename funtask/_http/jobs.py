"""The job routes: ``POST /run/{task}``, ``POST /stop/{task}`` and ``GET /result/{jobId}``."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

import trio

from .._duration import format_duration, format_duration_seconds
from .._keeper import STORE_UNAVAILABLE
from .._params import Params
from .._request import RequestError, new_job_id, parse_run_body, validate_job_id
from .._stores.base import Claim, StoredJob, StoreUnavailable
from .._tracecontext import carrier_from_headers, stored_carrier
from .._wire import dumps

if TYPE_CHECKING:
    from .._jobs import Job
    from .._runtime import Runtime
    from .exchange import Request

__all__ = ["result", "run", "stop"]

_DRAINING_RUN: Final = b'{"error":"Server is shutting down"}'
_RETRY_AFTER: Final = [(b"retry-after", b"1")]


async def run(request: Request, runtime: Runtime, task: str) -> None:
    """POST /run/{task}: the checks of SPEC 1 in order, then a sync or async run."""
    if runtime.draining:
        await request.respond(503, _DRAINING_RUN, headers=request.unread_headers(None, True))
        return
    slot = runtime.slots.get(task)
    if slot is None:
        await request.error(_task_not_found(task), 404, unread=True)
        return
    raw = await request.read_body(runtime.max_body_size)
    if raw is None:
        await request.error("request body too large", 413, unread=True)
        return
    try:
        body = parse_run_body(raw)
    except RequestError as exc:
        await request.error(str(exc), 400)
        return
    callback_url: str | None = None
    if body.callback_url is not None:
        if not runtime.allowlist:
            await request.error("callback URLs not allowed (no allowlist configured)", 400)
            return
        callback_url = runtime.allowlist.check(body.callback_url)
        if callback_url is None:
            await request.error("callback URL not allowed", 400)
            return
    if body.job_id:
        if not validate_job_id(body.job_id):
            await request.error("invalid jobId", 400)
            return
        job_id = body.job_id
        current = slot.current
        if current is not None:
            if current.job_id == job_id:
                if current.record is not None:
                    await request.respond(200, current.record.body)
                else:
                    await request.json(_running_doc(runtime, current))
                return
            # The slot is busy: a read-only lookup answers rule 6, else 409.
            if await _stored_or_running(request, runtime, task, job_id):
                return
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
        await request.error(
            "Task is busy with a different job",
            409,
            task=task,
            currentJob={"jobId": current.job_id, "running": runtime.running_for(current)},
        )
        return
    keeper = runtime.keeper
    if not keeper.ok:
        await _store_unavailable(request)
        return
    job = runtime.runner.reserve(slot, job_id, Params(body.params), callback_url=callback_url)
    try:
        if keeper.persistent:
            # Shielded (the call is bounded by store_timeout): a caller that goes away
            # mid-claim must not leave the slot reserved or a claim nobody handles.
            # The caller's trace context goes with the record, so a delivery that
            # another process recovers still carries it.
            trace = stored_carrier(carrier_from_headers(request))
            with trio.CancelScope(shield=True):
                claim = await runtime.store.claim(
                    task, job_id, callback_url=callback_url, trace=trace
                )
        else:  # the memory store answers at once, never yields: nothing to shield
            claim = await runtime.store.claim(task, job_id, callback_url=callback_url)
    except StoreUnavailable as exc:
        runtime.runner.unreserve(slot, job)
        keeper.failed("claim", exc)
        runtime.nursery.start_soon(keeper.release_later, task, job_id)
        await _store_unavailable(request)
        return
    if claim.status != "claimed":
        runtime.runner.unreserve(slot, job)
        await _claim_answer(request, claim)
        return
    runtime.runner.launch(slot, job, headers=request)
    if callback_url is not None:
        await request.json({"jobId": job_id}, 202)
        return
    record = await runtime.wait_sync(job, request.until_disconnect)
    if record is None:
        await request.error(
            f"Sync mode timeout exceeded ({format_duration(runtime.sync_timeout)}). "
            "Use callbackUrl for long-running tasks.",
            504,
            jobId=job_id,
        )
        return
    await request.respond(200, record.body)


async def stop(request: Request, runtime: Runtime, task: str) -> None:
    """POST /stop/{task}: cancel the running job, or end its callback retries.

    An optional jobId (``?jobId=``, else a JSON body ``{"jobId": "…"}``)
    names the job to stop; any other body is ignored.
    """
    slot = runtime.slots.get(task)
    if slot is None:
        await request.error(_task_not_found(task), 404, unread=True)
        return
    job_id = request.query("jobId") or None
    pool = runtime.keeper.store.pool
    if job_id is None and (slot.current is not None or pool):
        # The body is read only when it could matter (Go never reads it).
        job_id = _stop_body_job_id(await request.read_body(runtime.max_body_size))
    if job_id is not None and not validate_job_id(job_id):
        await request.error("invalid jobId", 400, unread=True)
        return
    job = slot.current
    if pool:
        await _stop_in_pool(request, runtime, task, job_id, job)
        return
    if job is None:
        no_job = dumps({"task": task, "message": "No running job"})
        await request.respond(200, no_job, headers=request.unread_headers(None, True))
        return
    if job_id is not None and job.job_id != job_id:
        await request.json({"task": task, "message": "No running job"})
        return
    runtime.stop_job(job)
    await request.json({"task": task, "jobId": job.job_id, "message": "Cancellation requested"})


async def result(request: Request, runtime: Runtime, job_id: str) -> None:
    """GET /result/{jobId}: the newest stored result with that jobId."""
    raw_path = request.scope.get("raw_path")
    if raw_path:
        # One segment, percent-decoded: "a%2Fb" is the jobId "a/b"; "a/b" is no route.
        segment = raw_path.split(b"?", 1)[0][len(b"/result/") :]
        if b"/" in segment:
            await request.error("not found", 404)
            return
        job_id = unquote(segment.decode("latin-1"), encoding="utf-8", errors="replace")
    if not runtime.keeper.ok:
        await _store_unavailable(request)
        return
    try:
        found = await runtime.store.lookup(job_id)
    except StoreUnavailable as exc:
        runtime.keeper.failed("lookup", exc)
        await _store_unavailable(request)
        return
    if found is None or found.result is None:
        await request.error("result not found", 404)
        return
    await request.respond(200, found.result.body)


def _task_not_found(task: str) -> str:
    return f"task {json.dumps(task, ensure_ascii=False)} not found"


async def _store_unavailable(request: Request) -> None:
    await request.error(STORE_UNAVAILABLE, 503, headers=_RETRY_AFTER)


def _running_doc(runtime: Runtime, job: Job) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "jobId": job.job_id,
        "status": "running",
        "running": runtime.running_for(job),
    }
    if job.run.state.step:
        doc["currentStep"] = job.run.state.step
    return doc


async def _claim_answer(request: Request, claim: Claim) -> None:
    """Rule 6's answer for a job the store already holds: its result, or ``running``."""
    job = claim.job
    if job.result is not None:
        await request.respond(200, job.result.body)
        return
    doc: dict[str, Any] = {
        "jobId": job.job_id,
        "status": "running",
        "running": format_duration_seconds(max(0.0, time.time() - job.started)),
        "instance": job.instance,
    }
    if job.last_step:
        doc["currentStep"] = job.last_step
    await request.json(doc)


async def _stored_or_running(request: Request, runtime: Runtime, task: str, job_id: str) -> bool:
    """Answer a busy slot's request from a read-only store lookup; False when it finds nothing."""
    if not runtime.keeper.ok:
        await _store_unavailable(request)
        return True
    try:
        found = await runtime.store.find(task, job_id)
    except StoreUnavailable as exc:
        runtime.keeper.failed("lookup", exc)
        await _store_unavailable(request)
        return True
    if found is None:
        return False
    await _claim_answer(request, Claim("stored" if found.finished else "running", found))
    return True


async def _stop_in_pool(
    request: Request, runtime: Runtime, task: str, job_id: str | None, local: Job | None
) -> None:
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
            await _store_unavailable(request)
            return
    except StoreUnavailable as exc:
        runtime.keeper.failed("stop", exc)
        if local is None:
            await _store_unavailable(request)
            return
    if len(found) > 1:
        names = [job.job_id for job in found]
        message = (
            f"several jobs of task {json.dumps(task, ensure_ascii=False)} are running; "
            "name one with jobId"
        )
        await request.json({"error": message, "task": task, "jobIds": names}, 409)
        return
    if found and local is not None and found[0].job_id != local.job_id:
        local = None
    if local is not None:
        runtime.stop_job(local)
    if not found and local is None:
        await request.json({"task": task, "message": "No running job"})
        return
    stopped = found[0].job_id if found else job_id or (local.job_id if local else "")
    await request.json({"task": task, "jobId": stopped, "message": "Cancellation requested"})


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
