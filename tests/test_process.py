"""Where funtask owns the process (``server.run``, the CLI): start-up failures,
default logging, and the exit watchdog; plus the drain details they rely on."""

from __future__ import annotations

import errno
import logging
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from trio.testing import MockClock

import funtask
from funtask._process import ExitWatchdog, default_logging
from funtask.testing import open_test_client

from _support import REPO, TOKEN, build_server, worker_env, worker_process

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

RUN_LIMIT = 60  # seconds; a safety net for a process that should exit at once

# The three ways a worker owns its process, each with its listen address last.
RUN_SCRIPT = "import sys; from examples.counter import server; server.run(sys.argv[1])"
ENTRY_POINTS = {
    "server.run": [sys.executable, "-c", RUN_SCRIPT],
    "cli": [sys.executable, "-m", "funtask", "serve", "examples.counter:server", "--bind"],
    "example": [sys.executable, "examples/counter.py"],
}
# The same, with socket.bind refusing as it does for a non-root user on port 80.
REFUSE_BIND = (
    "import errno, os, runpy, socket, sys\n"
    "def refuse(self, address):\n"
    "    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))\n"
    "socket.socket.bind = refuse\n"
    "target, sys.argv = sys.argv[1], sys.argv[1:]\n"
    "if target == '-m':\n"
    "    sys.argv = sys.argv[1:]\n"
    "    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
    "elif target == '-c':\n"
    "    sys.argv = sys.argv[1:]\n"
    "    exec(sys.argv[0])\n"
    "else:\n"
    "    runpy.run_path(target, run_name='__main__')\n"
)


def settings(tmp_path: Path) -> dict[str, str]:
    return worker_env(FUNTASK_AUTH_TOKEN=TOKEN, FUNTASK_DEAD_LETTER_DIR=str(tmp_path))


async def run_to_exit(args: list[str], tmp_path: Path) -> tuple[int, str, str]:
    """Run ``args`` to its end; return (exit code, stdout, stderr)."""
    with trio.fail_after(RUN_LIMIT):
        done = await trio.run_process(
            args,
            cwd=REPO,
            env=settings(tmp_path),
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.fixture
def busy_address() -> Iterator[str]:
    """An address on which another socket is listening."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield f"127.0.0.1:{holder.getsockname()[1]}"


# -- start-up failures: one line, exit status 2 ---------------------------------


def assert_one_line(code: int, stdout: str, stderr: str, pattern: str) -> None:
    """Exit status 2 and exactly one line on stderr, matching ``pattern``."""
    assert code == 2, stderr
    assert len(stderr.splitlines()) == 1, stderr
    assert re.fullmatch(pattern, stderr.rstrip("\n")), stderr
    assert "listening" not in stdout + stderr
    assert "serving on" not in stdout  # examples/counter.py says nothing before binding


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
async def test_port_in_use_is_one_line_and_exit_2(
    entry: str, tmp_path: Path, busy_address: str
) -> None:
    code, stdout, stderr = await run_to_exit([*ENTRY_POINTS[entry], busy_address], tmp_path)
    expected = f"funtask: cannot listen on {busy_address}: address already in use"
    assert_one_line(code, stdout, stderr, re.escape(expected))


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
async def test_unresolvable_bind_is_one_line_and_exit_2(entry: str, tmp_path: Path) -> None:
    address = "nosuchhost.invalid:8080"
    code, stdout, stderr = await run_to_exit([*ENTRY_POINTS[entry], address], tmp_path)
    # The resolver's words vary ("name or service not known", "temporary failure
    # in name resolution", ...): one lowercase line naming the address.
    assert_one_line(
        code, stdout, stderr, r"funtask: cannot listen on nosuchhost\.invalid:8080: [a-z][^\n]+"
    )


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
async def test_permission_denied_is_one_line_and_exit_2(entry: str, tmp_path: Path) -> None:
    # Tests may run as root, where binding port 80 works: socket.bind is made to
    # refuse as the kernel does for other users (EACCES), in the worker process.
    args = [sys.executable, "-c", REFUSE_BIND, *ENTRY_POINTS[entry][1:], "127.0.0.1:80"]
    code, stdout, stderr = await run_to_exit(args, tmp_path)
    expected = "funtask: cannot listen on 127.0.0.1:80: permission denied"
    assert_one_line(code, stdout, stderr, re.escape(expected))


def unprivileged_port_start() -> int | None:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return None


def test_permission_denied_on_a_privileged_port() -> None:
    # The real thing: the CLI run by a user who may not bind port 80 (as root,
    # the worker runs as "nobody"; the dead-letter dir is made theirs).
    start = unprivileged_port_start()
    if start is None or start <= 80:
        pytest.skip(f"every user may bind port 80 here (ip_unprivileged_port_start={start})")
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("running as root and there is no user 'nobody' to run the worker as")
    with tempfile.TemporaryDirectory() as directory:
        if user is not None:
            os.chown(directory, user.pw_uid, user.pw_gid)
        try:
            done = subprocess.run(
                [*ENTRY_POINTS["cli"], "127.0.0.1:80"],
                cwd=REPO,
                env=settings(Path(directory)),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=RUN_LIMIT,
                check=False,
                user=None if user is None else user.pw_uid,
                group=None if user is None else user.pw_gid,
                extra_groups=None if user is None else [],
            )
        except PermissionError as exc:  # e.g. an interpreter under /root
            pytest.skip(f"user 'nobody' cannot start this Python: {exc}")
    expected = "funtask: cannot listen on 127.0.0.1:80: permission denied"
    assert_one_line(done.returncode, done.stdout, done.stderr, re.escape(expected))


async def test_malformed_bind_is_one_line_and_exit_2(tmp_path: Path) -> None:
    code, stdout, stderr = await run_to_exit([*ENTRY_POINTS["cli"], "127.0.0.1:99999"], tmp_path)
    assert_one_line(
        code, stdout, stderr, r"funtask: cannot listen on 127\.0\.0\.1:99999: [^\n]*65535"
    )


async def test_serve_raises_one_oserror_before_starting_anything(
    tmp_path: Path, busy_address: str
) -> None:
    entered: list[str] = []

    @asynccontextmanager
    async def lifespan(server: funtask.Server) -> Any:
        entered.append("lifespan")
        yield

    server = build_server(tmp_path, lifespan=lifespan)
    with pytest.raises(OSError) as raised:
        await server.serve(["127.0.0.1:0", busy_address])
    assert type(raised.value) is not BaseExceptionGroup
    assert str(raised.value) == f"cannot listen on {busy_address}: address already in use"
    assert raised.value.errno == errno.EADDRINUSE
    assert entered == []  # nothing was started
    assert server._runtime is None


# -- logging where the script configured none ---------------------------------------


async def test_run_logs_where_it_listens_and_the_shutdown(tmp_path: Path) -> None:
    args = [*ENTRY_POINTS["server.run"], "127.0.0.1:0"]
    async with worker_process(args, env=settings(tmp_path)) as worker:
        sent = worker.sigterm()
        await worker.exit_after(sent, RUN_LIMIT)
    lines = worker.lines
    assert any(
        re.search(r" INFO funtask\.server: server 'counter' listening on http://127\.0\.0\.1:", x)
        for x in lines
    ), worker.log()
    assert any("received SIGTERM" in line for line in lines), worker.log()
    assert any("server 'counter' draining" in line for line in lines), worker.log()
    assert any("server 'counter' stopped after draining for" in line for line in lines)


async def test_run_leaves_an_applications_logging_alone(tmp_path: Path) -> None:
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, format='APP %(name)s %(message)s')\n"
        "from examples.counter import server\n"
        "server.run(sys.argv[1])\n"
    )
    args = [sys.executable, "-c", code, "127.0.0.1:0"]
    async with worker_process(args, env=settings(tmp_path)) as worker:
        sent = worker.sigterm()
        await worker.exit_after(sent, RUN_LIMIT)
    listening = [line for line in worker.lines if "listening on" in line]
    assert len(listening) == 1, worker.log()  # the application's handler only, once
    assert listening[0].startswith("APP funtask.server server 'counter' listening on http://")


@contextmanager
def bare_logging() -> Iterator[logging.Logger]:
    """The ``funtask`` logger as in a script that configured no logging.

    pytest's capture handlers on the root logger are set aside in place and
    put back (pytest adds them around each test phase, so not in a fixture).
    """
    root, package = logging.getLogger(), logging.getLogger("funtask")
    saved = root.handlers[:], package.handlers[:], package.level
    root.handlers.clear()
    package.handlers.clear()
    package.setLevel(logging.NOTSET)
    try:
        yield package
    finally:
        root.handlers[:], package.handlers[:] = saved[0], saved[1]
        package.setLevel(saved[2])


def test_default_logging_adds_a_stderr_handler_only_while_serving() -> None:
    with bare_logging() as package:
        with default_logging():
            [handler] = package.handlers
            assert type(handler) is logging.StreamHandler
            assert handler.stream is sys.stderr
            assert package.level == logging.INFO
        assert package.handlers == []
        assert package.level == logging.NOTSET


def test_default_logging_keeps_a_level_the_application_chose() -> None:
    with bare_logging() as package:
        package.setLevel(logging.WARNING)
        with default_logging():
            assert len(package.handlers) == 1
            assert package.level == logging.WARNING
        assert package.level == logging.WARNING


@pytest.mark.parametrize("where", ["root", "funtask"])
def test_default_logging_never_touches_configured_logging(where: str) -> None:
    with bare_logging() as package:
        configured = logging.getLogger() if where == "root" else package
        own = logging.NullHandler()
        configured.addHandler(own)
        with default_logging():
            assert configured.handlers == [own]
            assert package.level == logging.NOTSET
            if where == "root":
                assert package.handlers == []


# -- the exit watchdog ---------------------------------------------------------------


def fake_runtime(*stuck: tuple[str, str]) -> Any:
    jobs = [SimpleNamespace(task=SimpleNamespace(name=task), job_id=job) for task, job in stuck]
    return SimpleNamespace(name="w", stuck_jobs=lambda: jobs)


def watch(runtime: Any, *, disarm: bool = False) -> list[int]:
    exits: list[int] = []
    watchdog = ExitWatchdog(0.05, exit_process=exits.append)
    if disarm:
        watchdog.disarm()
    watchdog.arm(runtime)
    assert isinstance(watchdog.thread, threading.Thread)
    watchdog.thread.join(RUN_LIMIT)
    return exits


def test_watchdog_names_stuck_jobs_and_exits_0(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="funtask"):
        assert watch(fake_runtime(("a", "j1"), ("b", "j/2"))) == [0]
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        "server 'w' exiting with 2 job(s) still running: a 'j1', b 'j/2' (they ignored "
        "cancellation; their worker_shutdown results are settled)"
    )


def test_watchdog_does_nothing_once_the_server_stopped() -> None:
    assert watch(fake_runtime(("a", "j1")), disarm=True) == []


def test_watchdog_does_nothing_without_stuck_jobs(caplog: pytest.LogCaptureFixture) -> None:
    assert watch(fake_runtime()) == []
    assert caplog.records == []


# -- the drain that the watchdog follows ----------------------------------------------


async def test_stuck_jobs_after_the_drain_and_a_second_drain_at_once(
    autojump_clock: MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = build_server(tmp_path, shutdown_timeout=5, sync_timeout=1)

    @server.task
    async def stubborn(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("ignoring")
        with trio.CancelScope(shield=True):
            await trio.sleep(60)
        return funtask.ok("finally")

    with caplog.at_level(logging.INFO, logger="funtask"):
        async with open_test_client(server) as client:
            response = await client.post("/run/stubborn", json={"jobId": "held"})
            assert response.status_code == 504  # the task ignores the cancellation
            runtime = server._runtime
            assert runtime is not None
            assert runtime.stuck_jobs() == []  # not before the drain
            began = trio.current_time()
            await runtime.drain()
            assert trio.current_time() - began == pytest.approx(5)
            assert [job.job_id for job in runtime.stuck_jobs()] == ["held"]
            again = trio.current_time()
            await runtime.drain()  # the first drain settled everything: no second wait
            assert trio.current_time() == again
            assert (await client.get("/result/held")).json()["error"]["code"] == (
                "worker_shutdown"
            )
    messages = [record.getMessage() for record in caplog.records]
    assert "server 'testsrv' draining (shutdown timeout 5s)" in messages
    # The runtime closes once the task returns (60 s in): the whole shutdown is logged.
    assert any(m.startswith("server 'testsrv' stopped after draining for ") for m in messages)


async def test_sigint_to_run_still_exits_0(tmp_path: Path) -> None:
    args = [*ENTRY_POINTS["server.run"], "127.0.0.1:0"]
    async with worker_process(args, env=settings(tmp_path)) as worker:
        sent = worker.send(signal.SIGINT)
        await worker.exit_after(sent, RUN_LIMIT)
    assert not any("Traceback" in line for line in worker.lines), worker.log()
