"""The SQLite store: one process whose results and unfinished work survive restarts.

Standard :mod:`sqlite3`, WAL, ``synchronous=NORMAL`` (a committed
transaction survives ``kill -9``; only an OS crash can lose the tail).
Writes run inline on the Trio thread, each one transaction (tens of
microseconds): ``BEGIN IMMEDIATE … COMMIT``, or for the hot path's
single-statement claim and settle an implicit one; the WAL is checkpointed PASSIVE by
:meth:`SQLiteStore.checkpoint` in a worker thread on a connection of its
own (``wal_autocheckpoint=0``). One process owns the file (see
:mod:`funtask._stores.lock`), so there are no leases: whatever is not
``done`` at start-up belonged to a process that is gone, and
:meth:`SQLiteStore.recover` settles it.

Keys (task, jobId) are stored as UTF-8 BLOBs with lone surrogates passed
through, so every jobId the API accepts is its own key; other text is
stored as funtask's JSON writes it (a lone surrogate becomes ``\\udXXX``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import replace
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote

import trio
import trio.testing

from .._threads import hold_mock_clock, run_in_thread
from .._wire import FinishedJob
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

__all__ = ["CHECKPOINT_INTERVAL", "PURGE_INTERVAL", "SQLiteStore", "read_status"]

logger: Final = logging.getLogger("funtask.store")

CHECKPOINT_INTERVAL: Final = 10.0  # seconds between PASSIVE WAL checkpoints
PURGE_INTERVAL: Final = 60.0  # seconds between purges of expired results
_BUSY_TIMEOUT_MS: Final = 200  # the checkpointer or a CLI reader may hold a lock briefly
_FILE_MODE: Final = 0o600
# A leaf holds about ten finished jobs. 1 KiB pages (less WAL per commit) split
# on almost every settle, cost twice the page writes and miss the page cache:
# about 30 % more time per job (bench/RESULTS.md 1c).
_PAGE_SIZE: Final = 4096  # bytes

# The primary key leads with job_id: ``/result`` looks a jobId up across tasks on
# the table itself, and a claim writes one b-tree page. Only finished results
# are indexed by time (history, purge), so a claim touches no index at all.
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id BLOB NOT NULL,
    task BLOB NOT NULL,
    state TEXT NOT NULL,
    token TEXT NOT NULL,
    instance TEXT NOT NULL,
    started REAL NOT NULL,
    renewed REAL NOT NULL,
    finished REAL,
    callback_url TEXT,
    last_step TEXT NOT NULL DEFAULT '',
    stop INTEGER NOT NULL DEFAULT 0,
    trace TEXT,
    webhook_id TEXT,
    body BLOB,
    delivery TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, task)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_by_finished ON jobs (finished) WHERE finished IS NOT NULL;
CREATE TABLE IF NOT EXISTS instances (
    token TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    pid INTEGER,
    last_seen REAL NOT NULL
);
"""

_COLUMNS: Final = (
    "task, job_id, state, token, instance, started, renewed, finished, callback_url, "
    "last_step, stop, trace, webhook_id, body, delivery, attempts"
)


_INSERT: Final = (
    "INSERT INTO jobs (task, job_id, state, token, instance, started, renewed, "
    "callback_url, trace) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (job_id, task) DO NOTHING"
)


# Settles a running record held by the token; an empty answer means it is not.
_SETTLE: Final = (
    "UPDATE jobs SET state = ?, instance = ?, finished = ?, body = ?, "
    "webhook_id = ?, delivery = ?, last_step = CASE WHEN ? THEN ? "
    "ELSE last_step END WHERE task = ? AND job_id = ? AND token = ? "
    "AND state = 'running' "
    "RETURNING started, renewed, callback_url, last_step, stop, trace"
)


def _key(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _unkey(blob: bytes) -> str:
    return bytes(blob).decode("utf-8", "surrogatepass")


def _text(text: str) -> str:
    """``text`` as funtask's JSON writes it: a lone surrogate becomes its escape."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _job(row: Sequence[Any]) -> StoredJob:
    (
        task,
        job_id,
        state,
        token,
        instance,
        started,
        renewed,
        finished,
        callback_url,
        last_step,
        stop,
        trace,
        webhook_id,
        body,
        delivery,
        attempts,
    ) = row
    task_name, job = _unkey(task), _unkey(job_id)
    result = None
    if body is not None and finished is not None:
        result = restore_finished_job(task_name, job, bytes(body), finished)
    return StoredJob(
        task_name,
        job,
        state,
        token,
        instance,
        started,
        renewed,
        callback_url=callback_url,
        last_step=last_step,
        stop=bool(stop),
        trace=trace,
        webhook_id=webhook_id,
        result=result,
        delivery=delivery,
        attempts=attempts,
    )


def create_database_file(path: str) -> None:
    """Create ``path`` with mode 0600 if it does not exist (before SQLite opens it)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def connect(path: str, *, create: bool) -> sqlite3.Connection:
    """A connection in autocommit mode with funtask's pragmas (WAL, synchronous=NORMAL)."""
    if create:
        create_database_file(path)
    uri = f"file:{quote(path)}?mode={'rw' if create else 'ro'}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    if create:
        conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")  # only for a new file
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    return conn


class SQLiteStore(Store):
    """Job records in one SQLite file owned by this process."""

    kind = "sqlite"
    persistent = True

    def __init__(self, url: StoreURL, **options: Any) -> None:
        super().__init__(url, **options)
        assert url.path is not None
        self.path = url.path
        self._instance_text = _text(self.instance)  # as written on every claim and settle
        self._conn: sqlite3.Connection | None = None
        self._version = 0

    # -- lifecycle -----------------------------------------------------------

    async def open(self) -> None:
        with self.bounded("open"):
            try:
                conn = connect(self.path, create=True)
                conn.executescript(_SCHEMA)
            except (sqlite3.Error, OSError) as exc:
                raise StoreUnavailable(self.display, str(exc)) from exc
            self._conn = conn

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("DELETE FROM instances WHERE token = ?", (self.token,))
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            logger.warning("sqlite store %s: could not close cleanly", self.path, exc_info=True)
        finally:
            conn.close()

    async def check(self) -> bool:
        conn = self._conn
        if conn is None:
            return False
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("COMMIT")
        except sqlite3.Error:
            return False
        return True

    async def reopen(self) -> None:
        """Close the connection and open a new one (after an outage)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        await self.open()

    def _transaction(self, what: str) -> _Transaction:
        """One ``BEGIN IMMEDIATE … COMMIT``; any SQLite error is an outage."""
        conn = self._conn
        if conn is None:
            raise StoreUnavailable(self.display, "the store is not open")
        return _Transaction(self, conn, what)

    def _read(self, what: str, sql: str, args: Sequence[Any]) -> list[Any]:
        """The rows of one query (any SQLite error is an outage)."""
        return self._statement(what, sql, args)[1]

    def _statement(self, what: str, sql: str, args: Sequence[Any]) -> tuple[int, list[Any]]:
        """One statement as a transaction of its own (autocommit): its rowcount and rows.

        For queries, and for the hot path's single-statement writes. This process is the file's
        only writer (rule 11), so an implicit transaction is exactly as safe as
        ``BEGIN IMMEDIATE`` here, at two statements less: the read snapshot it
        starts from cannot go stale before it takes the write lock. The
        statement is stepped to its end (``fetchall``), which is when it commits.
        """
        conn = self._conn
        if conn is None:
            raise StoreUnavailable(self.display, "the store is not open")
        with _clock_held():
            try:
                cursor = conn.execute(sql, args)
                rows = cursor.fetchall()
            except (sqlite3.Error, OSError) as exc:
                with suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                raise StoreUnavailable(self.display, f"{what}: {exc}") from exc
        return cursor.rowcount, rows

    def _expired_before(self, now: float) -> float:
        return -1.0 if self.result_ttl is None else now - self.result_ttl

    # -- one job -------------------------------------------------------------

    async def claim(
        self, task: str, job_id: str, *, callback_url: str | None, trace: str | None = None
    ) -> Claim:
        key = (_key(task), _key(job_id))
        now = time.time()
        # The common case in one statement: no record yet.
        inserted, _ = self._statement(
            "claim",
            _INSERT,
            (*key, self.token, self._instance_text, now, now, callback_url, trace),
        )
        if inserted == 0:  # a record exists: report it, unless it has expired
            with self._transaction("claim") as conn:
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE task = ? AND job_id = ?", key
                ).fetchone()
                if row is not None:
                    job = _job(row)
                    expired = (
                        job.state == "done"
                        and job.result is not None
                        and job.result.finished_at < self._expired_before(now)
                    )
                    if not expired:
                        if job.finished:
                            return Claim("stored", job)
                        return Claim("claimed" if job.token == self.token else "running", job)
                    conn.execute("DELETE FROM jobs WHERE task = ? AND job_id = ?", key)
                conn.execute(
                    _INSERT,
                    (*key, self.token, self._instance_text, now, now, callback_url, trace),
                )
        self._version += 1
        return Claim(
            "claimed",
            StoredJob(
                task,
                job_id,
                "running",
                self.token,
                self.instance,
                now,
                now,
                callback_url=callback_url,
                trace=trace,
            ),
        )

    async def release(self, task: str, job_id: str) -> None:
        with self._transaction("release") as conn:
            conn.execute(
                "DELETE FROM jobs WHERE task = ? AND job_id = ? AND token = ? "
                "AND state = 'running'",
                (_key(task), _key(job_id), self.token),
            )

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
        token = self.token if token is None else token
        key = (_key(task), _key(job_id))
        state: JobState = "delivering" if delivering else "done"
        delivery: DeliveryOutcome | None = None if delivering else "none"
        update = (
            state,
            self._instance_text,
            result.finished_at,
            result.body,
            webhook_id,
            delivery,
            bool(result.result.last_step),
            _text(result.result.last_step),
            *key,
            token,
        )
        if token == self.token:
            # The common case in one statement: the record is ours and running.
            _, rows = self._statement("settle", _SETTLE, update)
            if not rows:
                with self._transaction("settle") as conn:
                    return self._settle_taken(conn, key, result, token)
        else:  # a result offered for an earlier token: it becomes ours with it
            with self._transaction("settle") as conn:
                rows = conn.execute(_SETTLE, update).fetchall()
                if not rows:
                    return self._settle_taken(conn, key, result, token)
                conn.execute(
                    "UPDATE jobs SET token = ? WHERE task = ? AND job_id = ?", (self.token, *key)
                )
        row = rows[0]
        self._version += 1
        started, renewed, callback_url, last_step, stop, trace = row
        return Settled(
            "ok",
            StoredJob(
                task,
                job_id,
                state,
                self.token,
                self.instance,
                started,
                renewed,
                callback_url=callback_url,
                last_step=last_step,
                stop=bool(stop),
                trace=trace,
                webhook_id=webhook_id,
                result=result,
                delivery=delivery,
            ),
        )

    @staticmethod
    def _settle_taken(
        conn: sqlite3.Connection, key: tuple[bytes, bytes], result: FinishedJob, token: str
    ) -> Settled:
        """Settle's answer when the record is not ``running`` under ``token`` (rare)."""
        found = conn.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE task = ? AND job_id = ?", key
        ).fetchone()
        if found is None:
            return Settled("superseded", None)
        current = _job(found)
        same = current.result is not None and current.result.body == result.body
        if current.token == token and current.state != "running" and same:
            return Settled("ok", current)  # applied before (an answer that was lost)
        return Settled("superseded", current)

    async def delivered(
        self, task: str, job_id: str, *, outcome: DeliveryOutcome, attempts: int
    ) -> None:
        with self._transaction("delivered") as conn:
            conn.execute(
                "UPDATE jobs SET state = 'done', delivery = ?, attempts = ? "
                "WHERE task = ? AND job_id = ? AND token = ? AND state = 'delivering'",
                (outcome, attempts, _key(task), _key(job_id), self.token),
            )
        self._version += 1

    async def find(self, task: str, job_id: str) -> StoredJob | None:
        rows = self._read(
            "find",
            f"SELECT {_COLUMNS} FROM jobs WHERE task = ? AND job_id = ?",
            (_key(task), _key(job_id)),
        )
        return _job(rows[0]) if rows else None

    async def lookup(self, job_id: str) -> StoredJob | None:
        rows = self._read(
            "lookup",
            f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ? AND state != 'running' "
            "AND finished >= ? ORDER BY finished DESC LIMIT 1",
            (_key(job_id), self._expired_before(time.time())),
        )
        return _job(rows[0]) if rows else None

    async def history(self, task: str, limit: int) -> list[FinishedJob]:
        rows = self._read(
            "history",
            f"SELECT {_COLUMNS} FROM jobs WHERE task = ? AND state != 'running' "
            "AND finished >= ? ORDER BY finished DESC LIMIT ?",
            (_key(task), self._expired_before(time.time()), limit),
        )
        return [job.result for job in map(_job, rows) if job.result is not None]

    async def request_stop(self, task: str, job_id: str | None) -> list[StoredJob]:
        with self._transaction("request_stop") as conn:
            if job_id is not None:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE task = ? AND job_id = ? "
                    "AND state != 'done'",
                    (_key(task), _key(job_id)),
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE task = ? AND state != 'done'",
                    (_key(task),),
                ).fetchall()
            jobs = [_job(row) for row in rows]
            if len(jobs) != 1:
                return jobs
            conn.execute(
                "UPDATE jobs SET stop = 1 WHERE task = ? AND job_id = ?",
                (_key(task), _key(jobs[0].job_id)),
            )
        self._version += 1
        return [replace(jobs[0], stop=True)]

    # -- this process --------------------------------------------------------

    async def heartbeat(self, jobs: Sequence[HeldJob]) -> Heartbeat:
        stop: set[tuple[str, str]] = set()
        lost: set[tuple[str, str]] = set()
        with self._transaction("heartbeat") as conn:
            now = time.time()
            for held in jobs:
                key = (_key(held.task), _key(held.job_id))
                cursor = conn.execute(
                    "UPDATE jobs SET renewed = ?, last_step = ? "
                    "WHERE task = ? AND job_id = ? AND token = ? AND state != 'done'",
                    (now, _text(held.last_step), *key, self.token),
                )
                if cursor.rowcount == 0:
                    lost.add((held.task, held.job_id))
                    continue
                flag = conn.execute(
                    "SELECT stop FROM jobs WHERE task = ? AND job_id = ?", key
                ).fetchone()
                if flag is not None and flag[0]:
                    stop.add((held.task, held.job_id))
            conn.execute(
                "INSERT INTO instances (token, instance, pid, last_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (token) DO UPDATE SET last_seen = excluded.last_seen",
                (self.token, self._instance_text, os.getpid(), now),
            )
        return Heartbeat(self._version, frozenset(stop), frozenset(lost))

    async def recover(self) -> list[StoredJob]:
        recovered: list[StoredJob] = []
        with self._transaction("recover") as conn:
            now = time.time()
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE state != 'done' AND token != ?",
                (self.token,),
            ).fetchall()
            for job in map(_job, rows):
                key = (_key(job.task), _key(job.job_id))
                if job.state == "running":
                    result = worker_lost_result(job, now)
                    delivering = job.callback_url is not None
                    webhook_id = new_webhook_id()
                    delivery: DeliveryOutcome | None = None if delivering else "unsent"
                    state: JobState = "delivering" if delivering else "done"
                    conn.execute(
                        "UPDATE jobs SET state = ?, token = ?, instance = ?, finished = ?, "
                        "body = ?, webhook_id = ?, delivery = ? WHERE task = ? AND job_id = ?",
                        (
                            state,
                            self.token,
                            self._instance_text,
                            now,
                            result.body,
                            webhook_id,
                            delivery,
                            *key,
                        ),
                    )
                    recovered.append(
                        replace(
                            job,
                            state=state,
                            token=self.token,
                            instance=self.instance,
                            webhook_id=webhook_id,
                            result=result,
                            delivery=delivery,
                            recovered_from="running",
                        )
                    )
                else:
                    webhook_id = job.webhook_id or new_webhook_id()
                    conn.execute(
                        "UPDATE jobs SET token = ?, instance = ?, webhook_id = ? "
                        "WHERE task = ? AND job_id = ?",
                        (self.token, self._instance_text, webhook_id, *key),
                    )
                    recovered.append(
                        replace(
                            job,
                            token=self.token,
                            instance=self.instance,
                            webhook_id=webhook_id,
                            recovered_from=job.state,
                        )
                    )
            conn.execute("DELETE FROM instances WHERE token != ?", (self.token,))
        if recovered:
            self._version += 1
        return recovered

    async def purge(self) -> int:
        if self.result_ttl is None:
            return 0
        with self._transaction("purge") as conn:
            cursor = conn.execute(
                "DELETE FROM jobs WHERE state = 'done' AND finished < ?",
                (self._expired_before(time.time()),),
            )
            return cursor.rowcount

    async def status(self) -> StoreStatus:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable(self.display, "the store is not open")
        with self.bounded("status"):
            try:
                return read_status(conn, self.display, self._expired_before(time.time()))
            except sqlite3.Error as exc:
                raise StoreUnavailable(self.display, f"status: {exc}") from exc

    async def checkpoint(self) -> None:
        """A PASSIVE WAL checkpoint in a worker thread, on a connection of its own."""
        await run_in_thread(_checkpoint, self.path)


def _clock_held() -> AbstractContextManager[None]:
    """``hold_mock_clock()`` under a mock clock, else nothing (the hot path stays cheap).

    SQLite calls run inline on the Trio thread and never yield, so virtual time
    cannot move during one anyway, and no Trio deadline could interrupt one:
    each is bounded by SQLite's ``busy_timeout`` instead of ``store_timeout``.
    """
    if isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        return hold_mock_clock()
    return nullcontext()


class _Transaction:
    """``with store._transaction(what) as conn``: BEGIN IMMEDIATE … COMMIT (or ROLLBACK)."""

    __slots__ = ("conn", "held", "store", "what")

    def __init__(self, store: SQLiteStore, conn: sqlite3.Connection, what: str) -> None:
        self.store = store
        self.conn = conn
        self.what = what
        self.held = _clock_held()

    def __enter__(self) -> sqlite3.Connection:
        self.held.__enter__()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except (sqlite3.Error, OSError) as exc:
            self.held.__exit__(None, None, None)
            raise StoreUnavailable(self.store.display, f"{self.what}: {exc}") from exc
        return self.conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self.conn
        try:
            if exc_type is None:
                try:
                    conn.execute("COMMIT")
                    return
                except (sqlite3.Error, OSError) as error:
                    exc = error
            with suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise StoreUnavailable(self.store.display, f"{self.what}: {exc}") from exc
        finally:
            self.held.__exit__(None, None, None)


def _checkpoint(path: str) -> None:
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error:
        logger.warning("sqlite store %s: cannot open for a checkpoint", path, exc_info=True)
        return
    try:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.Error:
        logger.warning("sqlite store %s: checkpoint failed", path, exc_info=True)
    finally:
        conn.close()


def read_status(conn: sqlite3.Connection, display: str, expired_before: float) -> StoreStatus:
    """What ``store status`` shows, read on ``conn`` (read-only use)."""
    instances = tuple(
        InstanceInfo(instance, last_seen, pid)
        for instance, pid, last_seen in conn.execute(
            "SELECT instance, pid, last_seen FROM instances ORDER BY last_seen DESC"
        )
    )
    running = tuple(
        _job(row)
        for row in conn.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE state != 'done' ORDER BY started"
        ).fetchall()
    )
    results = {
        _unkey(task): count
        for task, count in conn.execute(
            "SELECT task, COUNT(*) FROM jobs WHERE state != 'running' AND finished >= ? "
            "GROUP BY task ORDER BY task",
            (expired_before,),
        )
    }
    return StoreStatus(display, instances, running, results)
