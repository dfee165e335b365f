"""A server with a store (SPEC section 5), in process: settings, /result and
duplicates across restarts, /health, /stop with a jobId, outages, webhook-id.

Outages are simulated honestly on the real SQLite store: an authorizer
installed on its connection makes SQLite itself refuse every statement
(``sqlite3.DatabaseError: not authorized``), which is exactly what a broken
database file or disk looks like to the store; removing it is the store
coming back.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import sys
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio
from trio.testing import MockClock

import funtask
from funtask.__main__ import main
from funtask._deadletters import scan_dead_letters, write_dead_letter
from funtask._replay import replay_dead_letters
from funtask._stores.lock import StoreLock
from funtask._threads import run_in_thread
from funtask._wire import finished_job
from funtask.testing import open_test_client

from _support import (
    CallbackReceiver,
    break_store,
    build_server,
    mend_store,
    sqlite_store,
    wait_idle,
    wait_until,
)

HOOK = "https://hooks.example.com/hooks/done"


def store_url(tmp_path: Path) -> str:
    (tmp_path / "db").mkdir(exist_ok=True)
    return f"sqlite://{tmp_path}/db/jobs.db"


def make_server(tmp_path: Path, **config: Any) -> funtask.Server:
    config.setdefault("store", store_url(tmp_path))
    config.setdefault("callback_allowlist", ["https://hooks.example.com/hooks"])
    config.setdefault("instance_id", "test-instance")
    server = build_server(tmp_path, **config)

    @server.task
    async def quick(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("working")
        return funtask.ok("done").with_data("n", params.int("n", 1))

    return server


# -- configuration ------------------------------------------------------------------


def test_store_settings_are_validated_with_everything_else(tmp_path: Path) -> None:
    server = build_server(tmp_path, store="mongodb://h/x", store_lease=0.5, store_timeout=0)
    with pytest.raises(funtask.ConfigError) as info:
        server.validate()
    message = str(info.value)
    assert "unknown scheme 'mongodb'" in message
    assert "store_lease must be a duration of at least 1s, not 0.5" in message
    assert "store_timeout must be a finite duration > 0, not 0" in message


@pytest.mark.parametrize(
    ("store", "fragment"),
    [
        ("sqlite://host/x.db", "must not name a host 'host'"),
        ("sqlite::memory:", "must name a file on disk"),
        ("sqlite:///no/such/dir/x.db", "directory '/no/such/dir' does not exist"),
        ("redis://u:secret@h", "needs the redis extra (coredis is not importable)"),
    ],
)
def test_store_url_problems(
    tmp_path: Path, store: str, fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "coredis", None)  # as if the redis extra were missing
    server = build_server(tmp_path, store=store)
    with pytest.raises(funtask.ConfigError) as info:
        server.validate()
    assert fragment in str(info.value)
    assert "secret" not in str(info.value)


def test_result_ttl_none_is_sqlite_only(tmp_path: Path) -> None:
    build_server(tmp_path, store=store_url(tmp_path), result_ttl=None).validate()
    server = build_server(tmp_path, store=store_url(tmp_path), result_ttl=-1)
    with pytest.raises(funtask.ConfigError, match="result_ttl must be"):
        server.validate()


def test_store_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUNTASK_STORE", "bogus:thing")
    with pytest.raises(funtask.ConfigError, match="unknown scheme 'bogus'"):
        build_server(tmp_path).validate()
    monkeypatch.setenv("FUNTASK_STORE", "sqlite:db.sqlite")
    monkeypatch.chdir(tmp_path)
    server = build_server(tmp_path)
    assert server.settings.resolved_store().path == str(tmp_path / "db.sqlite")


async def test_a_file_in_use_is_a_config_error_naming_instance_and_pid(tmp_path: Path) -> None:
    url = store_url(tmp_path)
    lock = StoreLock(f"{tmp_path}/db/jobs.db")
    lock.acquire("other-worker")
    try:
        server = make_server(tmp_path, store=url)
        expected = (
            f"sqlite store {tmp_path}/db/jobs.db is in use by other-worker (pid {os.getpid()})"
        )
        with pytest.raises(funtask.ConfigError) as info:
            server.validate()
        assert expected in str(info.value)
        with pytest.raises(funtask.ConfigError, match="is in use by other-worker"):
            async with open_test_client(server):
                pass  # pragma: no cover
    finally:
        lock.release()
    async with open_test_client(make_server(tmp_path, store=url)) as client:
        assert (await client.get("/readyz")).status_code == 200
        # A second Server on the same file, while the first serves.
        with pytest.raises(funtask.ConfigError, match="is in use by test-instance"):
            async with open_test_client(make_server(tmp_path, store=url)):
                pass  # pragma: no cover


async def test_the_database_is_created_private_in_wal_mode(tmp_path: Path) -> None:
    async with open_test_client(make_server(tmp_path)) as client:
        assert (await client.post("/run/quick", json={})).status_code == 200
    path = tmp_path / "db" / "jobs.db"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


# -- results across restarts --------------------------------------------------------


async def test_results_and_duplicates_survive_a_restart(tmp_path: Path) -> None:
    async with open_test_client(make_server(tmp_path, result_history=1)) as client:
        first = await client.post("/run/quick", json={"jobId": "a/1", "params": {"n": 5}})
        assert first.status_code == 200
        assert (await client.post("/run/quick", json={"jobId": "b"})).status_code == 200
    async with open_test_client(make_server(tmp_path, result_history=1)) as client:
        # /result finds every stored result, whatever the history length.
        again = await client.get(f"/result/{quote('a/1', safe='')}")
        assert again.status_code == 200
        assert again.content == first.content
        duplicate = await client.post("/run/quick", json={"jobId": "a/1", "params": {"n": 9}})
        assert duplicate.status_code == 200
        assert duplicate.content == first.content
        health = (await client.get("/health")).json()
        assert health["instance"] == "test-instance"
        assert health["store"] == "ok"
        assert [entry["jobId"] for entry in health["tasks"]["quick"]["results"]] == ["b"]
        assert health["tasks"]["quick"]["lastJob"]["jobId"] == "b"


async def test_memory_health_has_no_store_fields(tmp_path: Path) -> None:
    async with open_test_client(build_server(tmp_path)) as client:
        health = (await client.get("/health")).json()
    assert "instance" not in health and "store" not in health


# -- /stop with a jobId ---------------------------------------------------------------


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_stop_with_a_job_id(autojump_clock: MockClock, tmp_path: Path, store: str) -> None:
    config = {} if store == "memory" else {"store": store_url(tmp_path)}
    async with open_test_client(build_server(tmp_path, **config)) as client:
        async with trio.open_nursery() as nursery:
            answers: list[httpx.Response] = []
            nursery.start_soon(run_and_record, client, "s2", answers)
            await trio.sleep(1)
            other = await client.post("/stop/sleeper?jobId=other")
            assert other.json() == {"task": "sleeper", "message": "No running job"}
            invalid = await client.post("/stop/sleeper", json={"jobId": "bad\x01id"})
            assert invalid.status_code == 400
            assert invalid.json() == {"error": "invalid jobId"}
            by_body = await client.post("/stop/sleeper", json={"jobId": "other"})
            assert by_body.json()["message"] == "No running job"
            ignored = await client.post("/stop/sleeper", content=b"[1, 2]")
            assert ignored.json()["jobId"] == "s2"  # another body is ignored: stops the job
        assert answers[0].json()["error"]["message"] == "job cancelled via /stop"
        async with trio.open_nursery() as nursery:
            answers.clear()
            nursery.start_soon(run_and_record, client, "s3", answers)
            await trio.sleep(1)
            stopped = await client.post("/stop/sleeper?jobId=s3")
            assert stopped.json() == {
                "task": "sleeper",
                "jobId": "s3",
                "message": "Cancellation requested",
            }
        assert answers[0].json()["error"]["code"] == "cancelled"
        async with trio.open_nursery() as nursery:
            answers.clear()
            nursery.start_soon(run_and_record, client, "s4", answers)
            await trio.sleep(1)
            stopped = await client.post("/stop/sleeper", json={"jobId": "s4"})
            assert stopped.json()["jobId"] == "s4"


async def run_and_record(client: httpx.AsyncClient, job_id: str, answers: list[Any]) -> None:
    answers.append(await client.post("/run/sleeper", json={"jobId": job_id}))


# -- webhook-id --------------------------------------------------------------------


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_webhook_id_is_stable_across_retries_and_replay(
    autojump_clock: MockClock, tmp_path: Path, store: str
) -> None:
    config: dict[str, Any] = {"callback_signing_secret": "s3cret", "callback_retries": 3}
    if store == "sqlite":
        config["store"] = store_url(tmp_path)
    else:
        config["store"] = "memory"
    receiver = CallbackReceiver(500)
    server = make_server(tmp_path, **config)
    async with open_test_client(server, callback_transport=receiver.transport()) as client:
        response = await client.post("/run/quick", json={"jobId": "w.1", "callbackUrl": HOOK})
        assert response.status_code == 202
        await wait_idle(client, "quick")
    ids = {attempt.request.headers["webhook-id"] for attempt in receiver.attempts}
    assert len(receiver.attempts) == 3
    assert len(ids) == 1
    (webhook_id,) = ids
    assert "." not in webhook_id
    letters, _ = scan_dead_letters(tmp_path)
    assert [letter.webhook_id for letter in letters] == [webhook_id]
    replayed = CallbackReceiver(200)
    report = await replay_dead_letters(
        str(tmp_path),
        to=None,
        timeout=5,
        signing_secret="s3cret",
        transport=replayed.transport(),
    )
    assert len(report.delivered) == 1
    assert replayed.attempts[0].request.headers["webhook-id"] == webhook_id


# -- outages ------------------------------------------------------------------------


async def test_outage_answers_503_and_recovers(
    autojump_clock: MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "funtask.store")
    server = make_server(tmp_path)
    async with open_test_client(server) as client:
        assert (await client.post("/run/quick", json={"jobId": "before"})).status_code == 200
        break_store(server)
        refused = await client.post("/run/quick", json={"jobId": "during"})
        assert refused.status_code == 503
        assert refused.json() == {"error": "result store unavailable"}
        assert refused.headers["Retry-After"] == "1"
        again = await client.post("/run/quick", json={})
        assert again.status_code == 503
        result = await client.get("/result/before")
        assert result.status_code == 503  # never a false 404
        assert result.json() == {"error": "result store unavailable"}
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"error": "result store unavailable"}
        assert (await client.get("/health")).json()["store"] == "unavailable"
        # Checks 1-5 still come first.
        assert (await client.post("/run/nope", json={})).status_code == 404
        mend_store(server)
        await wait_until(lambda: server._runtime is not None and server._runtime.keeper.ok)
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/result/before")).status_code == 200
        assert (await client.post("/run/quick", json={"jobId": "after"})).status_code == 200
    messages = [record.getMessage() for record in caplog.records if record.name == "funtask.store"]
    assert sum("lost" in message for message in messages) == 1
    assert sum("is back" in message for message in messages) == 1


async def test_a_job_running_through_an_outage_is_answered_and_stored_later(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    receiver = CallbackReceiver(200)
    server = make_server(tmp_path)

    @server.task
    async def slowish(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("waiting")
        await trio.sleep(params.float("seconds", 5))
        return funtask.ok("finished")

    async with open_test_client(server, callback_transport=receiver.transport()) as client:
        async with trio.open_nursery() as nursery:
            answers: list[httpx.Response] = []

            async def sync_run() -> None:
                answers.append(await client.post("/run/slowish", json={"jobId": "sync-1"}))

            nursery.start_soon(sync_run)
            await trio.sleep(1)
            break_store(server)
            await client.get("/result/x")  # notices the outage
        # The sync caller is answered at once; the result waits as an unstored letter.
        assert answers[0].status_code == 200
        assert answers[0].json()["message"] == "finished"
        await wait_until(lambda: scan_dead_letters(tmp_path)[0])
        letters, _ = scan_dead_letters(tmp_path)
        assert [(letter.job_id, letter.unstored) for letter in letters] == [("sync-1", True)]
        async_run = await client.post("/run/quick", json={"jobId": "async-1", "callbackUrl": HOOK})
        assert async_run.status_code == 503  # no new work while the store is away
        mend_store(server)
        await wait_until(lambda: not scan_dead_letters(tmp_path)[0], interval=0.1)
        stored = await client.get("/result/sync-1")
        assert stored.status_code == 200
        assert stored.content == answers[0].content


async def test_callback_waits_for_the_store(autojump_clock: MockClock, tmp_path: Path) -> None:
    receiver = CallbackReceiver(200)
    server = make_server(tmp_path)

    @server.task
    async def later(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        await trio.sleep(5)
        return funtask.ok("late")

    async with open_test_client(server, callback_transport=receiver.transport()) as client:
        response = await client.post("/run/later", json={"jobId": "cb-1", "callbackUrl": HOOK})
        assert response.status_code == 202
        await trio.sleep(1)
        break_store(server)
        await client.get("/result/x")
        await trio.sleep(10)
        assert receiver.attempts == []  # posted only once stored
        letters, _ = scan_dead_letters(tmp_path)
        assert [(letter.job_id, letter.unstored) for letter in letters] == [("cb-1", True)]
        mend_store(server)
        await wait_idle(client, "later")
    assert len(receiver.attempts) == 1
    assert json.loads(receiver.attempts[0].body)["message"] == "late"
    assert scan_dead_letters(tmp_path)[0] == []


# -- the command line ----------------------------------------------------------------


async def test_cli_store_status(
    autojump_clock: MockClock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = store_url(tmp_path)
    server = make_server(tmp_path)
    async with open_test_client(server) as client:
        for job_id in ("x1", "x2"):
            assert (await client.post("/run/quick", json={"jobId": job_id})).status_code == 200
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(client.post, "/run/sleeper", json={"jobId": "zz"}))
            await trio.sleep(2)  # a heartbeat records the instance
            with pytest.raises(SystemExit) as info:
                await run_in_thread(main, ["store", "status", "--store", url])
            assert info.value.code == 0
            await client.post("/stop/sleeper")
    out = capsys.readouterr().out
    assert f"store sqlite://{tmp_path}/db/jobs.db" in out
    assert "1 instance(s)\n  test-instance\tpid " in out
    assert "1 running job(s)\n  sleeper\tjobId='zz'\trunning\t" in out
    assert "2 stored result(s)\n  quick\t2" in out


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--store", "memory"], "the memory store keeps nothing outside"),
        (["--store", "sqlite:///no/such.db"], "does not exist"),
        (["--store", "nope:x"], "unknown scheme"),
        ([], "--store URL or $FUNTASK_STORE required"),
    ],
)
def test_cli_store_status_refusals(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    fragment: str,
) -> None:
    monkeypatch.delenv("FUNTASK_STORE", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["store", "status", *args])
    assert info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_cli_serve_takes_a_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[funtask.Server] = []
    monkeypatch.setattr(funtask.Server, "run", lambda self, bind: served.append(self))
    module = tmp_path / "store_cli_app.py"
    module.write_text("import funtask\nserver = funtask.Server('cli')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    main(["serve", "store_cli_app:server", "--store", "sqlite:///srv/x.db"])
    assert served[0].settings.resolved_store().path == "/srv/x.db"


async def test_replay_skips_superseded_letters(autojump_clock: MockClock, tmp_path: Path) -> None:
    body = {"jobId": "s", "success": True, "duration": "1s"}
    meta = {
        "task": "t",
        "callbackUrl": "https://hooks.example.com/hooks/done",
        "attempts": 0,
        "lastError": "superseded",
        "createdAt": "2026-01-01T00:00:00Z",
        "webhookId": "msg_1",
        "superseded": True,
    }
    await write_dead_letter(tmp_path, "s", body, meta)
    receiver = CallbackReceiver(200)
    report = await replay_dead_letters(
        str(tmp_path), to=None, timeout=5, transport=receiver.transport()
    )
    assert [why for _, why in report.skipped] == ["superseded (another process settled it)"]
    assert receiver.attempts == []
    report = await replay_dead_letters(
        str(tmp_path),
        to=None,
        timeout=5,
        transport=receiver.transport(),
        include_superseded=True,
    )
    assert len(report.delivered) == 1


# -- superseded and unstored results ----------------------------------------------------


async def test_a_late_result_for_a_settled_job_is_superseded(
    autojump_clock: MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = CallbackReceiver(200)
    server = make_server(tmp_path)

    @server.task
    async def later(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        await trio.sleep(5)
        return funtask.ok("late")

    async with open_test_client(server, callback_transport=receiver.transport()) as client:
        response = await client.post("/run/later", json={"jobId": "sup", "callbackUrl": HOOK})
        assert response.status_code == 202
        await trio.sleep(1)
        # Settled elsewhere first (as a sweeper would): the running job's result loses.
        store = sqlite_store(server)
        first = finished_job("later", "sup", funtask.fail("worker_lost", "gone"), 1.0)
        settled = await store.settle("later", "sup", first, webhook_id="msg_a", delivering=False)
        assert settled.status == "ok"
        await wait_idle(client, "later")
        stored = await client.get("/result/sup")
    assert stored.content == first.body  # never stored over the settled one
    assert receiver.attempts == []  # and never posted
    (letter,) = scan_dead_letters(tmp_path)[0]
    assert letter.superseded
    # The heartbeat found the record settled under it and cancelled the job.
    assert letter.body["error"]["message"] == "job cancelled: lease lost"
    assert any(
        "superseded" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records
    )


async def test_unstored_results_are_offered_at_the_next_start(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = make_server(tmp_path, shutdown_timeout=1)

    @server.task
    async def later(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        await trio.sleep(5)
        return funtask.ok("late")

    async with open_test_client(server) as client:
        async with trio.open_nursery() as nursery:
            answers: list[httpx.Response] = []

            async def sync_run() -> None:
                answers.append(await client.post("/run/later", json={"jobId": "un-1"}))

            nursery.start_soon(sync_run)
            await trio.sleep(1)
            break_store(server)
            await client.get("/result/x")
        assert answers[0].json()["message"] == "late"
        await wait_until(lambda: scan_dead_letters(tmp_path)[0])
    # The process stopped with the store still away: the letter waits, unstored.
    (letter,) = scan_dead_letters(tmp_path)[0]
    assert letter.unstored and letter.token
    async with open_test_client(make_server(tmp_path)) as client:
        stored = await client.get("/result/un-1")
    assert stored.status_code == 200
    assert stored.content == answers[0].content  # the real result, not worker_lost
    (letter,) = scan_dead_letters(tmp_path)[0]
    assert not letter.unstored and not letter.superseded
