"""The Redis store: many replicas serving the same tasks as one pool (SPEC section 5).

Built on coredis (anyio-based, so it runs on Trio natively; RESP3). Every
write is one Lua script from :mod:`._redis_lua`; every key shares the pool's
hash tag ``{funtask:<server name>}``. Every call is bounded by
``store_timeout`` with the mock clock held, and the client is built with
``connect_timeout = stream_timeout = store_timeout`` and no retries (a
re-sent command may already have run).

A supervisor task, in a nursery the store opens on entry, owns the client:
it PINGs at start-up (an authentication error or an endpoint that is not
Redis is a :class:`~funtask.ConfigError`; an unreachable one is an outage),
checks ``maxmemory-policy``, and after any failed call reopens the client
with a backoff of up to 5 s, logging once when the store is lost and once
when it is back. While the store is lost every call fails at once with
:class:`~funtask._stores.base.StoreUnavailable`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import ssl
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack, suppress
from typing import Any, Final
from urllib.parse import quote

import trio

from .._errors import ConfigError
from .._threads import hold_mock_clock
from .._wire import FinishedJob
from . import _redis_lua as lua
from .base import (
    Claim,
    DeliveryOutcome,
    Heartbeat,
    HeldJob,
    InstanceInfo,
    JobState,
    Settled,
    Store,
    StoredJob,
    StoreStatus,
    StoreUnavailable,
    new_webhook_id,
    restore_finished_job,
    worker_lost_result,
)
from .url import StoreURL

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

try:
    import coredis
    import coredis.exceptions
    from coredis.connection import TCPLocation
    from coredis.retry import NoRetryPolicy
except ImportError as error:  # pragma: no cover - the extra is checked by the caller
    raise ImportError(
        "a redis store needs the redis extra: pip install 'funtask[redis]'"
    ) from error

__all__ = ["RedisStore"]

logger: Final = logging.getLogger("funtask.store")

RECONNECT_MIN: Final = 0.1  # seconds, the first reconnection delay
RECONNECT_MAX: Final = 5.0  # seconds, the longest reconnection delay
SWEEP_LIMIT: Final = 100  # expired leases taken per sweep
_STATES: Final = ("running", "delivering", "done")

# name -> (source, SHA1): run with EVALSHA, loaded on NOSCRIPT (a new or restarted Redis).
_SCRIPTS: Final = {
    name: (source, hashlib.sha1(source.encode()).hexdigest())
    for name in (
        "CLAIM",
        "OPS_MANY",
        "RELEASE",
        "SETTLE",
        "DELIVERED",
        "HEARTBEAT",
        "RESTORE",
        "SWEEP",
        "LIVE",
        "READ",
        "READ_CHANGED",
        "TAKE_OVER",
        "STOP",
        "COUNTS",
        "MARK",
    )
    for source in [getattr(lua, name)]
}


class _Batch:
    """Calls of one script gathered in one scheduling tick (see ``RedisStore._batched``)."""

    def __init__(self, calls: list[tuple[str, list[str], list[Any]]]) -> None:
        self.calls = calls  # (kind: 'claim' | 'settle' | 'mark', keys, arguments)
        self.done = trio.Event()
        self.answers: list[Any] = []
        self.error: StoreUnavailable | None = None


class _QuietConnections(logging.Filter):
    """Drop coredis's per-connection failure records: the store logs each loss once."""

    MESSAGES: Final = (
        "Connection attempt failed unexpectedly!",
        "Connection closed unexpectedly!",
    )

    def __init__(self) -> None:
        super().__init__()
        self.users = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the two connection records, True for everything else."""
        return record.msg not in self.MESSAGES


_QUIET: Final = _QuietConnections()


def _quiet_coredis(on: bool) -> None:
    """Install the filter on the ``coredis`` logger while any Redis store is open."""
    _QUIET.users += 1 if on else -1
    coredis_logger = logging.getLogger("coredis")
    if _QUIET.users > 0:
        coredis_logger.addFilter(_QUIET)
    else:
        coredis_logger.removeFilter(_QUIET)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _leaf(error: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _is_outage(error: BaseException) -> bool:
    """Whether ``error`` says Redis did not answer (rather than a bug of ours)."""
    return isinstance(error, (coredis.exceptions.RedisError, OSError))


def _encode(value: Any) -> bytes:
    """Text as Redis stores it: UTF-8, a lone surrogate kept (``surrogatepass``), reversibly."""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")


def _decode(value: Any) -> Any:
    """The inverse of :func:`_encode`, through nested replies (numbers stay numbers)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    if isinstance(value, (list, tuple)):
        return [_decode(item) for item in value]
    return value


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


class RedisStore(Store):
    """Job records in Redis, shared by every replica with the same server name."""

    kind = "redis"
    persistent = True
    pool = True

    def __init__(self, url: StoreURL, **options: Any) -> None:
        super().__init__(url, **options)
        if self.result_ttl is None:
            raise ConfigError(
                self.name,
                ["result_ttl=None (keep results forever) is not available with a redis store"],
            )
        tag = "{funtask:" + quote(self.name, safe="") + "}"
        self._prefix = tag + ":"
        self._leases = tag + ":leases"
        self._instances = tag + ":instances"
        self._version = tag + ":version"
        self._tasks = tag + ":tasks"
        self._ttl_ms = _ms(self.result_ttl)
        self._lease_ms = _ms(self.store_lease)
        self._client: Any = None
        self._available = False
        self._lost = trio.Event()
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        # The records this process holds (claimed or taken over), to write back
        # if Redis loses them (restarted empty).
        self._mine: dict[tuple[str, str], dict[str, str]] = {}
        self._batch: _Batch | None = None  # the claims, settles and marks being gathered
        # (task, jobId) -> job key: claims answered ``claimed`` (so their jobs started)
        # whose records are not yet marked ``launched``; marked with the next batch of
        # claims and settles or the next heartbeat, at once for a job with a callback.
        self._unmarked: dict[tuple[str, str], str] = {}
        # task -> jobId -> (webhook-id, result): the results history() last returned.
        self._history_cache: dict[str, dict[str, tuple[str, FinishedJob]]] = {}

    # -- keys ----------------------------------------------------------------

    @property
    def _member(self) -> str:
        """This process's member of ``T:instances``: ``<token>|<instance>``."""
        return f"{self.token}|{self.instance}"

    def _job_key(self, task: str, job_id: str) -> str:
        return f"{self._prefix}job:{task}:{job_id}"

    def _history_key(self, task: str) -> str:
        return f"{self._prefix}history:{task}"

    def _latest_key(self, job_id: str) -> str:
        return f"{self._prefix}latest:{job_id}"

    def _done_key(self, task: str) -> str:
        return f"{self._prefix}done:{task}"

    def _settle_keys(self, task: str, job_id: str, job_key: str) -> list[str]:
        """The keys a script that settles a job touches (SETTLE, TAKE_OVER), in their order."""
        return [
            job_key,
            self._leases,
            self._version,
            self._latest_key(job_id),
            self._history_key(task),
            self._tasks,
            self._done_key(task),
        ]

    # -- lifecycle -----------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether the last call (or the supervisor's PING) reached Redis."""
        return self._available

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the client until cancelled; for ``await nursery.start(store.serve)``.

        Started once the first PING answered or failed (an unreachable Redis is an
        outage, retried in the background). On cancellation (a clean exit) this
        instance's entry is removed. This is how the server runs the store;
        ``async with store`` (:meth:`open`) runs it in a nursery of its own.

        Raises:
            ConfigError: the endpoint refused our credentials or is not Redis.
        """
        _quiet_coredis(True)
        try:
            await self._supervise(task_status=task_status)
        finally:
            answered, self._available = self._available, False
            if answered:  # cancelled while Redis answered: a clean exit leaves the pool view
                await self._leave()
            _quiet_coredis(False)

    async def open(self) -> None:
        """Start the supervisor; returns once the first PING answered or failed.

        Raises:
            ConfigError: the endpoint refused our credentials or is not Redis.
        """
        stack = AsyncExitStack()
        nursery = await stack.enter_async_context(trio.open_nursery())
        try:
            await nursery.start(self.serve)
        except BaseException:
            nursery.cancel_scope.cancel()
            await stack.aclose()
            raise
        self._stack, self._nursery = stack, nursery

    async def aclose(self) -> None:
        """Remove this instance's entry (bounded, shielded) and close the client."""
        stack, nursery = self._stack, self._nursery
        self._stack = self._nursery = None
        if stack is None or nursery is None:
            return
        nursery.cancel_scope.cancel()  # the supervisor removes the instance entry
        await stack.aclose()

    async def _leave(self) -> None:
        """Remove this instance's entry with a client of its own (shielded, bounded).

        The supervisor's client is torn down with the cancellation that ends it,
        so a short-lived one does this last write; failing it only leaves an
        entry that ages out of the pool view after ``store_lease``.
        """
        with trio.CancelScope(shield=True), hold_mock_clock():
            with trio.move_on_after(self.store_timeout):
                try:
                    async with self._new_client() as client:
                        await client.zrem(_encode(self._instances), [_encode(self._member)])
                except Exception:
                    logger.debug("store %s: could not remove the instance", self.display)

    def _new_client(self) -> Any:
        url = self.url
        try:
            context = url.ssl_context()
        except (OSError, ValueError) as error:
            problem = f"store {url.display}: cannot load its TLS files: {error}"
            raise ConfigError(self.name, [problem]) from None
        options: dict[str, Any] = {
            "username": url.username,
            "password": url.password,
            "stream_timeout": self.store_timeout,
            "connect_timeout": self.store_timeout,
            "decode_responses": False,  # text goes both ways through _encode / _decode
            "retry_policy": NoRetryPolicy(),
        }
        if context is not None:
            options["ssl_context"] = context
        if url.cluster:
            nodes = [TCPLocation(host, port) for host, port in url.hosts]
            return coredis.RedisCluster(startup_nodes=nodes, **options)
        host, port = url.hosts[0]
        return coredis.Redis(host, port, db=url.db, **options)

    async def _supervise(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Own the client: open it, PING until it answers, reopen it after each loss.

        At start-up an authentication error or an endpoint that is not Redis
        is raised (a :class:`ConfigError`) before ``task_status.started()``;
        an unreachable Redis is an outage: started, unavailable, retried.
        """
        started = False
        delay = RECONNECT_MIN
        while True:
            try:
                async with self._new_client() as client:
                    self._client = client
                    while not self._available:
                        try:
                            await self._ping(client, first=not started)
                        except StoreUnavailable:
                            if not started:
                                started = True
                                task_status.started()
                            await trio.sleep(delay)
                            delay = min(delay * 2, RECONNECT_MAX)
                    if not started:
                        started = True
                        task_status.started()
                    delay = RECONNECT_MIN
                    try:
                        await self._lost.wait()
                    finally:
                        self._client = None  # before the client closes: calls in flight see it
            except Exception as error:  # the client's task group wraps what its body raised
                leaf = _leaf(error)
                if isinstance(leaf, ConfigError):
                    if not started:
                        raise leaf from None
                    logger.error("store %s: %s", self.display, leaf)
                # else: RedisCluster cannot be entered while the cluster is down
                self._set_available(False, leaf)
            finally:
                self._client = None
            if not started:
                started = True
                task_status.started()
            await trio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _ping(self, client: Any, *, first: bool = False) -> None:
        """PING (and at start-up check the eviction policy); available again on success.

        Raises:
            StoreUnavailable: no answer.
            ConfigError: at start-up, the endpoint refused us or is not Redis.
        """
        try:
            with self.bounded("ping"):
                await client.ping()
            if first:
                await self._check_policy(client)
        except StoreUnavailable as error:
            self._set_available(False, error)
            raise
        except Exception as error:
            leaf = _leaf(error)
            problem = self._config_problem(leaf)
            if problem is not None and first:
                raise ConfigError(self.name, [problem]) from None
            if client is self._client and not _is_outage(leaf):
                raise
            self._set_available(False, leaf)
            raise StoreUnavailable(self.display, f"ping: {leaf}") from leaf
        if client is self._client:
            self._set_available(True, None)

    def _config_problem(self, error: BaseException) -> str | None:
        """What is wrong with the configuration, if ``error`` says so (else an outage)."""
        exceptions = coredis.exceptions
        if isinstance(error, (exceptions.ProtocolError, exceptions.InvalidResponse)):
            return f"store {self.display} is not a Redis server (RESP3): {error}"
        if isinstance(error, (exceptions.AuthenticationError, exceptions.AuthorizationError)):
            return f"store {self.display}: authentication failed ({error})"
        if isinstance(error, exceptions.UnknownCommandError):
            return f"store {self.display} needs Redis 6.2 or later (RESP3): {error}"
        if isinstance(error, exceptions.ConnectionError):
            cause = error.__cause__
            if isinstance(cause, ssl.SSLCertVerificationError):
                return f"store {self.display}: TLS certificate verification failed ({cause})"
            if cause is None or isinstance(cause, (OSError, trio.TooSlowError, TimeoutError)):
                return None
            if isinstance(cause, exceptions.RedisError) and not isinstance(
                cause, exceptions.ProtocolError
            ):
                return self._config_problem(cause)
            return f"store {self.display} is not a Redis server (RESP3): {cause!r}"
        if isinstance(error, exceptions.ResponseError) and "NOAUTH" in str(error):
            return f"store {self.display}: authentication required ({error})"
        return None

    async def _check_policy(self, client: Any) -> None:
        try:
            with self.bounded("config get"):
                config = await client.config_get(["maxmemory-policy"])
        except (coredis.exceptions.ResponseError, coredis.exceptions.RedisClusterError):
            logger.info(
                "store %s: CONFIG GET is not allowed here; make sure maxmemory-policy is "
                "noeviction",
                self.display,
            )
            return
        policy = None
        if isinstance(config, dict):
            policy = _decode(config.get(b"maxmemory-policy", config.get("maxmemory-policy")))
        if policy is not None and policy != "noeviction":
            logger.warning(
                "store %s has maxmemory-policy %s; funtask needs noeviction "
                "(Redis may otherwise evict job records and leases)",
                self.display,
                policy,
            )

    def _set_available(self, available: bool, error: BaseException | None) -> None:
        """Record whether Redis answers; the runtime logs the loss and the return."""
        if available != self._available:
            logger.debug(
                "store %s %s%s",
                self.display,
                "answers" if available else "lost: ",
                "" if available else (error or "no answer"),
            )
        was, self._available = self._available, available
        if not available:
            self._lost.set()
        elif not was:
            self._lost = trio.Event()  # what the supervisor waits on until the next loss

    async def check(self) -> bool:
        """Whether Redis answers: no I/O while it does, one bounded PING while it did not."""
        if self._available:
            return True
        client = self._client
        if client is None:
            return False
        try:
            await self._ping(client)
        except (StoreUnavailable, ConfigError):
            return False
        return self._available

    # -- calls ---------------------------------------------------------------

    async def _call(self, operation: str, fn: Any, *args: Any) -> Any:
        """Run ``await fn(client, *args)`` bounded; any failure marks the store lost."""
        client = self._client
        if client is None or not self._available:
            raise StoreUnavailable(self.display, "not connected")
        try:
            with self.bounded(operation):
                return await fn(client, *args)
        except StoreUnavailable as error:
            self._set_available(False, error)
            raise
        except Exception as error:
            leaf = _leaf(error)
            if client is self._client and not _is_outage(leaf):
                raise
            self._set_available(False, leaf)
            raise StoreUnavailable(self.display, f"{operation}: {leaf}") from leaf

    async def _script(self, operation: str, name: str, keys: list[str], args: list[Any]) -> Any:
        source, sha = _SCRIPTS[name]
        encoded_keys = [_encode(key) for key in keys]
        encoded_args = [_encode(arg) for arg in args]

        async def run(client: Any) -> Any:
            # EVALSHA directly: coredis's Script wrapper costs ~60 µs of CPU a call.
            try:
                return await client.evalsha(sha, encoded_keys, encoded_args)
            except coredis.exceptions.NoScriptError:  # not run: load it and send again
                await client.script_load(source)
                return await client.evalsha(sha, encoded_keys, encoded_args)

        return _decode(await self._call(operation, run))

    async def _batched(self, kind: str, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run script ``name`` (CLAIM, SETTLE or MARK), sharing one call with those of the
        same tick; ``kind`` is ``claim``, ``settle`` or ``mark``.

        Under load many jobs claim and settle at once; each call to Redis costs the
        process far more than the script does, so the claims and settles a
        scheduling tick brings are sent as one ``OPS_MANY``. The first caller leads:
        it yields (shielded, so the batch always runs), then sends everyone's calls,
        with the marks of the claims answered so far (:attr:`_unmarked`).
        """
        operation = "settle" if kind == "settle" else "claim"
        batch = self._batch
        if batch is not None:  # join the batch the leader is about to send
            index = len(batch.calls)
            batch.calls.append((kind, keys, args))
            await batch.done.wait()
            if batch.error is not None:
                raise StoreUnavailable(self.display, batch.error.reason)
            return batch.answers[index]
        batch = self._batch = _Batch([(kind, keys, args)])
        with trio.CancelScope(shield=True):
            try:
                await trio.lowlevel.checkpoint()
                await trio.lowlevel.checkpoint()
            finally:
                self._batch = None
            # Every job whose claim was answered by now has been launched (the caller
            # launches it before it yields): mark them along.
            marked = dict(self._unmarked)
            if marked:
                marks = ("mark", list(marked.values()), [self.token])
                if batch.calls == [("mark", [], [self.token])]:  # a flush of the marks alone
                    batch.calls[0] = marks
                else:
                    batch.calls.append(marks)
            try:
                if len(batch.calls) == 1:
                    _, keys, args = batch.calls[0]
                    answer = await self._script(operation, name, keys, args) if keys else 1
                    batch.answers = [answer]
                else:
                    flat_keys = [key for _, call_keys, _ in batch.calls for key in call_keys]
                    flat_args: list[Any] = [len(batch.calls)]
                    for kind, call_keys, call_args in batch.calls:
                        flat_args += [kind, len(call_keys), len(call_args), *call_args]
                    batch.answers = await self._script(operation, "OPS_MANY", flat_keys, flat_args)
            except StoreUnavailable as error:
                batch.error = error
                raise
            finally:
                batch.done.set()
            for key in marked:
                self._unmarked.pop(key, None)
        return batch.answers[0]

    def _record(self, fields: dict[str, str]) -> StoredJob | None:
        state = fields.get("state")
        if state not in _STATES:
            return None
        task, job_id = fields.get("task", ""), fields.get("job", "")
        finished = float(fields.get("finished") or 0) / 1000
        result: FinishedJob | None = None
        body = fields.get("body")
        if state != "running" and body:
            result = restore_finished_job(task, job_id, body.encode(), finished)
        delivery = fields.get("delivery") or None
        return StoredJob(
            task=task,
            job_id=job_id,
            state=state,  # type: ignore[arg-type]
            token=fields.get("token", ""),
            instance=fields.get("instance", ""),
            started=float(fields.get("started") or fields.get("finished") or 0) / 1000,
            renewed=float(fields.get("renewed") or fields.get("started") or 0) / 1000,
            callback_url=fields.get("cb") or None,
            last_step=fields.get("step", ""),
            stop=fields.get("stop") == "1",
            trace=fields.get("trace") or None,
            webhook_id=fields.get("whid") or None,
            result=result,
            delivery=delivery,  # type: ignore[arg-type]
            attempts=int(fields.get("attempts") or 0),
        )

    async def _read(self, operation: str, keys: list[str]) -> list[StoredJob | None]:
        if not keys:
            return []
        rows = await self._script(operation, "READ", keys, [])
        return [self._record(_pairs(row)) for row in rows]

    # -- one job -------------------------------------------------------------

    async def claim(
        self, task: str, job_id: str, *, callback_url: str | None, trace: str | None = None
    ) -> Claim:
        """Create the ``running`` record and its lease in one script (see :class:`Store`)."""
        key = self._job_key(task, job_id)
        answer = await self._batched(
            "claim",
            "CLAIM",
            [key, self._leases, self._version],
            [
                self.token,
                self.instance,
                f"{task}:{job_id}",
                self._lease_ms,
                task,
                job_id,
                callback_url or "",
                trace or "",
            ],
        )
        if answer[0] == "claimed":
            now = str(answer[1])
            fields = {
                "task": task,
                "job": job_id,
                "state": "running",
                "token": self.token,
                "instance": self.instance,
                "started": now,
                "renewed": now,
                "cb": callback_url or "",
                "trace": trace or "",
                "launched": "1",  # as written back if Redis loses it: the job runs
            }
            self._mine[(task, job_id)] = fields
            # The claim was answered, so the caller launches the job: mark its record
            # launched (a record left unmarked is a claim whose answer was lost, deleted
            # by the sweeper rather than settled as worker_lost). A job with a callback
            # is marked before its 202; otherwise with the next batch or heartbeat.
            self._unmarked[(task, job_id)] = key
            if callback_url is not None:
                with suppress(StoreUnavailable):  # else the next batch or heartbeat marks it
                    await self._batched("mark", "MARK", [], [self.token])
            job = self._record(fields)
            assert job is not None
            return Claim("claimed", job)
        found = self._record(_pairs(answer[2:]))
        assert found is not None
        return Claim("running" if found.state == "running" else "stored", found)

    async def release(self, task: str, job_id: str) -> None:
        """Delete this token's claim of a job that never started."""
        await self._script(
            "claim",
            "RELEASE",
            [self._job_key(task, job_id), self._leases, self._version],
            [self.token, f"{task}:{job_id}"],
        )
        self._mine.pop((task, job_id), None)
        self._unmarked.pop((task, job_id), None)

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
        """Store ``result`` by compare-and-set on the owner token (see :class:`Store`)."""
        body = result.body
        state: JobState = "delivering" if delivering else "done"
        mine = self._mine.get((task, job_id), {})
        self._unmarked.pop((task, job_id), None)  # a settled job needs no mark
        answer = await self._batched(
            "settle",
            "SETTLE",
            self._settle_keys(task, job_id, self._job_key(task, job_id)),
            [
                token or self.token,
                self.instance,
                f"{task}:{job_id}",
                state,
                body,
                webhook_id,
                f"{result.finished_at * 1000:.3f}",  # ms, to the microsecond
                self._ttl_ms,
                max(1, self.history_limit(task)),
                task,
                job_id,
                self._lease_ms,
                mine.get("cb", ""),
                "none",
                0,
            ],
        )
        if answer[0] == "ok":
            fields = dict(mine)
            fields.update(
                task=task,
                job=job_id,
                state=state,
                token=token or self.token,
                instance=self.instance,
                body=body.decode(),
                whid=webhook_id,
                finished=f"{result.finished_at * 1000:.3f}",
            )
            fields.setdefault("started", str(answer[1]))
            if delivering:
                self._mine[(task, job_id)] = fields
            else:
                self._mine.pop((task, job_id), None)
            stored = self._record({**fields, "body": ""})  # the result is ``result``
            assert stored is not None
            return Settled("ok", dataclasses.replace(stored, result=result))
        self._mine.pop((task, job_id), None)
        return Settled("superseded", self._record(_pairs(answer[2:])))

    async def delivered(
        self, task: str, job_id: str, *, outcome: DeliveryOutcome, attempts: int
    ) -> None:
        """Mark this token's ``delivering`` record ``done``, starting its ``result_ttl``."""
        await self._script(
            "settle",
            "DELIVERED",
            [self._job_key(task, job_id), self._leases, self._version],
            [self.token, f"{task}:{job_id}", outcome, attempts, self._ttl_ms],
        )
        self._mine.pop((task, job_id), None)

    async def find(self, task: str, job_id: str) -> StoredJob | None:
        """The record of (task, job_id), or None (one read)."""
        (job,) = await self._read("lookup", [self._job_key(task, job_id)])
        return job

    async def lookup(self, job_id: str) -> StoredJob | None:
        """The newest finished record with ``job_id`` (via ``T:latest:<jobId>``)."""

        async def get(client: Any) -> Any:
            return await client.get(_encode(self._latest_key(job_id)))

        latest = _decode(await self._call("lookup", get))
        if latest is None:
            return None
        _, _, task = latest.partition("|")  # <finished ms>|<task>
        job = await self.find(task, job_id)
        return job if job is not None and job.finished else None

    async def history(self, task: str, limit: int) -> list[FinishedJob]:
        """Up to ``limit`` of the task's newest results (``T:history:<task>``)."""
        if limit <= 0:
            return []

        async def lrange(client: Any) -> Any:
            return await client.lrange(_encode(self._history_key(task)), 0, limit - 1)

        job_ids = [str(j) for j in _decode(await self._call("history", lrange))]
        if not job_ids:
            self._history_cache.pop(task, None)
            return []
        # Results already seen are not sent (nor parsed) again: the heartbeat refreshes
        # every task's history whenever the pool's version moves.
        known = self._history_cache.get(task, {})
        rows = await self._script(
            "history",
            "READ_CHANGED",
            [self._job_key(task, job_id) for job_id in job_ids],
            [known[job_id][0] if job_id in known else "" for job_id in job_ids],
        )
        fresh: dict[str, tuple[str, FinishedJob]] = {}
        for job_id, row in zip(job_ids, rows, strict=True):
            if row == ["="]:
                fresh[job_id] = known[job_id]
                continue
            job = self._record(_pairs(row))
            if job is not None and job.result is not None:
                fresh[job_id] = (job.webhook_id or "", job.result)
        self._history_cache[task] = fresh
        return [fresh[job_id][1] for job_id in job_ids if job_id in fresh]

    async def request_stop(self, task: str, job_id: str | None) -> list[StoredJob]:
        """Set a stop flag that the owner reads at its next heartbeat (see :class:`Store`)."""
        if job_id is None:
            live = await self._live_jobs("stop")
            mine = [job for job in live if job.task == task]
            if len(mine) != 1:
                return mine
            job_id = mine[0].job_id
        answer = await self._script(
            "stop", "STOP", [self._job_key(task, job_id), self._version], []
        )
        job = self._record(_pairs(answer)) if answer else None
        return [job] if job is not None else []

    # -- this process --------------------------------------------------------

    async def heartbeat(self, jobs: Sequence[HeldJob]) -> Heartbeat:
        """Renew leases, stamp steps, record this instance; write back lost records."""
        keys = [self._instances, self._leases, self._version]
        args: list[Any] = [self._member, self._lease_ms, self.token]
        marked = []
        for held in jobs:
            key = (held.task, held.job_id)
            keys.append(self._job_key(held.task, held.job_id))
            mark = key in self._unmarked
            if mark:
                marked.append(key)
            args += [f"{held.task}:{held.job_id}", held.last_step, "1" if mark else "0"]
        answer = await self._script("heartbeat", "HEARTBEAT", keys, args)
        for key in marked:
            self._unmarked.pop(key, None)
        stop: set[tuple[str, str]] = set()
        lost: set[tuple[str, str]] = set()
        for held, status in zip(jobs, answer[2:], strict=False):
            key = (held.task, held.job_id)
            if status == "stop":
                stop.add(key)
            elif status == "lost":
                lost.add(key)
                self._mine.pop(key, None)
                self._unmarked.pop(key, None)
            elif status == "missing" and not await self._restore(held):
                lost.add(key)
        return Heartbeat(version=int(answer[0]), stop=frozenset(stop), lost=frozenset(lost))

    async def _restore(self, held: HeldJob) -> bool:
        """Write back a held record Redis lost (restarted empty); False if unknown."""
        fields = self._mine.get((held.task, held.job_id))
        if fields is None:
            return False
        if held.last_step:
            fields["step"] = held.last_step
        flat: list[str] = []
        for name, value in fields.items():
            flat += [name, value]
        await self._script(
            "heartbeat",
            "RESTORE",
            [
                self._job_key(held.task, held.job_id),
                self._leases,
                self._version,
                self._latest_key(held.job_id),
                self._history_key(held.task),
                self._done_key(held.task),
                self._tasks,
            ],
            [
                f"{held.task}:{held.job_id}",
                self._lease_ms,
                self._ttl_ms,
                max(1, self.history_limit(held.task)),
                held.task,
                held.job_id,
                *flat,
            ],
        )
        logger.warning(
            "[%s %s] store %s had lost the job's record; written back",
            held.task,
            held.job_id,
            self.display,
            extra={"task": held.task, "jobId": held.job_id, "instance": self.instance},
        )
        return True

    async def recover(self) -> list[StoredJob]:
        """The sweeper: take over up to 100 jobs whose lease expired (see :class:`Store`)."""
        answer = await self._script("sweep", "SWEEP", [self._leases], [SWEEP_LIMIT])
        now = int(answer[0]) / 1000
        members = [str(m) for m in answer[1:]]
        keys = [self._prefix + "job:" + member for member in members]
        taken: list[StoredJob] = []
        for member, key, job in zip(members, keys, await self._read("sweep", keys), strict=True):
            task, _, job_id = member.partition(":")
            body = b""
            if job is not None and job.state == "running":
                body = worker_lost_result(job, now).body
            answer = await self._script(
                "sweep",
                "TAKE_OVER",
                self._settle_keys(task, job_id, key),
                [
                    job.token if job is not None else "",
                    self.token,
                    self.instance,
                    member,
                    self._lease_ms,
                    body,
                    new_webhook_id(),
                    self._ttl_ms,
                    max(1, self.history_limit(task)),
                    task,
                    job_id,
                ],
            )
            if answer[0] == "released":
                logger.info(
                    "[%s %s] deleted a claim of %s that never started (lease expired)",
                    task,
                    job_id,
                    job.instance if job is not None else "?",
                    extra={"task": task, "jobId": job_id, "instance": self.instance},
                )
                continue
            if answer[0] != "taken":
                continue
            fields = _pairs(answer[2:])
            recovered = self._record(fields)
            if recovered is None:
                continue
            if recovered.state == "delivering":
                self._mine[(task, job_id)] = fields
            left = job.state if job is not None else recovered.state
            taken.append(dataclasses.replace(recovered, recovered_from=left))
            logger.warning(
                "[%s %s] recovered a %s job of %s (lease expired)",
                task,
                job_id,
                job.state if job is not None else "lost",
                job.instance if job is not None else "?",
                extra={"task": task, "jobId": job_id, "instance": self.instance},
            )
        return taken

    async def purge(self) -> int:
        """Nothing to do: Redis expires finished records by itself (``result_ttl``)."""
        return 0

    async def _live(self, operation: str) -> tuple[float, list[str], list[InstanceInfo]]:
        answer = await self._script(
            operation, "LIVE", [self._leases, self._instances], [self._lease_ms]
        )
        now = int(answer[0]) / 1000
        leases = [str(m) for m in answer[1][0::2]]
        instances = []
        for member, score in zip(answer[2][0::2], answer[2][1::2], strict=True):
            _, _, name = str(member).partition("|")
            instances.append(InstanceInfo(instance=name, last_seen=float(score) / 1000))
        return now, leases, instances

    async def _live_jobs(self, operation: str) -> list[StoredJob]:
        _, leases, _ = await self._live(operation)
        jobs = await self._read(operation, [self._prefix + "job:" + m for m in leases])
        return [job for job in jobs if job is not None and job.state != "done"]

    async def status(self) -> StoreStatus:
        """The pool: instances seen within ``store_lease``, jobs with a live lease and the
        results stored per task (one ``ZCOUNT`` of ``T:done:<task>`` each)."""
        _, leases, instances = await self._live("status")
        jobs = await self._read("status", [self._prefix + "job:" + m for m in leases])
        running = tuple(job for job in jobs if job is not None and job.state != "done")

        async def smembers(client: Any) -> Any:
            return await client.smembers(_encode(self._tasks))

        tasks = sorted(_decode(list(await self._call("status", smembers))))
        keys = [self._done_key(task) for task in tasks]
        # Every result stored (until its result_ttl), not just the history's.
        counts = await self._script("status", "COUNTS", keys, []) if keys else []
        results = {task: int(n) for task, n in zip(tasks, counts, strict=True) if n}
        return StoreStatus(
            store=self.display, instances=tuple(instances), running=running, results=results
        )
