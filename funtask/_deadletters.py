"""Dead-letter files: the on-disk safety net for asynchronous job results.

Before an async result is POSTed to its ``callbackUrl`` it is written to the
dead-letter directory; the file is removed once delivery succeeded and kept
for replay otherwise.  A file holds the exact callback body (its members in
their original order) plus one last member::

    "deadLetter": {"task", "callbackUrl", "attempts", "lastError", "createdAt"}

which replay strips before posting (see :func:`callback_body_bytes`).  When
the job had a W3C trace context, the member also holds ``traceparent`` (and
``tracestate``), which replay sends as headers so the trace continues.

File names (see :func:`dead_letter_name`) are ``<jobId>.json`` for ordinary
ids, like the Go implementation, and otherwise a percent-encoding or a SHA-256
digest of the id: a jobId is never used as a path, so ``/`` or ``..`` in it
cannot escape the directory.  An existing file is never overwritten: a second
letter for the same jobId becomes ``<name>~2.json``, then ``~3`` and so on.

Every file is written with mode 0600 through a temporary file in the same
directory (``.tmp-*``, skipped by listings) that is flushed and fsynced and
then hard-linked into place -- ``link`` fails instead of replacing an existing
file, so concurrent writers cannot clobber each other.  On filesystems without
hard links the final name is reserved with ``O_CREAT | O_EXCL`` and the
temporary file renamed over that (empty) reservation.  The directory is
fsynced afterwards (after writes and updates; a removal is made durable by
the next write's sync).  The async functions run all blocking file I/O in worker
threads through :func:`funtask._threads.run_queued` (not abandoned on
cancellation; operations made while a worker is busy share its next turn), so
they never block the event loop and a cancelled write is either complete or
never started.  The sync functions are meant for the command line.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn

import trio

from ._threads import run_queued
from ._tracecontext import carrier_from_meta

__all__ = [
    "DeadLetter",
    "callback_body_bytes",
    "count_dead_letters",
    "dead_letter_name",
    "read_dead_letter",
    "remove_dead_letter",
    "scan_dead_letters",
    "update_dead_letter",
    "write_dead_letter",
]

logger = logging.getLogger("funtask.deadletters")

_META_KEY: Final = "deadLetter"
_SUFFIX: Final = ".json"
_TEMP_PREFIX: Final = ".tmp-"
_MAX_NAME_BYTES: Final = 200
_MAX_COPIES: Final = 100_000
_FILE_MODE: Final = 0o600
_SAFE_NAME: Final = re.compile(r"[A-Za-z0-9._-]+")
# errno values with which link(2) says "this filesystem has no hard links".
_NO_HARD_LINKS: Final = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
# errno values with which fsync(2) says "directories cannot be synced here".
_NO_DIRECTORY_SYNC: Final = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})
_META_FIELDS: Final = ("task", "callbackUrl", "attempts", "lastError", "createdAt")


@dataclass(frozen=True)
class DeadLetter:
    """A dead-letter file: a callback body still waiting to be delivered."""

    path: Path
    job_id: str  # the body's ``jobId``
    task: str
    callback_url: str
    attempts: int  # delivery attempts made so far
    last_error: str  # why the last attempt failed ("" if none was made)
    created_at: str  # RFC 3339 timestamp of the first write
    body: dict[str, Any]  # the callback body, without ``deadLetter``, in file order
    webhook_id: str | None = None  # the result's one ``webhook-id`` (older letters: None)
    unstored: bool = False  # written while the store could not take the result
    superseded: bool = False  # another process settled the job first: never posted
    token: str | None = None  # the owner token that may still settle it (unstored)
    trace: dict[str, str] = dataclasses.field(default_factory=dict)  # valid traceparent/tracestate


def dead_letter_name(job_id: str) -> str:
    """Return the dead-letter file stem (the name without ``.json``) for ``job_id``."""
    if (
        _SAFE_NAME.fullmatch(job_id)
        and not job_id.startswith(".")
        and len(job_id) <= _MAX_NAME_BYTES
    ):
        return job_id
    # quote() leaves only ASCII letters, digits and "_.-~" unescaped; "~" is our
    # copy separator and a leading "." would make a hidden file, "." or "..".
    # Lone surrogates (possible in JSON strings) are escaped byte by byte.
    encoded = urllib.parse.quote(job_id, safe="", errors="surrogatepass").replace("~", "%7E")
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    if encoded and len(encoded) <= _MAX_NAME_BYTES:
        return encoded
    digest = hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"sha256-{digest}"


async def write_dead_letter(
    directory: str | os.PathLike[str],
    job_id: str,
    body: Mapping[str, Any],
    meta: Mapping[str, Any],
    *,
    encoded: bytes | None = None,
) -> trio.Path:
    """Durably write a new dead letter for ``job_id``, never overwriting one; return its path."""
    # ``encoded`` is ``body`` already serialised as the callback posts it (a JSON
    # object): the file then holds those very bytes, ``deadLetter`` spliced in before
    # the closing brace, and the body is not serialised again.
    # Checked up front so that a file is written only if read_dead_letter can read it
    # back; a body that cannot be serialised raises TypeError/ValueError likewise.
    if _META_KEY in body:
        raise ValueError(f"callback body already has a {_META_KEY!r} member")
    if body.get("jobId") != job_id:
        raise ValueError("callback body's jobId does not match job_id")
    _check_meta(meta)
    if encoded is not None and not (encoded[:1] == b"{" and encoded[-1:] == b"}"):
        encoded = None  # not a bare JSON object: serialise the body instead
    final = await run_queued(
        _write_new, os.fspath(directory), dead_letter_name(job_id), body, dict(meta), encoded
    )
    logger.debug("dead letter written: %s", final)
    return trio.Path(final)


async def update_dead_letter(path: str | os.PathLike[str], meta: Mapping[str, Any]) -> None:
    """Atomically merge ``meta`` into the ``deadLetter`` member of the file at ``path``."""
    await run_queued(_update, os.fspath(path), dict(meta))
    logger.debug("dead letter updated: %s", os.fspath(path))


async def remove_dead_letter(path: str | os.PathLike[str]) -> None:
    """Delete the dead letter at ``path`` (a missing file is fine; its directory is not synced)."""
    # Not synced here: a removal that an OS crash undoes means a result delivered twice
    # (replay), never one lost.
    await run_queued(_remove, os.fspath(path))


def read_dead_letter(path: str | os.PathLike[str]) -> DeadLetter:
    """Read one dead-letter file; raise ValueError if its content is not a valid dead letter."""
    try:
        return _read(Path(path))
    except ValueError as exc:
        raise ValueError(f"invalid dead letter {os.fspath(path)!r}: {exc}") from exc


def scan_dead_letters(
    directory: str | os.PathLike[str],
) -> tuple[list[DeadLetter], list[tuple[Path, str]]]:
    """Return the directory's dead letters (oldest first) and its unreadable ``.json`` files."""
    root = Path(directory)
    letters: list[DeadLetter] = []
    invalid: list[tuple[Path, str]] = []
    with os.scandir(root) as entries:
        for entry in entries:
            # Temporary files start with ".tmp-"; no dead letter starts with ".".
            if entry.name.startswith(".") or not entry.name.endswith(_SUFFIX):
                continue
            path = root / entry.name
            try:
                if not entry.is_file(follow_symlinks=False):
                    invalid.append((path, "not a regular file"))
                    continue
                letters.append(_read(path))
            except (OSError, ValueError) as exc:
                invalid.append((path, str(exc)))
    letters.sort(key=lambda letter: (letter.created_at, letter.path.name))
    invalid.sort(key=lambda item: item[0].name)
    return letters, invalid


def count_dead_letters(directory: str | os.PathLike[str]) -> int:
    """How many dead-letter files ``directory`` holds, by name, temporary files skipped."""
    # Names only (regular ``*.json`` files not starting with "."): no file is read.
    count = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if (
                not entry.name.startswith(".")
                and entry.name.endswith(_SUFFIX)
                and entry.is_file(follow_symlinks=False)
            ):
                count += 1
    return count


def callback_body_bytes(letter: DeadLetter) -> bytes:
    """Return the exact JSON body to POST when replaying ``letter``."""
    return _dumps(letter.body)


# -- serialisation and validation ---------------------------------------------


def _dumps(obj: Any) -> bytes:
    """Serialise as strict, compact UTF-8 JSON."""
    text = json.dumps(obj, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates have no UTF-8 form; JSON escapes keep the data intact.
        text = json.dumps(obj, allow_nan=False, ensure_ascii=True, separators=(",", ":"))
        return text.encode("ascii")


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _check_meta(meta: Mapping[str, Any]) -> tuple[str, str, int, str, str]:
    """Validate a ``deadLetter`` member and return its fields in ``_META_FIELDS`` order."""
    if not isinstance(meta, Mapping):
        raise ValueError(f"{_META_KEY!r} is not an object")
    missing = [field for field in _META_FIELDS if field not in meta]
    if missing:
        raise ValueError(f"{_META_KEY!r} lacks {', '.join(missing)}")
    task, url, attempts, last_error, created_at = (meta[field] for field in _META_FIELDS)
    for field, value in (
        ("task", task),
        ("callbackUrl", url),
        ("lastError", last_error),
        ("createdAt", created_at),
    ):
        if not isinstance(value, str):
            raise ValueError(f"{_META_KEY}.{field} is not a string")
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        raise ValueError(f"{_META_KEY}.attempts is not a non-negative integer")
    return task, url, attempts, last_error, created_at


def _parse(data: bytes) -> dict[str, Any]:
    """Parse a dead-letter file's bytes into its top-level JSON object."""
    try:
        document = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("not valid JSON: nested too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise ValueError(f"not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return document


def _read(path: Path) -> DeadLetter:
    document = _parse(path.read_bytes())
    meta = document.pop(_META_KEY, None)
    if meta is None:
        raise ValueError(f"no {_META_KEY!r} member")
    task, url, attempts, last_error, created_at = _check_meta(meta)
    job_id = document.get("jobId")
    if not isinstance(job_id, str):
        raise ValueError("jobId is missing or not a string")
    webhook_id = meta.get("webhookId")
    token = meta.get("token")
    return DeadLetter(
        path,
        job_id,
        task,
        url,
        attempts,
        last_error,
        created_at,
        document,
        webhook_id=webhook_id if isinstance(webhook_id, str) and webhook_id else None,
        unstored=meta.get("unstored") is True,
        superseded=meta.get("superseded") is True,
        token=token if isinstance(token, str) and token else None,
        trace=carrier_from_meta(meta),
    )


# -- blocking file operations (run in worker threads by the async API) ----------


def _file_name(stem: str, copy: int) -> str:
    return f"{stem}{_SUFFIX}" if copy == 1 else f"{stem}~{copy}{_SUFFIX}"


def _discard(path: str) -> None:
    """Remove ``path`` if it exists, logging (never raising) any failure."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("could not remove temporary file %s: %s", path, exc)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIRECTORY_SYNC:
            raise
    finally:
        os.close(fd)


def _write_temp(directory: str, data: bytes) -> str:
    """Write ``data`` to a new fsynced mode-0600 temporary file in ``directory``."""
    fd, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=directory)
    try:
        try:
            os.fchmod(fd, _FILE_MODE)  # mkstemp's 0600 may have been narrowed by umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _discard(temp)
        raise
    return temp


def _publish_exclusive(temp: str, directory: str, stem: str, first: int) -> str:
    """Rename ``temp`` over a freshly reserved name (for filesystems without hard links)."""
    for copy in range(first, _MAX_COPIES + 1):
        final = os.path.join(directory, _file_name(stem, copy))
        try:
            fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        try:
            os.replace(temp, final)  # replaces only our own empty reservation
        except BaseException:
            _discard(final)
            raise
        return final
    raise FileExistsError(errno.EEXIST, "too many dead letters with this name", stem)


def _write_new(
    directory: str,
    stem: str,
    body: Mapping[str, Any],
    meta: dict[str, Any],
    encoded: bytes | None,
) -> str:
    if encoded is None:
        data = _dumps({**body, _META_KEY: meta})
    else:  # the body's own bytes, the member spliced in (a body always has a jobId)
        data = b"".join((encoded[:-1], b',"' + _META_KEY.encode() + b'":', _dumps(meta), b"}"))
    temp = _write_temp(directory, data)
    renamed = False
    try:
        for copy in range(1, _MAX_COPIES + 1):
            final = os.path.join(directory, _file_name(stem, copy))
            try:
                os.link(temp, final)  # fails rather than replace an existing file
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                logger.debug("no hard links in %s (%s); reserving names instead", directory, exc)
                final = _publish_exclusive(temp, directory, stem, copy)
                renamed = True
            break
        else:
            raise FileExistsError(errno.EEXIST, "too many dead letters with this name", stem)
    finally:
        if not renamed:
            _discard(temp)
    # If this fails the letter is in place but not yet durable; the error is raised.
    _fsync_directory(directory)
    return final


def _update(path: str, meta: dict[str, Any]) -> None:
    with open(path, "rb") as stream:
        document = _parse(stream.read())
    current = document.get(_META_KEY)
    if not isinstance(current, dict):
        raise ValueError(f"{path!r} has no {_META_KEY!r} object")
    merged = {**current, **meta}
    _check_meta(merged)
    document[_META_KEY] = merged  # an existing key keeps its place (the last one)
    directory = os.path.dirname(path) or os.curdir
    temp = _write_temp(directory, _dumps(document))
    try:
        os.replace(temp, path)  # replacing our own file is the point here
    except BaseException:
        _discard(temp)
        raise
    _fsync_directory(directory)


def _remove(path: str) -> None:
    # The directory is not synced: a removal that an OS crash undoes costs a duplicate
    # delivery at worst (replay; the webhook-id stays the same), never a result, and the
    # next letter's directory sync makes it durable anyway.
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    logger.debug("dead letter removed: %s", path)
