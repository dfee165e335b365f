"""``python -m funtask store status``: what a store holds, for people."""

from __future__ import annotations

import os
import sqlite3
import time

import trio

from .._duration import format_duration_seconds
from .._wire import rfc3339
from .base import StoreStatus, StoreUnavailable
from .url import StoreURL

__all__ = ["format_status", "read_store_status"]


def read_store_status(url: StoreURL, *, name: str | None) -> StoreStatus:
    """Read ``url``'s status without taking it over.

    An SQLite file is read on a read-only connection (its server may be
    running); a Redis pool needs the server ``name``.

    Raises:
        ValueError: nothing can be read (no such file, the memory store,
            no name for Redis, the store unavailable); the message says why.
    """
    if url.kind == "memory":
        raise ValueError("the memory store keeps nothing outside its server's process")
    if url.kind == "sqlite":
        assert url.path is not None
        if not os.path.isfile(url.path):
            raise ValueError(f"sqlite store {url.path} does not exist")
        from .sqlite import connect, read_status

        try:
            conn = connect(url.path, create=False)
            try:
                return read_status(conn, url.display, -1.0)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise ValueError(f"sqlite store {url.path}: {exc}") from None
    if not name:
        raise ValueError("--name NAME required: a Redis pool is the server name plus the store")
    from . import create_store

    store = create_store(url, name=name, instance="funtask-cli", result_history=1)

    async def read() -> StoreStatus:
        async with store:
            return await store.status()

    try:
        return trio.run(read)
    except StoreUnavailable as exc:
        raise ValueError(str(exc)) from None


def format_status(status: StoreStatus) -> str:
    """A plain-text report of ``status``."""
    now = time.time()
    lines = [f"store {status.store}", f"{len(status.instances)} instance(s)"]
    for info in status.instances:
        pid = "" if info.pid is None else f"\tpid {info.pid}"
        lines.append(f"  {info.instance}{pid}\tlast seen {rfc3339(info.last_seen)}")
    lines.append(f"{len(status.running)} running job(s)")
    for job in status.running:
        running = format_duration_seconds(max(0.0, now - job.started))
        step = f"\tstep {job.last_step!r}" if job.last_step else ""
        lines.append(
            f"  {job.task}\tjobId={job.job_id!r}\t{job.state}\t{running}\t{job.instance}{step}"
        )
    total = sum(status.results.values())
    lines.append(f"{total} stored result(s)")
    for task, count in sorted(status.results.items()):
        lines.append(f"  {task}\t{count}")
    return "\n".join(lines)
