"""The runtime's side of the store: outages, heartbeats, housekeeping and recovery.

The :class:`StoreKeeper` owns the server's :class:`~funtask._stores.base.Store`
while it serves. It knows whether the store answers (``ok``), reconnects in
the background after an outage (backoff up to 5 s, one log line when the
store is lost and one when it is back), runs the heartbeat and the
housekeeping of persistent stores, settles results (rule 6: stored first,
then delivered; an unstorable result waits as an ``unstored`` dead letter)
and, at start-up, finishes what a previous process left behind. It tells the
runtime's observer (the store metrics) when the store is up or lost, which
calls failed, which jobs it recovered and which leases it lost.

The memory store needs none of the background work: with it the keeper
starts no task and every call answers without yielding.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final, Literal

import trio

from ._callbacks import DeliveryReport
from ._deadletters import DeadLetter, scan_dead_letters, update_dead_letter, write_dead_letter
from ._observe import RecoveredState, StoreOperation
from ._run import job_log
from ._stores import create_store
from ._stores.base import (
    DeliveryOutcome,
    HeldJob,
    Store,
    StoredJob,
    StoreStatus,
    StoreUnavailable,
    restore_finished_job,
)
from ._stores.sqlite import CHECKPOINT_INTERVAL, PURGE_INTERVAL
from ._threads import run_in_thread
from ._tracecontext import carrier_from_stored
from ._wire import FinishedJob, rfc3339

if TYPE_CHECKING:
    from ._jobs import Job
    from ._runtime import Runtime

__all__ = ["REASON_LEASE_LOST", "StoreKeeper"]

logger: Final = logging.getLogger("funtask.store")

REASON_LEASE_LOST: Final = "job cancelled: lease lost"
MAX_RECONNECT_DELAY: Final = 5.0  # seconds
FIRST_RECONNECT_DELAY: Final = 0.1  # seconds
STORE_UNAVAILABLE: Final = "result store unavailable"

SettleOutcome = Literal["ok", "superseded", "unstored"]


class StoreKeeper:
    """The server's store while it serves (see the module docstring)."""

    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.server.settings
        self.runtime = runtime
        self.url = settings.resolved_store()
        lease = _seconds(settings.store_lease)
        ttl = None if settings.result_ttl is None else _seconds(settings.result_ttl)
        self.store: Store = create_store(
            self.url,
            name=runtime.name,
            instance=runtime.instance,
            result_history=settings.result_history,
            keep_results={
                task.name: task.keep_results
                for task in runtime.server.tasks.values()
                if task.keep_results is not None
            },
            result_ttl=ttl,
            store_lease=lease,
            store_timeout=_seconds(settings.store_timeout),
        )
        self.persistent = self.store.persistent
        self.heartbeat_interval = min(1.0, lease / 3)
        self.ok = True
        self.opened = False
        self.back = trio.Event()
        self.back.set()
        self._seen_version = -1
        self.pool_view: StoreStatus | None = None  # a pool's instances and running jobs

    @property
    def display(self) -> str:
        """The store as it may be shown (password redacted)."""
        return self.url.display

    # -- outages ----------------------------------------------------------------

    def failed(self, operation: StoreOperation, exc: StoreUnavailable) -> None:
        """A store call for ``operation`` did not answer: count it, then :meth:`lost`."""
        self.runtime.observer.store_error(operation)
        self.lost(exc)

    @contextmanager
    def counting(self, operation: StoreOperation) -> Iterator[None]:
        """Count a :class:`StoreUnavailable` raised inside as a failed ``operation``; re-raise."""
        try:
            yield
        except StoreUnavailable:
            self.runtime.observer.store_error(operation)
            raise

    def lost(self, exc: StoreUnavailable) -> None:
        """Note that the store did not answer; reconnect in the background."""
        if not self.ok:
            return
        self.ok = False
        self.back = trio.Event()
        logger.error("result store %s lost: %s", self.display, exc.reason)
        self.runtime.observer.store_state(False)
        self.runtime.notifier.bump()
        self.runtime.nursery.start_soon(self._reconnect, name="funtask store reconnect")

    async def _reconnect(self) -> None:
        delay = FIRST_RECONNECT_DELAY
        while True:
            await trio.sleep(delay)
            delay = min(delay * 2, MAX_RECONNECT_DELAY)
            if not self.opened:
                try:
                    await self._open_and_recover()
                except StoreUnavailable:
                    continue
            elif not await self.store.check():
                continue
            break
        self.ok = True
        self.back.set()
        logger.warning("result store %s is back", self.display)
        self.runtime.observer.store_state(True)
        self.runtime.notifier.bump()

    # -- start-up and shutdown ---------------------------------------------------

    async def start(self) -> None:
        """Open the store and finish what a previous process left (before ``/readyz``)."""
        if not self.persistent:
            await self._open_store()
            self.opened = True
            return
        try:
            await self._open_and_recover()
        except StoreUnavailable as exc:
            self.lost(exc)
        else:
            self.runtime.observer.store_state(True)
        nursery = self.runtime.nursery
        nursery.start_soon(self._heartbeat_loop, name="funtask store heartbeat")
        nursery.start_soon(self._purge_loop, name="funtask store purge")
        if hasattr(self.store, "checkpoint"):
            nursery.start_soon(self._checkpoint_loop, name="funtask store checkpoint")

    async def aclose(self) -> None:
        """Close the store (a clean exit removes this instance's entry)."""
        with trio.CancelScope(shield=True), trio.move_on_after(self.store.store_timeout):
            try:
                await self.store.aclose()
            except StoreUnavailable:
                logger.warning("result store %s: could not close cleanly", self.display)

    async def _open_store(self) -> None:
        """Open the store; one with a ``serve`` task (Redis) runs it in the server's nursery.

        That task owns the store's client (coredis's owns a task group), so it must
        live in the nursery rather than be entered here and left in :meth:`aclose`.
        """
        serve = getattr(self.store, "serve", None)
        if serve is not None:
            await self.runtime.nursery.start(serve)
        else:
            await self.store.open()

    async def _open_and_recover(self) -> None:
        runtime = self.runtime
        if not self.opened:
            await self._open_store()
            self.opened = True
        with self.counting("settle"):
            await self._offer_unstored_letters()
        with self.counting("sweep"):
            recovered = await self.store.recover()
        for job in recovered:
            self._adopt(job)
        with self.counting("history"):
            for name, slot in runtime.slots.items():
                records = await self.store.history(name, slot.history.maxlen or 1)
                slot.history.clear()
                slot.history.extend(records)
        runtime.notifier.bump()

    def _adopt(self, job: StoredJob) -> None:
        """Finish a job whose process is gone: deliver it, or keep its unsent result."""
        log = job_log(logger, job.task, job.job_id, self.runtime.instance)
        was: RecoveredState = "running" if job.recovered_from == "running" else "delivering"
        self.runtime.observer.job_recovered(job, was)
        if job.result is None:
            return
        if was == "running":
            log.warning("worker stopped while the job was running; settled as worker_lost")
        if job.state == "delivering" and job.callback_url is not None:
            self.runtime.nursery.start_soon(self._redeliver, job, name="funtask redelivery")
        elif job.delivery == "unsent":
            self.runtime.nursery.start_soon(
                self._keep_unsent, job, name="funtask unsent worker_lost result"
            )

    async def _keep_unsent(self, job: StoredJob) -> None:
        assert job.result is not None
        await self.runtime.delivery.keep_unsent(
            job.result,
            "worker stopped while the job was running",
            webhook_id=job.webhook_id,
            trace=carrier_from_stored(job.trace),
        )

    async def _redeliver(self, job: StoredJob) -> None:
        """Deliver a stored result again on the retry schedule, adopting its dead letter."""
        assert job.result is not None and job.callback_url is not None
        runtime = self.runtime
        letter = await self._find_letter(job.task, job.job_id)
        webhook_id = job.webhook_id or (letter.webhook_id if letter else None) or ""
        report = DeliveryReport()
        delivered = await runtime.delivery.deliver(
            job.result,
            job.callback_url,
            single_attempt=runtime.draining,
            webhook_id=webhook_id,
            letter=None if letter is None else trio.Path(letter.path),
            attempts=0 if letter is None else letter.attempts,
            report=report,
            trace=carrier_from_stored(job.trace),
        )
        await self.delivered(
            job.task,
            job.job_id,
            "delivered" if delivered else "dead_lettered",
            report.attempts,
        )

    async def _find_letter(self, task: str, job_id: str) -> DeadLetter | None:
        directory = self.runtime.dead_letter_dir
        if not directory:
            return None
        try:
            letters, _ = await run_in_thread(scan_dead_letters, directory)
        except OSError:
            return None
        for letter in letters:
            if letter.task == task and letter.job_id == job_id and not letter.superseded:
                return letter
        return None

    async def _offer_unstored_letters(self) -> None:
        """Rule 6: offer results written while the store was away (before recovery)."""
        directory = self.runtime.dead_letter_dir
        if not directory:
            return
        try:
            letters, _ = await run_in_thread(scan_dead_letters, directory)
        except OSError:
            return
        for letter in letters:
            if not letter.unstored or letter.token is None:
                continue
            record = _record_of(letter)
            if record is None:
                continue
            settled = await self.store.settle(
                letter.task,
                letter.job_id,
                record,
                webhook_id=letter.webhook_id or "",
                delivering=bool(letter.callback_url),
                token=letter.token,
            )
            log = job_log(logger, letter.task, letter.job_id, self.runtime.instance)
            if settled.status == "superseded":
                log.warning("unstored result superseded; dead letter %s kept", letter.path)
                self.runtime.observer.result_superseded(record)
                await update_dead_letter(letter.path, {"unstored": False, "superseded": True})
            else:
                log.info("unstored result stored from dead letter %s", letter.path)
                await update_dead_letter(letter.path, {"unstored": False})

    async def release_later(self, task: str, job_id: str) -> None:
        """Undo a claim that failed or timed out, once the store answers again (rule 4)."""
        while True:
            await self.back.wait()
            try:
                await self.store.release(task, job_id)
            except StoreUnavailable as exc:
                self.failed("claim", exc)
                await trio.sleep(FIRST_RECONNECT_DELAY)
                continue
            return

    # -- settling ----------------------------------------------------------------

    async def settle(self, job: Job, record: FinishedJob, webhook_id: str) -> SettleOutcome:
        """Store ``job``'s result by compare-and-set (shielded, bounded)."""
        if not self.persistent:  # answers at once, never yields: nothing to shield or lose
            memory = await self.store.settle(
                job.task.name,
                job.job_id,
                record,
                webhook_id=webhook_id,
                delivering=job.callback_url is not None,
            )
            return memory.status
        if not self.ok:
            return "unstored"
        with trio.CancelScope(shield=True):
            try:
                settled = await self.store.settle(
                    job.task.name,
                    job.job_id,
                    record,
                    webhook_id=webhook_id,
                    delivering=job.callback_url is not None,
                )
            except StoreUnavailable as exc:
                self.failed("settle", exc)
                return "unstored"
        return settled.status

    async def wait_stored(self, job: Job, record: FinishedJob, webhook_id: str) -> SettleOutcome:
        """Retry settling an unstored result until the store takes it (cancel to give up)."""
        while True:
            await self.back.wait()
            outcome = await self.settle(job, record, webhook_id)
            if outcome != "unstored":
                return outcome
            await trio.sleep(FIRST_RECONNECT_DELAY)

    async def write_letter(
        self, job: Job, record: FinishedJob, webhook_id: str, **flags: bool
    ) -> trio.Path | None:
        """A dead letter for a result that is not (or never will be) posted as it is."""
        meta = {
            "task": record.task,
            "callbackUrl": job.callback_url or "",
            "attempts": 0,
            "lastError": STORE_UNAVAILABLE if flags.get("unstored") else "superseded",
            "createdAt": rfc3339(time.time()),
            "webhookId": webhook_id,
            "token": self.store.token,
            **(job.trace_context or {}),  # traceparent/tracestate: replay continues the trace
            **flags,
        }
        try:
            return await write_dead_letter(
                self.runtime.dead_letter_dir or "",
                record.job_id,
                record.response,
                meta,
                encoded=record.body,
            )
        except (OSError, ValueError, TypeError):
            job_log(logger, record.task, record.job_id, self.runtime.instance).error(
                "cannot write the dead letter", exc_info=True
            )
            return None

    async def delivered(
        self, task: str, job_id: str, outcome: DeliveryOutcome, attempts: int
    ) -> None:
        """Mark a delivery over in the store (shielded, bounded; an outage is logged)."""
        with trio.CancelScope(shield=True):
            try:
                await self.store.delivered(task, job_id, outcome=outcome, attempts=attempts)
            except StoreUnavailable as exc:
                self.failed("settle", exc)

    # -- background work ---------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Renew leases, stamp steps, act on stop flags; in a pool also sweep and refresh.

        Runs until the runtime's nursery is cancelled, after the jobs nursery: the
        last task to go (other replicas must not sweep a draining replica's jobs).
        """
        runtime = self.runtime
        store = self.store
        last_renewed = trio.current_time()  # send time of the last successful heartbeat
        while True:
            await trio.sleep(self.heartbeat_interval)
            jobs = runtime.runner.jobs()
            # Rule 5: without a renewal for a lease (less one beat), a pool's jobs are
            # someone else's to settle; stop working on them.
            lease_left = store.store_lease - self.heartbeat_interval
            if store.pool and jobs and trio.current_time() - last_renewed > lease_left:
                for job in jobs:
                    if job.record is None:
                        self._lose_lease(job)
            if not self.ok or not self.opened:
                continue
            held = [HeldJob(job.task.name, job.job_id, job.run.state.step) for job in jobs]
            sent = trio.current_time()
            try:
                beat = await store.heartbeat(held)
            except StoreUnavailable as exc:
                self.failed("heartbeat", exc)
                continue
            last_renewed = sent
            for job in jobs:
                key = (job.task.name, job.job_id)
                if key in beat.lost and job.record is None:
                    self._lose_lease(job)
                elif key in beat.stop:
                    runtime.stop_job(job)
            if not store.pool:
                continue
            if not runtime.draining:  # the sweeper stops when draining begins
                try:
                    swept = await store.recover()
                except StoreUnavailable as exc:
                    self.failed("sweep", exc)
                    continue
                for record in swept:
                    self._adopt(record)
            await self._refresh_pool()
            if beat.version != self._seen_version:
                self._seen_version = beat.version
                await self._refresh_views()

    def _lose_lease(self, job: Job) -> None:
        """Cancel a running job whose lease is lost (rule 5), reporting it once."""
        if not job.lease_lost:
            job.lease_lost = True
            self.runtime.observer.lease_lost(job)
        job.cancel(REASON_LEASE_LOST)

    async def _refresh_pool(self) -> None:
        """The pool view (instances, running jobs and their steps), at every heartbeat."""
        try:
            view = await self.store.status()
        except StoreUnavailable as exc:
            self.failed("history", exc)
            return
        if view != self.pool_view:
            self.pool_view = view
            self.runtime.notifier.bump()

    async def _refresh_views(self) -> None:
        runtime = self.runtime
        try:
            for name, slot in runtime.slots.items():
                records = await self.store.history(name, slot.history.maxlen or 1)
                slot.history.clear()
                slot.history.extend(records)
        except StoreUnavailable as exc:
            self.failed("history", exc)
            return
        runtime.notifier.bump_milestone()

    async def _purge_loop(self) -> None:
        while True:
            await trio.sleep(PURGE_INTERVAL)
            if self.runtime.draining:
                return
            if not self.ok:
                continue
            try:
                purged = await self.store.purge()
            except StoreUnavailable as exc:
                self.failed("sweep", exc)
                continue
            if purged:
                logger.info("result store %s: purged %d expired result(s)", self.display, purged)

    async def _checkpoint_loop(self) -> None:
        checkpoint = self.store.checkpoint  # type: ignore[attr-defined]
        while True:
            await trio.sleep(CHECKPOINT_INTERVAL)
            await checkpoint()


def _record_of(letter: DeadLetter) -> FinishedJob | None:
    from ._wire import dumps

    finished = letter.body.get("finished")
    try:
        body = dumps(letter.body)
        wall = float(finished) if isinstance(finished, (int, float)) else time.time()
        return restore_finished_job(letter.task, letter.job_id, body, wall)
    except (TypeError, ValueError):
        return None


def _seconds(value: object) -> float:
    from ._config import to_seconds

    seconds = to_seconds(value)
    assert seconds is not None and not math.isnan(seconds)  # validated before serving
    return seconds
