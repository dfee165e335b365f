"""Tests for funtask._deadletters (dead-letter files: naming, atomic writes, listing)."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from funtask import _deadletters
from funtask._deadletters import (
    DeadLetter,
    callback_body_bytes,
    count_dead_letters,
    dead_letter_name,
    read_dead_letter,
    remove_dead_letter,
    scan_dead_letters,
    update_dead_letter,
    write_dead_letter,
)

SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def sha_name(job_id: str) -> str:
    return "sha256-" + hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()


def make_meta(**changes: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "task": "greet",
        "callbackUrl": "https://hooks.example/done?sig=secret",
        "attempts": 0,
        "lastError": "",
        "createdAt": "2026-01-01T10:00:00Z",
    }
    meta.update(changes)
    return meta


def make_body(job_id: str = "job-1", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"jobId": job_id, "success": True, "message": "Hello, café!"}
    body["duration"] = "1ms"
    body["durationMs"] = 1
    body["data"] = {"z": 1, "a": [1.5, None, "日本"], "m": {"y": True, "b": False}}
    body.update(extra)
    return body


def compact(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    return Path(path).read_bytes()


# -- naming ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job_id", "expected"),
    [
        ("job-123", "job-123"),
        ("550e8400-e29b-41d4-a716-446655440000", "550e8400-e29b-41d4-a716-446655440000"),
        ("a.b_c-D.9", "a.b_c-D.9"),
        ("trailing.", "trailing."),
        ("a/b", "a%2Fb"),
        ("a\\b", "a%5Cb"),
        (".", "%2E"),
        ("..", "%2E."),
        (".hidden", "%2Ehidden"),
        ("../../etc/passwd", "%2E.%2F..%2Fetc%2Fpasswd"),
        ("café", "caf%C3%A9"),
        ("日本", "%E6%97%A5%E6%9C%AC"),
        ("a\x00b", "a%00b"),
        ("tab\there\n", "tab%09here%0A"),
        ("a~b", "a%7Eb"),
        ("a b", "a%20b"),
        ("100%", "100%25"),
        ("a%2Fb", "a%252Fb"),
        ("\ud800", "%ED%A0%80"),
        ("", sha_name("")),
    ],
)
def test_dead_letter_name_table(job_id: str, expected: str) -> None:
    assert dead_letter_name(job_id) == expected


def test_dead_letter_name_length_limits() -> None:
    assert dead_letter_name("x" * 200) == "x" * 200
    assert dead_letter_name("x" * 201) == sha_name("x" * 201)
    assert dead_letter_name("/" * 66) == "%2F" * 66  # 198 bytes encoded
    assert dead_letter_name("/" * 67) == sha_name("/" * 67)  # 201 bytes encoded
    long_unsafe = "../" * 1000 + "é" * 500
    assert dead_letter_name(long_unsafe) == sha_name(long_unsafe)
    assert len(sha_name(long_unsafe)) == 71


def check_name(job_id: str, name: str) -> None:
    assert name not in ("", ".", "..")
    assert not name.startswith(".")
    assert "/" not in name and "\\" not in name and "~" not in name
    assert len(name.encode("utf-8")) <= 200
    assert set(name) <= SAFE_CHARS | {"%"}
    if not name.startswith("sha256-") or name == job_id:
        # The percent-encoding is reversible, so distinct ids get distinct names.
        assert urllib.parse.unquote(name, errors="surrogatepass") == job_id


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(st.characters(exclude_categories=())))
@example("..")
@example("../../etc/passwd")
@example("/")
@example("\\..\\x")
@example("a" * 300)
@example("\udfff/..")
def test_dead_letter_file_stays_inside_directory(job_id: str) -> None:
    name = dead_letter_name(job_id)
    check_name(job_id, name)
    with tempfile.TemporaryDirectory() as raw:
        directory = Path(raw)
        body = {"jobId": job_id, "success": True}
        path = trio.run(write_dead_letter, directory, job_id, body, make_meta())
        assert Path(path).resolve().parent == directory.resolve()
        assert Path(path).name == name + ".json"
        assert listing(directory) == [name + ".json"]
        letter = read_dead_letter(path)
        assert letter.job_id == job_id
        assert letter.body == body


# -- writing -------------------------------------------------------------------


async def test_write_returns_trio_path_with_mode_0600(tmp_path: Path) -> None:
    path = await write_dead_letter(tmp_path, "job-1", make_body(), make_meta())
    assert isinstance(path, trio.Path)
    assert Path(path) == tmp_path / "job-1.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o277])
async def test_mode_0600_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    previous = os.umask(mask)
    try:
        path = await write_dead_letter(tmp_path, "job-1", make_body(), make_meta())
        await update_dead_letter(path, {"attempts": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


async def test_accepts_str_and_trio_path_directories(tmp_path: Path) -> None:
    first = await write_dead_letter(str(tmp_path), "a", make_body("a"), make_meta())
    second = await write_dead_letter(trio.Path(tmp_path), "b", make_body("b"), make_meta())
    assert Path(first) == tmp_path / "a.json"
    assert Path(second) == tmp_path / "b.json"


async def test_content_is_body_plus_dead_letter_in_order(tmp_path: Path) -> None:
    body = make_body("job-1")
    meta = make_meta(attempts=2, lastError="HTTP 500")
    path = await write_dead_letter(tmp_path, "job-1", body, meta)
    raw = read_bytes(path)
    assert raw == compact({**body, "deadLetter": meta})
    pairs = json.loads(raw, object_pairs_hook=lambda items: items)
    assert [key for key, _ in pairs] == [*body, "deadLetter"]
    assert "café".encode() in raw  # UTF-8, not \u escapes
    document = json.loads(raw)
    assert list(document["deadLetter"]) == list(meta)
    assert list(document["data"]) == ["z", "a", "m"]


async def test_never_overwrites_an_existing_file(tmp_path: Path) -> None:
    paths = []
    for attempt in range(3):
        meta = make_meta(attempts=attempt, createdAt=f"2026-01-01T10:00:0{attempt}Z")
        paths.append(Path(await write_dead_letter(tmp_path, "x", make_body("x"), meta)))
    assert [p.name for p in paths] == ["x.json", "x~2.json", "x~3.json"]
    assert listing(tmp_path) == ["x.json", "x~2.json", "x~3.json"]
    for attempt, path in enumerate(paths):
        assert read_dead_letter(path).attempts == attempt


async def test_foreign_file_with_the_same_name_is_kept(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("precious")
    path = await write_dead_letter(tmp_path, "x", make_body("x"), make_meta())
    assert Path(path).name == "x~2.json"
    assert (tmp_path / "x.json").read_text() == "precious"


async def test_concurrent_writers_never_clobber_each_other(tmp_path: Path) -> None:
    paths: list[trio.Path] = []

    async def writer(n: int) -> None:
        meta = make_meta(attempts=n)
        paths.append(await write_dead_letter(tmp_path, "same", make_body("same"), meta))

    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(writer, n)
    expected = ["same.json"] + [f"same~{n}.json" for n in range(2, 21)]
    assert listing(tmp_path) == sorted(expected)
    assert sorted(read_dead_letter(p).attempts for p in paths) == list(range(20))


async def test_no_temporary_files_after_success(tmp_path: Path) -> None:
    await write_dead_letter(tmp_path, "a/b", make_body("a/b"), make_meta())
    await write_dead_letter(tmp_path, "a/b", make_body("a/b"), make_meta())
    assert listing(tmp_path) == ["a%2Fb.json", "a%2Fb~2.json"]


async def test_encoded_body_is_spliced_not_serialised_again(tmp_path: Path) -> None:
    body = make_body()
    encoded = b'{"jobId":"job-1", "kept": "as sent"}'  # the bytes win over the mapping
    path = await write_dead_letter(tmp_path, "job-1", body, make_meta(), encoded=encoded)
    assert read_bytes(path) == encoded[:-1] + b',"deadLetter":' + compact(make_meta()) + b"}"
    letter = read_dead_letter(path)
    assert letter.body == {"jobId": "job-1", "kept": "as sent"}
    assert letter.attempts == 0
    same = await write_dead_letter(tmp_path, "job-1", body, make_meta(), encoded=compact(body))
    assert read_bytes(same) == compact({**body, "deadLetter": make_meta()})


async def test_encoded_body_that_is_not_an_object_is_serialised(tmp_path: Path) -> None:
    path = await write_dead_letter(tmp_path, "job-1", make_body(), make_meta(), encoded=b"[1]")
    assert read_bytes(path) == compact({**make_body(), "deadLetter": make_meta()})


async def test_fsync_failure_raises_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="simulated"):
        await write_dead_letter(tmp_path, "job-1", make_body(), make_meta())
    assert listing(tmp_path) == []


async def test_write_failure_raises_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_write(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "simulated full disk")

    monkeypatch.setattr(os, "write", broken_write)
    with pytest.raises(OSError, match="full disk"):
        await write_dead_letter(tmp_path, "job-1", make_body(), make_meta())
    assert listing(tmp_path) == []


async def test_link_failure_raises_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_link(src: Any, dst: Any) -> None:
        raise OSError(errno.EIO, "simulated link failure")

    monkeypatch.setattr(os, "link", broken_link)
    with pytest.raises(OSError, match="simulated"):
        await write_dead_letter(tmp_path, "job-1", make_body(), make_meta())
    assert listing(tmp_path) == []


async def test_filesystem_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: Any, dst: Any) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    (tmp_path / "x.json").write_text("precious")
    first = await write_dead_letter(tmp_path, "x", make_body("x"), make_meta(attempts=1))
    second = await write_dead_letter(tmp_path, "x", make_body("x"), make_meta(attempts=2))
    assert [Path(first).name, Path(second).name] == ["x~2.json", "x~3.json"]
    assert listing(tmp_path) == ["x.json", "x~2.json", "x~3.json"]
    assert (tmp_path / "x.json").read_text() == "precious"
    assert read_dead_letter(first).attempts == 1
    assert read_dead_letter(second).attempts == 2
    assert stat.S_IMODE(os.stat(second).st_mode) == 0o600


async def test_missing_directory_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await write_dead_letter(tmp_path / "nope", "job-1", make_body(), make_meta())


@pytest.mark.parametrize(
    ("body", "meta", "error"),
    [
        (make_body(extra=float("nan")), make_meta(), ValueError),
        (make_body(extra=object()), make_meta(), TypeError),
        (make_body("other"), make_meta(), ValueError),
        (make_body(deadLetter={}), make_meta(), ValueError),
        (make_body(), {"task": "greet"}, ValueError),
        (make_body(), make_meta(attempts=True), ValueError),
        (make_body(), make_meta(attempts=-1), ValueError),
        (make_body(), make_meta(callbackUrl=None), ValueError),
    ],
)
async def test_invalid_input_writes_nothing(
    tmp_path: Path, body: dict[str, Any], meta: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        await write_dead_letter(tmp_path, "job-1", body, meta)
    assert listing(tmp_path) == []


async def test_lone_surrogates_are_escaped(tmp_path: Path) -> None:
    job_id = "bad\ud800id"
    path = await write_dead_letter(tmp_path, job_id, make_body(job_id), make_meta())
    assert Path(path).name == "bad%ED%A0%80id.json"
    raw = read_bytes(path)
    assert b"\\ud800" in raw
    letter = read_dead_letter(path)
    assert letter.job_id == job_id
    assert json.loads(callback_body_bytes(letter))["jobId"] == job_id


async def test_write_logs_to_funtask_deadletters(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="funtask.deadletters"):
        path = await write_dead_letter(tmp_path, "job-1", make_body(), make_meta())
    records = [r for r in caplog.records if r.name == "funtask.deadletters"]
    assert records and str(path) in records[0].getMessage()
    assert "secret" not in caplog.text


# -- the event loop is never blocked --------------------------------------------


async def test_file_io_runs_in_worker_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    calls: list[tuple[str, bool]] = []
    for name in ("open", "write", "fsync", "link", "unlink", "replace", "close", "fchmod"):
        real = getattr(os, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls.append((_name, threading.get_ident() == loop_thread))
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, spy)
    thread_calls: list[Any] = []  # Trio worker-thread jobs started
    real_start_thread_soon = trio.lowlevel.start_thread_soon

    def recording_start_thread_soon(fn: Any, deliver: Any, **kwargs: Any) -> None:
        thread_calls.append(fn)
        real_start_thread_soon(fn, deliver, **kwargs)

    monkeypatch.setattr(trio.lowlevel, "start_thread_soon", recording_start_thread_soon)

    path = await write_dead_letter(tmp_path, "job-1", make_body(), make_meta())
    await update_dead_letter(path, {"attempts": 1})
    await remove_dead_letter(path)
    # Each operation gets a hop of its own, or joins the turn of a worker still going
    # round the queue (funtask._threads.run_queued): never a thread per file call.
    assert 1 <= len(thread_calls) <= 3
    names = {name for name, _ in calls}
    assert {"open", "write", "fsync", "link", "unlink", "replace"} <= names
    assert [name for name, in_loop in calls if in_loop] == []


async def test_slow_disk_does_not_block_other_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(0.1)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await write_dead_letter(tmp_path, "job-1", make_body(), make_meta())
        done = True
    assert ticks >= 5  # the write took >= 0.2 s; a blocked loop would not tick


async def test_cancelled_write_completes_or_never_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = threading.Event()
    release = threading.Event()
    real_fsync = os.fsync

    def gated_fsync(fd: int) -> None:
        started.set()
        release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", gated_fsync)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def cancel_mid_write() -> None:
                await trio.to_thread.run_sync(started.wait, 10)
                scope.cancel()
                release.set()

            nursery.start_soon(cancel_mid_write)
            await write_dead_letter(tmp_path, "job-1", make_body(), make_meta())
            await trio.sleep(1)  # the cancellation lands here
    assert scope.cancelled_caught
    assert listing(tmp_path) == ["job-1.json"]
    assert read_dead_letter(tmp_path / "job-1.json").body == make_body()

    with trio.CancelScope() as scope:
        scope.cancel()
        await write_dead_letter(tmp_path, "job-2", make_body("job-2"), make_meta())
    assert listing(tmp_path) == ["job-1.json"]


# -- update and remove ------------------------------------------------------------


async def test_update_rewrites_dead_letter_member(tmp_path: Path) -> None:
    body = make_body()
    path = await write_dead_letter(tmp_path, "job-1", body, make_meta())
    await update_dead_letter(path, {"attempts": 5, "lastError": "HTTP 503"})
    raw = read_bytes(path)
    assert raw == compact({**body, "deadLetter": make_meta(attempts=5, lastError="HTTP 503")})
    letter = read_dead_letter(path)
    assert (letter.attempts, letter.last_error, letter.task) == (5, "HTTP 503", "greet")
    assert listing(tmp_path) == ["job-1.json"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


async def test_update_with_full_meta_replaces_it(tmp_path: Path) -> None:
    path = await write_dead_letter(tmp_path, "job-1", make_body(), make_meta())
    new = make_meta(task="other", attempts=1, lastError="timeout")
    await update_dead_letter(path, new)
    assert json.loads(read_bytes(path))["deadLetter"] == new


async def test_update_failures_keep_the_original(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = await write_dead_letter(tmp_path, "job-1", make_body(), make_meta())
    before = read_bytes(path)
    with pytest.raises(ValueError, match="attempts"):
        await update_dead_letter(path, {"attempts": "many"})

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="simulated"):
        await update_dead_letter(path, {"attempts": 1})
    assert read_bytes(path) == before
    assert listing(tmp_path) == ["job-1.json"]


async def test_update_missing_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await update_dead_letter(tmp_path / "gone.json", {"attempts": 1})
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        await update_dead_letter(tmp_path / "bad.json", {"attempts": 1})
    (tmp_path / "plain.json").write_text('{"jobId": "x"}')
    with pytest.raises(ValueError, match="deadLetter"):
        await update_dead_letter(tmp_path / "plain.json", {"attempts": 1})


async def test_remove(tmp_path: Path) -> None:
    path = await write_dead_letter(tmp_path, "job-1", make_body(), make_meta())
    await remove_dead_letter(path)
    assert listing(tmp_path) == []
    await remove_dead_letter(path)  # already gone: fine
    await remove_dead_letter(tmp_path / "missing" / "x.json")


# -- scanning and reading ---------------------------------------------------------


async def test_scan_sorts_and_reports_invalid_files(tmp_path: Path) -> None:
    late = make_meta(createdAt="2026-01-02T00:00:00Z")
    early = make_meta(createdAt="2026-01-01T00:00:00Z")
    await write_dead_letter(tmp_path, "b", make_body("b"), early)
    await write_dead_letter(tmp_path, "a", make_body("a"), late)
    await write_dead_letter(tmp_path, "c", make_body("c"), early)
    await write_dead_letter(tmp_path, "a/b", make_body("a/b"), early)
    (tmp_path / ".tmp-abc123").write_text("partial")
    (tmp_path / ".tmp-x.json").write_text("partial")
    (tmp_path / ".hidden.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "array.json").write_text("[]")
    (tmp_path / "nan.json").write_text('{"jobId": "n", "x": NaN, "deadLetter": {}}')
    (tmp_path / "latin1.json").write_bytes(b'{"jobId": "\xe9"}')
    (tmp_path / "nometa.json").write_text('{"jobId": "x", "success": true}')
    (tmp_path / "noid.json").write_text(json.dumps({"deadLetter": make_meta()}))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "link.json").symlink_to(tmp_path / "b.json")

    letters, invalid = scan_dead_letters(tmp_path)
    assert [letter.path.name for letter in letters] == ["a%2Fb.json", "b.json", "c.json", "a.json"]
    assert [letter.job_id for letter in letters] == ["a/b", "b", "c", "a"]
    assert all(isinstance(letter.path, Path) for letter in letters)
    assert [path.name for path, _ in invalid] == [
        "array.json",
        "bad.json",
        "deep.json",
        "dir.json",
        "latin1.json",
        "link.json",
        "nan.json",
        "noid.json",
        "nometa.json",
    ]
    reasons = {path.name: reason for path, reason in invalid}
    assert "not valid JSON" in reasons["bad.json"]
    assert "not a JSON object" in reasons["array.json"]
    assert "NaN" in reasons["nan.json"]
    assert "deadLetter" in reasons["nometa.json"]
    assert "jobId" in reasons["noid.json"]
    assert "regular file" in reasons["link.json"]


def test_scan_empty_and_missing_directory(tmp_path: Path) -> None:
    assert scan_dead_letters(tmp_path) == ([], [])
    with pytest.raises(FileNotFoundError):
        scan_dead_letters(tmp_path / "missing")


async def test_read_round_trip(tmp_path: Path) -> None:
    body = make_body("a/b")
    meta = make_meta(attempts=3, lastError="HTTP 500")
    path = await write_dead_letter(tmp_path, "a/b", body, meta)
    letter = read_dead_letter(path)
    assert letter == DeadLetter(
        path=Path(path),
        job_id="a/b",
        task="greet",
        callback_url="https://hooks.example/done?sig=secret",
        attempts=3,
        last_error="HTTP 500",
        created_at="2026-01-01T10:00:00Z",
        body=body,
    )
    assert list(letter.body) == list(body)
    assert "deadLetter" not in letter.body
    assert callback_body_bytes(letter) == compact(body)
    assert read_dead_letter(str(path)) == letter


def test_read_invalid_files_raise_value_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"jobId": "x", "deadLetter": {"task": "t"}}')
    with pytest.raises(ValueError, match=r"invalid dead letter .*bad\.json.*callbackUrl"):
        read_dead_letter(bad)
    bad.write_text("")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_dead_letter(bad)
    with pytest.raises(FileNotFoundError):
        read_dead_letter(tmp_path / "missing.json")


async def test_count_dead_letters_skips_temporary_and_other_files(tmp_path: Path) -> None:
    assert count_dead_letters(tmp_path) == 0
    body = {"jobId": "a", "success": True}
    meta = {"task": "t", "callbackUrl": "", "attempts": 0, "lastError": "", "createdAt": "now"}
    await write_dead_letter(tmp_path, "a", body, meta)
    await write_dead_letter(tmp_path, "a", body, meta)  # a.json and a~2.json
    (tmp_path / ".tmp-half-written").write_bytes(b"{")
    (tmp_path / ".hidden.json").write_bytes(b"{}")
    (tmp_path / "notes.txt").write_text("not a letter")
    (tmp_path / "dir.json").mkdir()
    assert count_dead_letters(tmp_path) == 2
    with pytest.raises(FileNotFoundError):
        count_dead_letters(tmp_path / "missing")


def test_dead_letter_is_frozen(tmp_path: Path) -> None:
    letter = DeadLetter(tmp_path / "x.json", "x", "t", "https://h", 0, "", "now", {"jobId": "x"})
    with pytest.raises(AttributeError):
        letter.attempts = 1  # type: ignore[misc]


def test_public_names() -> None:
    assert set(_deadletters.__all__) == {
        "DeadLetter",
        "callback_body_bytes",
        "count_dead_letters",
        "dead_letter_name",
        "read_dead_letter",
        "remove_dead_letter",
        "scan_dead_letters",
        "update_dead_letter",
        "write_dead_letter",
    }
    for name in _deadletters.__all__:
        doc = getattr(_deadletters, name).__doc__
        assert doc and "\n" not in doc.strip()
    assert _deadletters.logger.name == "funtask.deadletters"
