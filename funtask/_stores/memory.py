"""The memory store: one process, Go's behaviour, nothing kept across restarts.

Results live in a bounded history per task (``result_history``, newest
first), exactly as the Go worker keeps them; unfinished jobs in a dict.
Every method answers without awaiting anything, so the hot path costs a
dict lookup or two.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .._wire import FinishedJob
from .base import (
    Claim,
    DeliveryOutcome,
    Heartbeat,
    HeldJob,
    InstanceInfo,
    Settled,
    Store,
    StoredJob,
    StoreStatus,
)
from .url import StoreURL

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Job records in this process's memory (the default store)."""

    kind = "memory"
    persistent = False

    def __init__(self, url: StoreURL, **options: Any) -> None:
        super().__init__(url, **options)
        self._unfinished: dict[tuple[str, str], StoredJob] = {}
        self._results: dict[str, deque[StoredJob]] = {}
        self._version = 0

    def results(self, task: str) -> deque[StoredJob]:
        """The task's result history, newest first (created on first use)."""
        history = self._results.get(task)
        if history is None:
            history = self._results[task] = deque(maxlen=self.history_limit(task))
        return history

    def _find_result(self, task: str, job_id: str) -> StoredJob | None:
        history = self._results.get(task)
        if history is not None:
            for job in history:
                if job.job_id == job_id:
                    return job
        return None

    async def claim(
        self, task: str, job_id: str, *, callback_url: str | None, trace: str | None = None
    ) -> Claim:
        key = (task, job_id)
        current = self._unfinished.get(key)
        if current is not None:
            if current.finished:
                return Claim("stored", current)
            return Claim("claimed" if current.token == self.token else "running", current)
        stored = self._find_result(task, job_id)
        if stored is not None:
            return Claim("stored", stored)
        now = time.time()
        job = StoredJob(
            task,
            job_id,
            "running",
            self.token,
            self.instance,
            now,
            now,
            callback_url=callback_url,
            trace=trace,
        )
        self._unfinished[key] = job
        self._version += 1
        return Claim("claimed", job)

    async def release(self, task: str, job_id: str) -> None:
        job = self._unfinished.get((task, job_id))
        if job is not None and job.token == self.token and job.state == "running":
            del self._unfinished[(task, job_id)]

    async def settle(
        self,
        task: str,
        job_id: str,
        result: FinishedJob,
        *,
        webhook_id: str,
        delivering: bool,
        token: str | None = None,
    ) -> Settled:
        key = (task, job_id)
        token = self.token if token is None else token
        current = self._unfinished.get(key) or self._find_result(task, job_id)
        if current is None or current.token != token:
            return Settled("superseded", current)
        if current.state != "running":
            if current.result is not None and current.result.body == result.body:
                return Settled("ok", current)
            return Settled("superseded", current)
        job = StoredJob(
            task,
            job_id,
            "delivering" if delivering else "done",
            token,
            current.instance,
            current.started,
            current.renewed,
            current.callback_url,
            current.last_step,
            current.stop,
            current.trace,
            webhook_id,
            result,
            None if delivering else "none",
        )
        if delivering:
            self._unfinished[key] = job
        else:
            del self._unfinished[key]
        self.results(task).appendleft(job)
        self._version += 1
        return Settled("ok", job)

    async def delivered(
        self, task: str, job_id: str, *, outcome: DeliveryOutcome, attempts: int
    ) -> None:
        key = (task, job_id)
        current = self._unfinished.get(key)
        if current is None or current.token != self.token or current.state != "delivering":
            return
        del self._unfinished[key]
        done = replace(current, state="done", delivery=outcome, attempts=attempts)
        history = self.results(task)
        for index, job in enumerate(history):
            if job is current:
                history[index] = done
                break

    async def find(self, task: str, job_id: str) -> StoredJob | None:
        return self._unfinished.get((task, job_id)) or self._find_result(task, job_id)

    async def lookup(self, job_id: str) -> StoredJob | None:
        best: StoredJob | None = None
        for task in self._results:
            job = self._find_result(task, job_id)
            if job is not None and (best is None or _finished_at(job) > _finished_at(best)):
                best = job
        return best

    async def history(self, task: str, limit: int) -> list[FinishedJob]:
        found: list[FinishedJob] = []
        for job in self._results.get(task, ()):
            if len(found) >= limit:
                break
            if job.result is not None:
                found.append(job.result)
        return found

    async def request_stop(self, task: str, job_id: str | None) -> list[StoredJob]:
        if job_id is not None:
            jobs = [job for job in (self._unfinished.get((task, job_id)),) if job is not None]
        else:
            jobs = [job for (t, _), job in self._unfinished.items() if t == task]
        if len(jobs) != 1:
            return jobs
        flagged = replace(jobs[0], stop=True)
        self._unfinished[flagged.key] = flagged
        self._version += 1
        return [flagged]

    async def heartbeat(self, jobs: Sequence[HeldJob]) -> Heartbeat:
        now = time.time()
        stop = set()
        lost = set()
        for held in jobs:
            key = (held.task, held.job_id)
            current = self._unfinished.get(key)
            if current is None or current.token != self.token:
                lost.add(key)
                continue
            self._unfinished[key] = replace(current, renewed=now, last_step=held.last_step)
            if current.stop:
                stop.add(key)
        return Heartbeat(self._version, frozenset(stop), frozenset(lost))

    async def recover(self) -> list[StoredJob]:
        return []  # nothing outlives the process

    async def purge(self) -> int:
        return 0  # the history is bounded instead

    async def status(self) -> StoreStatus:
        return StoreStatus(
            self.display,
            instances=(InstanceInfo(self.instance, time.time()),),
            running=tuple(self._unfinished.values()),
            results={task: len(history) for task, history in self._results.items()},
        )


def _finished_at(job: StoredJob) -> float:
    return job.result.finished_at if job.result is not None else 0.0
