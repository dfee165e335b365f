"""The running server: its nursery, task slots, draining state and shutdown sequence."""

from __future__ import annotations

import hmac
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import httpx
import trio

from ._allowlist import Allowlist
from ._callbacks import CallbackSender, Delivery, DeliveryReport
from ._changes import ChangeNotifier
from ._config import to_seconds
from ._deadletters import remove_dead_letter, update_dead_letter
from ._duration import format_duration, format_duration_seconds
from ._events import EventHub
from ._http11 import LeanHTTP, proxy_configured
from ._jobs import (
    REASON_DISCONNECT,
    REASON_SHUTDOWN,
    REASON_STOP,
    REASON_SYNC_TIMEOUT,
    Job,
    JobRunner,
    TaskSlot,
)
from ._keeper import STORE_UNAVAILABLE, StoreKeeper
from ._logfilter import redacting_httpx_logs
from ._observe import Observer, combine_observers
from ._result import fail
from ._signing import signing_key
from ._stores.base import DeliveryOutcome, new_webhook_id
from ._wire import FinishedJob, dumps, rfc3339

if TYPE_CHECKING:
    from ._metrics import Metrics
    from ._server import Server

__all__ = ["Runtime", "open_runtime"]

logger: Final = logging.getLogger("funtask.server")

QUICK_JOB_TURNS: Final = 2  # scheduler turns a sync caller waits before watching the client


class Runtime:
    """Everything that exists only while a server is serving."""

    def __init__(
        self,
        server: Server,
        nursery: trio.Nursery,
        callback_client: httpx.AsyncClient,
        lean_http: LeanHTTP | None = None,
    ) -> None:
        settings = server.settings
        self.server = server
        self.name = server.name
        self.nursery = nursery
        self.tokens = tuple(t.encode("utf-8") for t in settings.resolved_tokens())
        self.dead_letter_dir = settings.resolved_dead_letter_dir()
        self.allowlist = Allowlist(settings.callback_allowlist)
        self.sync_timeout = _seconds(settings.sync_timeout)
        self.shutdown_timeout = _seconds(settings.shutdown_timeout)
        self.callback_timeout = _seconds(settings.callback_timeout)
        self.max_duration = (
            None if settings.max_duration is None else _seconds(settings.max_duration)
        )
        self.max_body_size = settings.max_body_size
        self.notifier = ChangeNotifier()
        self.slots = {
            task.name: TaskSlot(task, task.keep_results or settings.result_history)
            for task in server.tasks.values()
        }
        self.instance = settings.resolved_instance_id()
        self.metrics: Metrics | None = None
        self.observer = combine_observers(self._make_observers())
        self.runner = JobRunner(
            self.slots,
            max_duration=self.max_duration,
            on_change=self.notifier.bump_milestone,
            on_progress=self.notifier.bump,
            on_finished=self._after_job,
            observer=self.observer,
            instance=self.instance,
        )
        self.drain_started = trio.Event()
        self.drained = trio.Event()  # every job result settled, streams closed
        self.drain_began_at: float | None = None
        secret = settings.callback_signing_secret
        self.delivery = Delivery(
            CallbackSender(
                callback_client,
                timeout=self.callback_timeout,
                signing_key=None if secret is None else signing_key(secret),
                lean=lean_http,
            ),
            dead_letter_dir=self.dead_letter_dir or "",
            retries=settings.callback_retries,
            drain_started=self.drain_started,
            observer=self.observer,
            instance=self.instance,
        )
        self.keeper = StoreKeeper(self)
        self.store = self.keeper.store
        self.events = EventHub(self, max_clients=settings.max_event_clients)
        self.notifier.on_milestone = self.events.ring_all
        self.started_at = trio.current_time()
        self.draining = False
        self._health_cache: tuple[tuple[Any, ...], bytes] | None = None

    def _make_observers(self) -> list[Observer]:
        """The observers of this server's change points (SPEC section 6)."""
        observers: list[Observer] = []
        if self.server.settings.metrics:
            from . import __version__
            from ._metrics import Metrics

            self.metrics = Metrics(
                tasks=self.slots,
                name=self.name,
                instance=self.instance,
                version=__version__,
                dead_letter_dir=self.dead_letter_dir,
                store=self.server.settings.resolved_store().persistent,
            )
            observers.append(self.metrics)
        tracing = _tracing_observer()
        if tracing is not None:
            observers.append(tracing)
        return observers

    # -- auth -------------------------------------------------------------

    def authorized(self, presented: bytes | None) -> bool:
        """Whether ``presented`` equals one of the tokens (constant time, every token compared)."""
        if presented is None:
            return False
        matched = False
        for token in self.tokens:
            matched |= hmac.compare_digest(presented, token)
        return matched

    # -- jobs -------------------------------------------------------------

    async def _after_job(self, job: Job, record: FinishedJob) -> None:
        """Hand a finished job's result on: store it, then deliver it or keep it unsent."""
        await self._hand_over(job, record, single_attempt=False)

    async def _hand_over(self, job: Job, record: FinishedJob, *, single_attempt: bool) -> None:
        """Store ``record`` (compare-and-set), then deliver it (SPEC 5, rules 6 and 7).

        The ``webhook-id`` is drawn here, once. A result the store cannot take
        waits as an ``unstored`` dead letter and is posted only once stored; a
        result another process settled first is dead-lettered as superseded
        and never posted.
        """
        if job.settled:
            return
        job.settled = True
        webhook_id = job.webhook_id = new_webhook_id()
        keeper = self.keeper
        outcome = await keeper.settle(job, record, webhook_id)
        letter: trio.Path | None = None
        if outcome == "unstored":
            job.run.log.warning("result not stored (%s); dead letter kept", STORE_UNAVAILABLE)
            with trio.CancelScope(shield=True):
                letter = await keeper.write_letter(job, record, webhook_id, unstored=True)
            with trio.CancelScope() as job.delivery_scope:
                outcome = await keeper.wait_stored(job, record, webhook_id)
            if outcome == "unstored":  # given up (shutdown): the letter waits for the next start
                return
            if letter is not None:
                with trio.CancelScope(shield=True):
                    await _mark_letter(letter, unstored=False, superseded=outcome != "ok")
        if outcome == "superseded":
            job.run.log.warning("result superseded: the job was settled elsewhere; not posted")
            self.observer.result_superseded(record)
            if letter is None:
                with trio.CancelScope(shield=True):
                    await keeper.write_letter(job, record, webhook_id, superseded=True)
            return
        if job.callback_url is not None:
            report = DeliveryReport()
            delivered = False
            with trio.CancelScope() as job.delivery_scope:
                if not job.delivery_stopped:
                    delivered = await self.delivery.deliver(
                        record,
                        job.callback_url,
                        single_attempt=single_attempt or self.draining,
                        webhook_id=webhook_id,
                        letter=letter,
                        report=report,
                        trace=job.trace_context,
                    )
            ended: DeliveryOutcome = "delivered" if delivered else "dead_lettered"
            if job.delivery_stopped and not delivered:
                ended = "stopped"
            await keeper.delivered(job.task.name, job.job_id, ended, report.attempts)
        elif job.unsent is not None:
            if letter is None:
                await self.delivery.keep_unsent(
                    record, job.unsent, webhook_id=webhook_id, trace=job.trace_context
                )
        elif letter is not None:  # answered, and now stored: the safety copy can go
            with trio.CancelScope(shield=True):
                await remove_dead_letter(letter)

    async def wait_sync(
        self, job: Job, disconnected: Callable[[], Awaitable[None]]
    ) -> FinishedJob | None:
        """Wait for a job's result for a sync caller; None on the sync timeout.

        ``disconnected`` raises when the caller goes away (being cancelled
        counts as that too); the job is then cancelled and the exception
        propagates. A result the caller will not receive (sync timeout, the
        caller went away) is kept as a dead letter.
        """
        # The job runs in a task of its own, not the caller's: at the sync
        # timeout the answer goes out at once, even while a job that ignores
        # the cancellation goes on.
        try:
            if self.sync_timeout > 0:
                for _ in range(QUICK_JOB_TURNS):
                    if job.record is not None:
                        break
                    # A quick job is done once this task has yielded a turn or two
                    # (Trio may run a batch in either order): then nothing needs to
                    # watch the client, time out or be woken.
                    await trio.lowlevel.checkpoint()
            if job.record is None:
                # One scope for both: the job's end cancels it, and so does the timeout.
                deadline = trio.current_time() + self.sync_timeout
                with trio.CancelScope(deadline=deadline) as job.waiter:
                    await disconnected()
        except BaseException:
            job.cancel(REASON_DISCONNECT)
            self.result_unsent(job, "client disconnected")
            raise
        if job.record is None:
            job.cancel(REASON_SYNC_TIMEOUT)
            self.result_unsent(job, "sync timeout")
        return job.record

    def result_unsent(self, job: Job, reason: str) -> None:
        """Note that a sync caller will not receive ``job``'s result (504 or disconnect)."""
        if job.unsent is not None:
            return
        job.unsent = reason
        if job.settled and job.record is not None:
            self.nursery.start_soon(
                partial(
                    self.delivery.keep_unsent,
                    job.record,
                    reason,
                    webhook_id=job.webhook_id,
                    trace=job.trace_context,
                )
            )

    def stop_job(self, job: Job) -> None:
        """``/stop`` for one job: cancel it, or end its callback retries if it is delivering."""
        if job.record is None:
            job.cancel(REASON_STOP)
        else:
            self.stop_delivery(job)

    def stop_delivery(self, job: Job) -> None:
        """End the callback retry schedule of a finished job (``/stop`` during delivery)."""
        job.delivery_stopped = True
        if job.delivery_scope is not None:
            job.delivery_scope.cancel()

    def running_for(self, job: Job) -> str:
        """How long ``job`` has been running, as a Go duration rounded to the second."""
        return format_duration_seconds(trio.current_time() - job.started_at)

    # -- health -----------------------------------------------------------

    def health(self, now: float | None = None) -> dict[str, Any]:
        """The ``/health`` document (as of ``now``, default the current Trio time)."""
        if now is None:
            now = trio.current_time()
        tasks: dict[str, Any] = {}
        for name, slot in self.slots.items():
            task = slot.task
            doc: dict[str, Any] = {"status": "running" if slot.current else "idle"}
            if task.description:
                doc["description"] = task.description
            if task.example:
                doc["example"] = task.example
            job = slot.current
            if job is not None:
                state = job.run.state
                current: dict[str, Any] = {
                    "jobId": job.job_id,
                    "running": format_duration_seconds(now - job.started_at),
                }
                if state.step:
                    current["currentStep"] = state.step
                if state.progress is not None and state.progress.total > 0:
                    current["progress"] = state.progress._asdict()
                if state.last_step_at is not None:
                    current["lastStepAt"] = rfc3339(state.last_step_at)
                if job.record is not None:
                    current["delivering"] = True
                doc["currentJob"] = current
            if slot.history:
                last = slot.history[0]
                last_job = {
                    "jobId": last.job_id,
                    "success": last.success,
                    "finished": last.entry["finished"],
                    "duration": last.duration,
                }
                if not last.success:
                    last_job["error"] = last.response["error"]
                doc["lastJob"] = last_job
                doc["results"] = [record.entry for record in slot.history]
            tasks[name] = doc
        document = {
            "name": self.name,
            "status": "draining" if self.draining else "ok",
            "uptime": format_duration_seconds(now - self.started_at),
            "tasks": tasks,
        }
        if self.keeper.persistent:
            document["instance"] = self.instance
            document["store"] = "ok" if self.keeper.ok else "unavailable"
        if self.keeper.store.pool:
            document["pool"] = self._pool_document()
        return document

    def _pool_document(self) -> dict[str, Any]:
        """``/health``'s ``pool``: instances and running jobs as of the last heartbeat."""
        view = self.keeper.pool_view
        if view is None:
            return {"instances": [], "running": []}
        wall = time.time()
        running = []
        for job in view.running:
            entry: dict[str, Any] = {
                "task": job.task,
                "jobId": job.job_id,
                "instance": job.instance,
                "started": rfc3339(job.started),
                "running": format_duration_seconds(max(0.0, wall - job.started)),
            }
            if job.last_step:
                entry["currentStep"] = job.last_step
            if job.state == "delivering":
                entry["delivering"] = True
            running.append(entry)
        instances = [
            {"instance": info.instance, "lastSeen": rfc3339(info.last_seen)}
            for info in view.instances
        ]
        return {"instances": instances, "running": running}

    def health_body(self) -> bytes:
        """The ``/health`` document serialised, cached per change and per displayed second.

        The key holds everything time-dependent in the document: the change
        counter, the uptime and each running job's ``running``, as displayed.
        """
        now = trio.current_time()
        key = (
            self.notifier.version,
            format_duration_seconds(now - self.started_at),
            *(format_duration_seconds(now - job.started_at) for job in self.runner.jobs()),
        )
        cache = self._health_cache
        if cache is not None and cache[0] == key:
            return cache[1]
        body = dumps(self.health(now))
        self._health_cache = (key, body)
        return body

    # -- readiness --------------------------------------------------------

    async def readiness_error(self) -> str | None:
        """The readiness check's failure message, or None when ready."""
        check = self.server.settings.readiness
        if check is None:
            return None
        try:
            outcome = check()
            if inspect.isawaitable(outcome):
                outcome = await outcome
        except trio.Cancelled:
            raise
        except Exception as exc:
            return str(exc) or type(exc).__name__
        if isinstance(outcome, BaseException):
            return str(outcome) or type(outcome).__name__
        return None

    # -- shutdown ---------------------------------------------------------

    def begin_draining(self) -> None:
        """Refuse new work from now on and cancel every running job."""
        if self.draining:
            return
        self.draining = True
        logger.info(
            "server %r draining (shutdown timeout %s)",
            self.name,
            format_duration(self.shutdown_timeout),
        )
        for job in self.runner.jobs():
            if job.record is None:
                job.cancel(REASON_SHUTDOWN)
        self.notifier.bump()

    async def drain(self) -> None:
        """Run the shutdown sequence; returns once every job's result is settled.

        Settled means stored, and delivered once or dead-lettered. A job whose
        task ignores cancellation may still be running afterwards (see
        :meth:`stuck_jobs`). Calling it again waits for the first call to end.
        """
        with trio.CancelScope(shield=True):
            if self.drain_started.is_set():
                await self.drained.wait()
                return
            self.drain_began_at = trio.current_time()
            self.begin_draining()
            self.drain_started.set()
            with trio.move_on_after(self.shutdown_timeout):
                seen = self.notifier.version
                while self.runner.jobs():
                    seen = await self.notifier.wait_for_change(seen)
            stuck = self.runner.jobs()
            async with trio.open_nursery() as nursery:
                for job in stuck:
                    if job.delivery_scope is not None:
                        job.delivery_scope.cancel()
                    if job.record is None:
                        nursery.start_soon(self._shut_down_job, job)
            for job in stuck:
                if job.thread_scope is not None:
                    job.thread_scope.cancel()  # abandon a thread that ignores cancellation
                job.scope.cancel()
            self.events.close()
            self.drained.set()

    def stuck_jobs(self) -> list[Job]:
        """The jobs whose task has not returned although the drain is over.

        Their results are settled (``worker_shutdown``); only the task itself
        goes on, shielded from cancellation. Reads plain attributes only, so
        another thread may call it.
        """
        return self.runner.jobs() if self.drained.is_set() else []

    async def _shut_down_job(self, job: Job) -> None:
        """Settle a job still running after the shutdown timeout as ``worker_shutdown``."""
        job.run.log.warning("job still running after the shutdown timeout")
        slot = self.slots[job.task.name]
        record = self.runner.finish(slot, job, fail("worker_shutdown", "server is shutting down"))
        if job.callback_url is None and job.unsent is None:
            job.unsent = "server shut down while the job was running"
        await self._hand_over(job, record, single_attempt=True)


async def _mark_letter(letter: trio.Path, **flags: bool) -> None:
    try:
        await update_dead_letter(letter, flags)
    except (OSError, ValueError):
        logger.warning("cannot update the dead letter %s", letter, exc_info=True)


def _tracing_observer() -> Observer | None:
    """The tracing observer when ``opentelemetry-api`` is installed, else None (SPEC 6)."""
    try:
        from ._tracing import Tracing
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] != "opentelemetry":
            raise
        return None
    from . import __version__

    return Tracing(__version__)


def _seconds(value: Any) -> float:
    seconds = to_seconds(value)
    assert seconds is not None  # validated before the runtime exists
    return seconds


@asynccontextmanager
async def open_runtime(
    server: Server, *, callback_transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[Runtime]:
    """Open the server's nursery and runtime; drain and close them on exit."""
    with redacting_httpx_logs():
        async with _open_runtime(server, callback_transport) as runtime:
            yield runtime


@asynccontextmanager
async def _open_runtime(
    server: Server, callback_transport: httpx.AsyncBaseTransport | None
) -> AsyncIterator[Runtime]:
    runtime: Runtime | None = None
    lean_http: LeanHTTP | None = None
    try:
        async with (
            httpx.AsyncClient(
                transport=callback_transport, follow_redirects=False, timeout=None
            ) as callback_client,
            trio.open_nursery() as nursery,
        ):
            # A transport of the caller's (a test seam) or a proxy: every POST through httpx.
            if callback_transport is None and not proxy_configured():
                lean_http = LeanHTTP(callback_client.headers.items())
            runtime = Runtime(server, nursery, callback_client, lean_http)
            async with trio.open_nursery() as jobs_nursery:
                runtime.runner.nursery = jobs_nursery
                # Before anything is served: a persistent store settles what the last
                # process left running (so /readyz is ready only after recovery).
                await runtime.keeper.start()
                async with AsyncExitStack() as stack:
                    if server.settings.lifespan is not None:
                        await stack.enter_async_context(server.settings.lifespan(server))
                    try:
                        yield runtime
                    finally:
                        await runtime.drain()
                jobs_nursery.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
    finally:
        if lean_http is not None:
            lean_http.close()
        if runtime is not None:  # after the nursery: the heartbeat was the last task
            await runtime.keeper.aclose()
    if runtime.drain_began_at is not None:
        logger.info(
            "server %r stopped after draining for %s",
            server.name,
            format_duration(trio.current_time() - runtime.drain_began_at),
        )
