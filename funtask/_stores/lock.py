"""One process per SQLite file: an exclusive ``flock`` on ``<path>.lock`` (SPEC 5, rule 11).

The lock file holds the owner's instance name and pid, so that a second
process can say who has the database. The lock goes with the process: a
``kill -9`` releases it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Final

__all__ = ["StoreLock", "lock_problem"]

_LOCK_MODE: Final = 0o600


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    except OSError:
        text = ""
    instance, _, pid = text.strip().partition("\n")
    if not instance:
        return "another process"
    return f"{instance} (pid {pid.strip() or '?'})"


def _in_use(path: str, fd: int) -> str:
    return f"sqlite store {path} is in use by {_holder(fd)}"


class StoreLock:
    """The held lock on ``<path>.lock``; :meth:`release` (or process exit) lets go."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock_path = path + ".lock"
        self._fd: int | None = None

    def acquire(self, instance: str) -> None:
        """Take the lock and write ``instance`` and the pid into it.

        Raises:
            RuntimeError: another process holds it; the message names it.
            OSError: the lock file cannot be created.
        """
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _LOCK_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            message = _in_use(self.path, fd)
            os.close(fd)
            raise RuntimeError(message) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{instance}\n{os.getpid()}\n".encode("utf-8", "backslashreplace"), 0)
        self._fd = fd

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Let the lock go (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor releases the flock


def lock_problem(path: str) -> str | None:
    """Why the SQLite file ``path`` cannot be used now (held by a live process), or None."""
    lock_path = path + ".lock"
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"sqlite store {path}: cannot open {lock_path}: {exc.strerror}"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _in_use(path, fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
