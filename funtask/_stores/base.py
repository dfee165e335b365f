"""The store interface: where job state lives (SPEC section 5).

A :class:`Store` keeps one record per job, identified by ``(task, job_id)``,
as :class:`StoredJob`. The job runner asks it to *claim* a jobId before a job
starts, *settles* the job's result with compare-and-set (the owner's token
must still hold the record), marks the delivery *done*, and *finds* results
for ``/result`` and duplicate detection. It never knows which store it has.

Lifecycle::

    store = open_store(url, ...)        # see funtask._stores
    async with store:                   # open(), then aclose()
        claim = await store.claim("task", "job-1", callback_url=None)
        ...

Contract every implementation keeps (``tests/test_store_contract.py``):

- Every method may raise :class:`StoreUnavailable` when the store does not
  answer (or answers too late: each call is bounded by ``store_timeout``);
  it never raises it for an answer it did get.
- Every write is idempotent under re-execution with the same token: a claim
  whose answer was lost finds its own token and reports ``claimed``; a
  settle already applied with this token and body reports ``ok``.
- ``claim`` creates the record in state ``running`` (or reports what is
  there); ``settle`` moves ``running`` → ``delivering`` (with a callback)
  or ``done``, and only while the record holds the caller's token;
  ``delivered`` moves ``delivering`` → ``done``. ``recover`` takes over
  records whose process is gone (SQLite: every record not ``done`` at
  start-up; Redis: expired leases) and hands back what the caller must
  finish: ``running`` ones are settled there as ``worker_lost``; each
  carries the state it was left in as ``recovered_from``.
- Results (state ``delivering`` or ``done``) are found by :meth:`lookup`
  and :meth:`find`; a persistent store keeps them for ``result_ttl``.
- Times in records are wall-clock seconds since the epoch, from the store's
  clock (Redis ``TIME``, ``time.time()`` of the SQLite writer).
- Every call runs with the mock clock held (``hold_mock_clock``): virtual
  time stands still while the store answers.

The memory store keeps a bounded history per task exactly as Go does; the
persistent ones keep every result for ``result_ttl``.
"""

from __future__ import annotations

import abc
import json
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal

import trio

from .._errors import FuntaskError
from .._result import Result, fail
from .._threads import hold_mock_clock
from .._wire import FinishedJob, finished_job
from .url import StoreURL

__all__ = [
    "DEFAULT_RESULT_TTL",
    "DEFAULT_STORE_LEASE",
    "DEFAULT_STORE_TIMEOUT",
    "MIN_STORE_LEASE",
    "WORKER_LOST_CODE",
    "WORKER_LOST_MESSAGE",
    "Claim",
    "ClaimStatus",
    "DeliveryOutcome",
    "Heartbeat",
    "HeldJob",
    "InstanceInfo",
    "JobState",
    "Settled",
    "SettleStatus",
    "Store",
    "StoreStatus",
    "StoreUnavailable",
    "StoredJob",
    "new_token",
    "new_webhook_id",
    "restore_finished_job",
    "worker_lost_result",
]

DEFAULT_RESULT_TTL: Final = 7 * 24 * 3600.0  # seconds (7 days)
DEFAULT_STORE_LEASE: Final = 60.0  # seconds
DEFAULT_STORE_TIMEOUT: Final = 2.0  # seconds
MIN_STORE_LEASE: Final = 1.0  # seconds

WORKER_LOST_CODE: Final = "worker_lost"
WORKER_LOST_MESSAGE: Final = "worker stopped while the job was running"

JobState = Literal["running", "delivering", "done"]
ClaimStatus = Literal["claimed", "running", "stored"]
SettleStatus = Literal["ok", "superseded"]
# How a result left the worker: posted, kept as a dead letter, a sync result
# answered or not, or nothing to deliver.
DeliveryOutcome = Literal["delivered", "dead_lettered", "answered", "unsent", "stopped", "none"]


class StoreUnavailable(FuntaskError):
    """The store did not answer (outage, timeout); the request may be retried."""

    def __init__(self, store: str, reason: str) -> None:
        super().__init__(f"result store {store} unavailable: {reason}")
        self.store = store  # the redacted display form
        self.reason = reason


def new_token() -> str:
    """A fresh owner token (drawn at each start; 128 random bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def new_webhook_id() -> str:
    """A fresh ``webhook-id`` for a settled result (Standard Webhooks; contains no ``.``)."""
    return "msg_" + secrets.token_hex(16)


@dataclass(frozen=True)
class StoredJob:
    """One job's record as a store holds it."""

    task: str
    job_id: str
    state: JobState
    token: str  # the owner token
    instance: str  # the owner's display name
    started: float  # wall seconds (store clock)
    renewed: float  # last heartbeat that stamped this job (store clock)
    callback_url: str | None = None
    last_step: str = ""
    stop: bool = False
    trace: str | None = None  # opaque trace context (W3C traceparent)
    webhook_id: str | None = None  # drawn once when the result is settled
    result: FinishedJob | None = None  # once delivering or done
    delivery: DeliveryOutcome | None = None  # once done
    attempts: int = 0  # callback attempts made
    recovered_from: JobState | None = None  # set by recover(): the state it was left in

    @property
    def finished(self) -> bool:
        """Whether the job has a result (``delivering`` or ``done``)."""
        return self.state != "running"

    @property
    def key(self) -> tuple[str, str]:
        """``(task, job_id)``."""
        return (self.task, self.job_id)


@dataclass(frozen=True)
class Claim:
    """What :meth:`Store.claim` found.

    ``claimed``: the record is new and holds this process's token (``job`` is
    it). ``running``: another job (another process, or this one) runs it
    (``job`` is that record, for its ``instance`` and ``started``).
    ``stored``: it has finished; ``job.result`` is the result to answer.
    """

    status: ClaimStatus
    job: StoredJob


@dataclass(frozen=True)
class Settled:
    """What :meth:`Store.settle` did: ``ok`` (stored) or ``superseded``.

    ``job`` is the record as stored now: this result (``ok``) or the one that
    was settled first (``superseded``; None if the record is gone).
    """

    status: SettleStatus
    job: StoredJob | None


@dataclass(frozen=True)
class HeldJob:
    """A job this process holds, as reported to :meth:`Store.heartbeat`."""

    task: str
    job_id: str
    last_step: str = ""


@dataclass(frozen=True)
class Heartbeat:
    """What a heartbeat learned about the jobs it renewed."""

    version: int  # bumped on every claim, settle and stop request
    stop: frozenset[tuple[str, str]] = frozenset()  # held jobs whose stop flag is set
    lost: frozenset[tuple[str, str]] = frozenset()  # held jobs now holding another token


@dataclass(frozen=True)
class InstanceInfo:
    """A process that uses the store, as of its last heartbeat."""

    instance: str
    last_seen: float  # wall seconds (store clock)
    pid: int | None = None  # where the store knows it (SQLite)


@dataclass(frozen=True)
class StoreStatus:
    """What ``python -m funtask store status`` shows."""

    store: str  # display form
    instances: tuple[InstanceInfo, ...] = ()
    running: tuple[StoredJob, ...] = ()  # running or delivering
    results: Mapping[str, int] = field(default_factory=dict)  # task -> stored results


class Store(abc.ABC):
    """Where job records live. Use as an async context manager (``open``/``aclose``).

    Args:
        url: the parsed store URL.
        name: the server name (a Redis pool is the server name plus the store).
        instance: this process's display name.
        result_history: results per task kept in the history (``history``; the
            memory store keeps no more than that, as Go does).
        keep_results: per-task overrides of ``result_history``.
        result_ttl: seconds a persistent store keeps results (None: forever).
        store_lease: seconds a job's lease lasts without a heartbeat.
        store_timeout: seconds any one store call may take.
    """

    kind: str = "?"
    #: Whether results outlive the process (False only for memory).
    persistent: bool = True
    #: Whether other processes share the records (Redis): the runtime then
    #: refreshes its view of the history when the version moves, runs the
    #: sweeper (``recover`` on every heartbeat) and honours lease loss.
    pool: bool = False

    def __init__(
        self,
        url: StoreURL,
        *,
        name: str,
        instance: str,
        result_history: int,
        keep_results: Mapping[str, int] | None = None,
        result_ttl: float | None = DEFAULT_RESULT_TTL,
        store_lease: float = DEFAULT_STORE_LEASE,
        store_timeout: float = DEFAULT_STORE_TIMEOUT,
    ) -> None:
        self.url = url
        self.name = name
        self.instance = instance
        self.result_history = result_history
        self.keep_results = dict(keep_results or {})
        self.result_ttl = result_ttl
        self.store_lease = store_lease
        self.store_timeout = store_timeout
        self.token = new_token()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url.display}>"

    def history_limit(self, task: str) -> int:
        """How many results of ``task`` its history keeps."""
        return self.keep_results.get(task, self.result_history)

    @property
    def display(self) -> str:
        """The store URL as it may be shown (password redacted)."""
        return self.url.display

    # -- lifecycle -----------------------------------------------------------

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect (and for SQLite create the schema). Raises :class:`StoreUnavailable`."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections; a clean exit removes this instance's entry."""

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- one job -------------------------------------------------------------

    @abc.abstractmethod
    async def claim(
        self, task: str, job_id: str, *, callback_url: str | None, trace: str | None = None
    ) -> Claim:
        """Create the ``running`` record of (task, job_id) with this token.

        Reports what is there instead if the record exists; a record that
        already holds this token counts as ``claimed`` (a lost answer).
        """

    @abc.abstractmethod
    async def release(self, task: str, job_id: str) -> None:
        """Undo a claim whose job never started (deleted only if it holds this token)."""

    @abc.abstractmethod
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
        """Store ``result`` by compare-and-set: only if the record holds ``token``
        (default: this store's) and is not finished yet.

        ``delivering`` leaves the record in ``delivering`` (a callback is due)
        rather than ``done``. Settling the same result again with the same
        token answers ``ok``.
        """

    @abc.abstractmethod
    async def delivered(
        self, task: str, job_id: str, *, outcome: DeliveryOutcome, attempts: int
    ) -> None:
        """Mark a ``delivering`` record held by this token ``done`` with ``outcome``."""

    @abc.abstractmethod
    async def find(self, task: str, job_id: str) -> StoredJob | None:
        """The record of (task, job_id) in any state, or None (read-only)."""

    @abc.abstractmethod
    async def lookup(self, job_id: str) -> StoredJob | None:
        """The newest finished record with ``job_id`` across tasks, or None (``/result``)."""

    @abc.abstractmethod
    async def history(self, task: str, limit: int) -> list[FinishedJob]:
        """Up to ``limit`` of the task's newest results, newest first."""

    @abc.abstractmethod
    async def request_stop(self, task: str, job_id: str | None) -> list[StoredJob]:
        """Set the stop flag of an unfinished (running or delivering) job.

        With ``job_id``: that job; returns ``[its record]``, or ``[]`` if it is
        not unfinished. With ``job_id=None``: if the task has exactly one
        unfinished job, flag it and return ``[it]``; if several, flag none and
        return them all (the caller answers 409 naming them); ``[]`` if none.
        """

    # -- this process --------------------------------------------------------

    @abc.abstractmethod
    async def heartbeat(self, jobs: Sequence[HeldJob]) -> Heartbeat:
        """Renew the leases of ``jobs`` (stamping ``renewed`` and the last step),
        record this instance, and report stop flags, lost jobs and the version."""

    @abc.abstractmethod
    async def recover(self) -> list[StoredJob]:
        """Take over the records whose process is gone and return them, each now
        holding this token: ``running`` ones already settled as ``worker_lost``
        (state ``delivering`` if they have a callback, else ``done``), and
        ``delivering`` ones as they were; ``recovered_from`` says which. The
        caller delivers those that are ``delivering``."""

    @abc.abstractmethod
    async def purge(self) -> int:
        """Delete results older than ``result_ttl``; return how many."""

    @abc.abstractmethod
    async def status(self) -> StoreStatus:
        """Instances, unfinished jobs and result counts (for the CLI)."""

    async def check(self) -> bool:
        """Whether the store answers now (``/readyz``); never raises."""
        return True

    @contextmanager
    def bounded(self, what: str) -> Iterator[None]:
        """Bound one store call: the mock clock held, ``trio.fail_after(store_timeout)``,
        :class:`trio.TooSlowError` turned into :class:`StoreUnavailable`."""
        try:
            with hold_mock_clock(), trio.fail_after(self.store_timeout):
                yield
        except trio.TooSlowError:
            raise StoreUnavailable(
                self.display, f"{what} timed out after {self.store_timeout:g}s"
            ) from None


def worker_lost_result(job: StoredJob, now: float) -> FinishedJob:
    """The ``worker_lost`` result of a job whose process died while it ran.

    ``duration`` = last renewal - start; ``finished`` = ``now`` (store clock).
    """
    result = fail(WORKER_LOST_CODE, WORKER_LOST_MESSAGE)
    if job.last_step:
        result = result._copy(last_step=job.last_step)
    duration = max(0.0, job.renewed - job.started)
    return finished_job(job.task, job.job_id, result, duration, finished_at=now)


def restore_finished_job(task: str, job_id: str, body: bytes, finished_at: float) -> FinishedJob:
    """Rebuild a :class:`FinishedJob` from the job response ``body`` a store kept.

    The inverse of storing ``record.body`` and ``record.finished_at``: the
    response, ``/health`` entry and body come back identical.
    """
    response: dict[str, Any] = json.loads(body)
    success = bool(response.get("success"))
    error = response.get("error") if not success else None
    if isinstance(error, dict):
        result = Result(
            False,
            str(error.get("message", "")),
            str(error.get("code", "")),
            last_step=str(error.get("step", "")),
        )
    else:
        result = Result(success, str(response.get("message", "")), data=response.get("data", {}))
    duration_text = str(response.get("duration", "0s"))
    duration_ms = response.get("durationMs")
    seconds = duration_ms / 1000.0 if isinstance(duration_ms, (int, float)) else 0.0
    record = finished_job(task, job_id, result, seconds, finished_at=finished_at)
    if record.body != body:  # keep exactly what was stored (member order, duration text)
        record = FinishedJob(
            task,
            job_id,
            result,
            duration_text,
            finished_at,
            response,
            body,
            _entry(response, record.entry),
        )
    return record


def _entry(response: dict[str, Any], rebuilt: dict[str, Any]) -> dict[str, Any]:
    entry = dict(rebuilt)
    entry["duration"] = response.get("duration", entry.get("duration"))
    if "error" in response:
        entry["error"] = response["error"]
    return entry
