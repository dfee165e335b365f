"""The Redis store against a real redis-server: scripts, leases, recovery, outages."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import funtask
from funtask._stores.base import HeldJob, StoreUnavailable
from funtask._stores.redis import RedisStore
from funtask._stores.url import parse_store_url
from funtask._wire import finished_job

from _redis import RedisServer, free_port, redis_cluster, redis_process

pytest.importorskip("coredis")


def make_store(url: str, **options: Any) -> RedisStore:
    options.setdefault("name", "pool")
    options.setdefault("instance", "test:1")
    options.setdefault("result_history", 10)
    options.setdefault("store_timeout", 2.0)
    return RedisStore(parse_store_url(url), **options)


@asynccontextmanager
async def opened(url: str, **options: Any) -> AsyncIterator[RedisStore]:
    store = make_store(url, **options)
    async with store:
        yield store


def ok(job_id: str, message: str = "done") -> funtask.Result:
    return funtask.ok(message)


async def test_claim_once_then_running_then_stored(redis_server: RedisServer) -> None:
    async with opened(redis_server.url) as one, opened(redis_server.url, instance="b") as two:
        claim = await one.claim("t", "j1", callback_url=None)
        assert claim.status == "claimed"
        assert claim.job.token == one.token
        # The same claim again (a lost answer) finds its own token.
        assert (await one.claim("t", "j1", callback_url=None)).status == "claimed"
        other = await two.claim("t", "j1", callback_url=None)
        assert other.status == "running"
        assert other.job.instance == "test:1"
        record = finished_job("t", "j1", funtask.ok("hi"), 0.5)
        settled = await one.settle("t", "j1", record, webhook_id="msg_1", delivering=False)
        assert settled.status == "ok"
        again = await one.settle("t", "j1", record, webhook_id="msg_1", delivering=False)
        assert again.status == "ok"
        stored = await two.claim("t", "j1", callback_url=None)
        assert stored.status == "stored"
        assert stored.job.result is not None
        assert stored.job.result.body == record.body
        # Another task may use the same jobId.
        assert (await two.claim("u", "j1", callback_url=None)).status == "claimed"
        assert int(redis_server.cli("TTL", "{funtask:pool}:job:t:j1")) > 0
        assert redis_server.cli("TTL", "{funtask:pool}:job:u:j1") == "-1"


async def test_settle_is_compare_and_set(redis_server: RedisServer) -> None:
    async with opened(redis_server.url) as one, opened(redis_server.url, instance="b") as two:
        await one.claim("t", "j", callback_url="http://cb.example/x")
        mine = finished_job("t", "j", funtask.ok("mine"), 1)
        theirs = finished_job("t", "j", funtask.fail("x", "theirs"), 1)
        lost = await two.settle("t", "j", theirs, webhook_id="msg_2", delivering=True)
        assert lost.status == "superseded"
        settled = await one.settle("t", "j", mine, webhook_id="msg_1", delivering=True)
        assert settled.status == "ok"
        assert settled.job is not None and settled.job.state == "delivering"
        found = await two.lookup("j")
        assert found is not None and found.state == "delivering"
        assert found.webhook_id == "msg_1"
        # A different body with the same token is not the same settle.
        other = await one.settle("t", "j", theirs, webhook_id="msg_3", delivering=True)
        assert other.status == "superseded"
        await one.delivered("t", "j", outcome="delivered", attempts=2)
        done = await two.find("t", "j")
        assert done is not None and done.state == "done"
        assert done.delivery == "delivered" and done.attempts == 2
        assert redis_server.cli("ZCARD", "{funtask:pool}:leases") == "0"


async def test_lookup_history_and_release(redis_server: RedisServer) -> None:
    async with opened(redis_server.url, result_history=2) as store:
        assert await store.lookup("nope") is None
        for index in range(3):
            job_id = f"j{index}"
            await store.claim("t", job_id, callback_url=None)
            record = finished_job("t", job_id, funtask.ok(str(index)), 0.1)
            await store.settle("t", job_id, record, webhook_id=f"msg_{index}", delivering=False)
        history = await store.history("t", 10)
        assert [r.job_id for r in history] == ["j2", "j1"]
        # Every result stays found for result_ttl, whatever the history length.
        found = await store.lookup("j0")
        assert found is not None and found.result is not None
        assert found.result.result.message == "0"
        await store.claim("t", "unstarted", callback_url=None)
        await store.release("t", "unstarted")
        assert await store.find("t", "unstarted") is None


async def test_heartbeat_stop_lost_and_write_back(redis_server: RedisServer) -> None:
    async with opened(redis_server.url) as one, opened(redis_server.url, instance="b") as two:
        await one.claim("t", "a", callback_url=None)
        await one.claim("t", "b", callback_url=None)
        held = [HeldJob("t", "a", "step one"), HeldJob("t", "b")]
        beat = await one.heartbeat(held)
        assert not beat.stop and not beat.lost
        assert [job.job_id for job in await two.request_stop("t", "a")] == ["a"]
        # Without a jobId and two jobs running: nothing flagged, both named.
        assert {job.job_id for job in await two.request_stop("t", None)} == {"a", "b"}
        assert await two.request_stop("t", "nope") == []
        after = await one.heartbeat(held)
        assert after.stop == {("t", "a")}
        assert after.version > beat.version
        found = await two.find("t", "a")
        assert found is not None and found.last_step == "step one"
        status = await two.status()
        assert {job.job_id for job in status.running} == {"a", "b"}
        assert {info.instance for info in status.instances} == {"test:1"}
        # Redis restarted empty: the heartbeat writes the records back.
        redis_server.flush()
        again = await one.heartbeat(held)
        assert not again.lost
        restored = await two.find("t", "b")
        assert restored is not None and restored.token == one.token
        # A settled (delivering) record is written back with its result, found again.
        record = finished_job("t", "a", funtask.ok("kept"), 0.1)
        await one.settle("t", "a", record, webhook_id="msg_k", delivering=True)
        redis_server.flush()
        assert not (await one.heartbeat([HeldJob("t", "a")])).lost
        kept = await two.lookup("a")
        assert kept is not None and kept.state == "delivering" and kept.webhook_id == "msg_k"
        assert [r.job_id for r in await two.history("t", 5)] == ["a"]
        await one.delivered("t", "a", outcome="delivered", attempts=1)
        assert not (await one.heartbeat([HeldJob("t", "a")])).lost
        # A record now holding another token is reported lost.
        assert not (await one.heartbeat(held)).lost  # b written back after the flush
        redis_server.cli("HSET", "{funtask:pool}:job:t:b", "token", "someone-else")
        assert (await one.heartbeat(held)).lost == {("t", "b")}


async def test_recover_settles_worker_lost_once(redis_server: RedisServer) -> None:
    async with (
        opened(redis_server.url, store_lease=1.0) as dead,
        opened(redis_server.url, store_lease=1.0, instance="b") as one,
        opened(redis_server.url, store_lease=1.0, instance="c") as two,
    ):
        await dead.claim("t", "lost", callback_url="http://cb.example/x")
        await dead.claim("t", "sync", callback_url=None)
        await dead.heartbeat([HeldJob("t", "lost", "half way"), HeldJob("t", "sync")])
        assert await one.recover() == []
        await trio.sleep(1.2)
        first, second = await one.recover(), await two.recover()
        assert second == []
        by_id = {job.job_id: job for job in first}
        assert by_id["lost"].state == "delivering"
        assert by_id["lost"].token == one.token
        assert by_id["sync"].state == "done"
        result = by_id["lost"].result
        assert result is not None
        assert result.response["error"] == {
            "code": "worker_lost",
            "message": "worker stopped while the job was running",
            "step": "half way",
        }
        # The recovering replica's heartbeat renews the lease while it delivers.
        beat = await one.heartbeat([HeldJob("t", "lost")])
        assert not beat.lost
        await trio.sleep(0.5)
        assert await two.recover() == []
        # The dead owner, back from a pause, cannot settle any more.
        late = finished_job("t", "lost", funtask.ok("late"), 5)
        settled = await dead.settle("t", "lost", late, webhook_id="msg_x", delivering=True)
        assert settled.status == "superseded"
        await one.delivered("t", "lost", outcome="dead_lettered", attempts=3)
        assert (await two.lookup("lost")) is not None


async def test_outage_and_reconnect(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "coredis")
    async with opened(redis_server.url, store_timeout=0.5) as store:
        assert await store.check()
        redis_server.stop()
        with pytest.raises(StoreUnavailable):
            await store.claim("t", "j", callback_url=None)
        assert not await store.check()
        with pytest.raises(StoreUnavailable):
            await store.lookup("j")
        redis_server.start()
        for _ in range(200):  # the supervisor's backoff is at most 5 s
            if await store.check():
                break
            await trio.sleep(0.05)
        assert (await store.claim("t", "j", callback_url=None)).status == "claimed"
    assert not [r for r in caplog.records if r.name == "coredis" and "Connection" in r.msg]


async def test_start_while_unreachable_then_recover() -> None:
    port = free_port()
    async with opened(f"redis://127.0.0.1:{port}", store_timeout=0.5) as store:
        assert not await store.check()
        with pytest.raises(StoreUnavailable):
            await store.claim("t", "j", callback_url=None)


async def test_wrong_password_is_a_config_error() -> None:
    with redis_process("--requirepass", "s3cret") as server:
        url = f"redis://:wrong@127.0.0.1:{server.port}"
        with pytest.raises(funtask.ConfigError, match="authentication") as caught:
            async with opened(url):
                pass  # pragma: no cover
        assert "wrong" not in str(caught.value)
        async with opened(f"redis://:s3cret@127.0.0.1:{server.port}") as store:
            assert await store.check()


async def test_not_redis_is_a_config_error() -> None:
    async def http(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, http, 0)
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(funtask.ConfigError, match="not a Redis server"):
            async with opened(f"redis://127.0.0.1:{port}", store_timeout=1):
                pass  # pragma: no cover
        nursery.cancel_scope.cancel()


async def test_eviction_policy_is_checked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "funtask.store")
    with redis_process("--maxmemory-policy", "allkeys-lru") as server:
        async with opened(server.url):
            pass
    assert any("noeviction" in r.getMessage() for r in caplog.records)


async def test_mock_clock_stands_still(redis_server: RedisServer, autojump_clock: Any) -> None:
    async with opened(redis_server.url) as store:
        before = trio.current_time()
        for index in range(20):
            await store.claim("t", f"j{index}", callback_url=None)
        assert trio.current_time() == before


async def test_redis_cluster() -> None:
    with redis_cluster() as nodes:
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in nodes[:2])
        async with opened(url) as one, opened(url, instance="b") as two:
            assert (await one.claim("t", "j", callback_url=None)).status == "claimed"
            assert (await two.claim("t", "j", callback_url=None)).status == "running"
            beat = await one.heartbeat([HeldJob("t", "j", "in a cluster")])
            assert not beat.lost
            record = finished_job("t", "j", funtask.ok("clustered"), 0.2)
            settled = await one.settle("t", "j", record, webhook_id="msg_c", delivering=False)
            assert settled.status == "ok"
            found = await two.lookup("j")
            assert found is not None and found.result is not None
            assert found.result.body == record.body
            assert [r.job_id for r in await two.history("t", 5)] == ["j"]
            assert await two.recover() == []


async def test_rediss_checks_the_certificate_and_the_host_name(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=funtask-test-ca",
        # What Python 3.13's strict verification (VERIFY_X509_STRICT) requires of a CA.
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    )
    (tmp_path / "ext").write_text(
        "subjectAltName=DNS:localhost\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "ext",
    )
    tls_port = free_port()
    with redis_process(
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(tmp_path / "server.pem"),
        "--tls-key-file",
        str(tmp_path / "server.key"),
        "--tls-ca-cert-file",
        str(tmp_path / "ca.pem"),
        "--tls-auth-clients",
        "no",
    ):
        ca = tmp_path / "ca.pem"
        async with opened(f"rediss://localhost:{tls_port}?ssl_ca_certs={ca}") as store:
            assert (await store.claim("t", "tls", callback_url=None)).status == "claimed"
        # The certificate names localhost, not 127.0.0.1: the host name is checked.
        with pytest.raises(funtask.ConfigError, match="certificate verification failed"):
            async with opened(f"rediss://127.0.0.1:{tls_port}?ssl_ca_certs={ca}"):
                pass  # pragma: no cover
        # Without the test CA, the server's certificate is not trusted.
        with pytest.raises(funtask.ConfigError, match="certificate verification failed"):
            async with opened(f"rediss://localhost:{tls_port}"):
                pass  # pragma: no cover


async def test_concurrent_claims_and_settles_share_calls(redis_server: RedisServer) -> None:
    async with opened(redis_server.url) as one, opened(redis_server.url, instance="b") as two:
        await two.claim("t", "theirs", callback_url=None)
        redis_server.cli("CONFIG", "RESETSTAT")
        claims: dict[str, str] = {}
        settles: dict[str, str] = {}

        async def run(job_id: str) -> None:
            claims[job_id] = (await one.claim("t", job_id, callback_url=None)).status
            record = finished_job("t", job_id, funtask.ok(job_id), 0.1)
            settled = await one.settle("t", job_id, record, webhook_id="w", delivering=False)
            settles[job_id] = settled.status

        async with trio.open_nursery() as nursery:
            for index in range(20):
                nursery.start_soon(run, f"j{index}")
            nursery.start_soon(run, "theirs")
        assert claims.pop("theirs") == "running"
        assert settles.pop("theirs") == "superseded"
        assert set(claims.values()) == {"claimed"} and len(claims) == 20
        assert set(settles.values()) == {"ok"}
        found = await two.lookup("j7")
        assert found is not None and found.result is not None
        assert found.result.result.message == "j7"
        commands = redis_server.cli("INFO", "commandstats")
        evalsha = next(line for line in commands.splitlines() if "evalsha" in line)
        calls = int(evalsha.split("calls=")[1].split(",")[0])
        assert calls < 20, evalsha  # 42 claims and settles, batched


def launched(redis_server: RedisServer, job_id: str) -> str:
    return redis_server.cli("HGET", "{funtask:pool}:job:t:" + job_id, "launched")


async def test_status_counts_results_until_they_expire(redis_server: RedisServer) -> None:
    async with opened(redis_server.url, result_history=2, result_ttl=2.0) as store:

        async def store_results(*job_ids: str) -> None:
            for job_id in job_ids:
                await store.claim("t", job_id, callback_url=None)
                record = finished_job("t", job_id, funtask.ok(job_id), 0.1)
                await store.settle("t", job_id, record, webhook_id="w", delivering=False)

        await store_results("a1", "a2", "a3")
        await trio.sleep(1.3)
        await store_results("b1", "b2")
        # Every stored result, not the history's two.
        assert dict((await store.status()).results) == {"t": 5}
        assert len(await store.history("t", 10)) == 2
        assert 0 < int(redis_server.cli("PTTL", "{funtask:pool}:done:t")) <= 2000
        await trio.sleep(1.0)  # a1..a3 expired (finished + 2 s), b1 and b2 not yet
        assert dict((await store.status()).results) == {"t": 2}
        assert await store.lookup("a1") is None
        # Settling prunes the expired members; the set expires with its newest one.
        await store_results("c1")
        assert redis_server.cli("ZCARD", "{funtask:pool}:done:t") == "3"
        await trio.sleep(2.1)
        assert dict((await store.status()).results) == {}
        assert redis_server.cli("EXISTS", "{funtask:pool}:done:t") == "0"


async def test_a_claim_that_never_started_is_deleted_not_settled(
    redis_server: RedisServer,
) -> None:
    async with (
        opened(redis_server.url, store_lease=1.0) as dead,
        opened(redis_server.url, store_lease=1.0, instance="b") as sweeper,
    ):
        # A claim whose answer was lost: the script ran, the caller never heard back
        # (it answered 503 and would have released it, but the process died first).
        key = dead._job_key("t", "lost-answer")
        args = [dead.token, dead.instance, "t:lost-answer", dead._lease_ms, "t", "lost-answer"]
        answer = await dead._script(
            "claim", "CLAIM", [key, dead._leases, dead._version], [*args, "", ""]
        )
        assert answer[0] == "claimed"
        assert launched(redis_server, "lost-answer") == "0"
        # A claim answered: its job starts. Without a callback it is marked with the
        # next batch of claims and settles or the next heartbeat...
        await dead.claim("t", "sync", callback_url=None)
        assert launched(redis_server, "sync") == "0"
        await dead.claim("t", "other", callback_url=None)
        assert launched(redis_server, "sync") == "1"
        assert launched(redis_server, "other") == "0"
        # ...the heartbeat marks the answered claims it holds, never the lost one
        # (its slot is still reserved while the claim is in flight).
        held = [HeldJob("t", "other"), HeldJob("t", "lost-answer")]
        assert not (await dead.heartbeat(held)).lost
        assert launched(redis_server, "other") == "1"
        assert launched(redis_server, "lost-answer") == "0"
        # With a callback, before the claim returns (before the 202).
        await dead.claim("t", "cb", callback_url="http://cb.example/x")
        assert launched(redis_server, "cb") == "1"
        await trio.sleep(1.2)  # every lease expires: the process is gone
        swept = {job.job_id: job for job in await sweeper.recover()}
        assert sorted(swept) == ["cb", "other", "sync"]
        for job in swept.values():
            assert job.result is not None
            assert job.result.result.error_code == "worker_lost"
        # The never-started claim: no result, no record, no lease; the jobId is free.
        assert await sweeper.find("t", "lost-answer") is None
        assert await sweeper.lookup("lost-answer") is None
        assert redis_server.cli("ZSCORE", "{funtask:pool}:leases", "t:lost-answer") == ""
        assert await sweeper.recover() == []
        status = await sweeper.status()
        assert dict(status.results) == {"t": 3}
        assert {job.job_id for job in status.running} == {"cb"}  # delivering
        claim = await sweeper.claim("t", "lost-answer", callback_url=None)
        assert claim.status == "claimed" and claim.job.token == sweeper.token
        # Its owner, back, cannot release what is no longer its claim.
        await dead.release("t", "lost-answer")
        assert await sweeper.find("t", "lost-answer") is not None


async def test_release_keeps_a_launched_claim(redis_server: RedisServer) -> None:
    async with opened(redis_server.url) as store:
        await store.claim("t", "started", callback_url="http://cb.example/x")
        assert launched(redis_server, "started") == "1"
        await store.release("t", "started")
        assert await store.find("t", "started") is not None
