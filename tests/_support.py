"""Shared builders for the server tests (imported by the test modules)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

import trio

import funtask

TOKEN = "test-token"


def build_server(dead_letter_dir: Path, **config: Any) -> funtask.Server:
    """A server with the tasks most tests use."""
    config.setdefault("auth_token", TOKEN)
    server = funtask.Server("testsrv", dead_letter_dir=dead_letter_dir, **config)

    @server.task(description="Says hello", example={"name": "World"})
    async def greet(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        name = params.str("name", "World")
        run.step("greeting")
        return funtask.ok(f"Hello, {name}!").with_data("name", name)

    @server.task
    async def sleeper(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        seconds = params.float("seconds", 3600)
        run.progress(1, 4, "sleeping")
        await trio.sleep(seconds)
        return funtask.ok("slept")

    return server


async def wait_until(predicate: Any, *, interval: float = 0.01) -> None:
    """Poll ``predicate`` (sync or async) until it is true, sleeping ``interval`` between tries."""
    while True:
        outcome = predicate()
        if hasattr(outcome, "__await__"):
            outcome = await outcome
        if outcome:
            return
        await trio.sleep(interval)


# == Worker processes ============================================================
# The launcher for tests that need a real worker process (signals, exit codes,
# what reaches stderr): test_serving.py, test_shutdown_process.py and
# test_process.py. Kept apart from the builders above.

REPO: Final = Path(__file__).resolve().parent.parent
LISTENING: Final = r"listening on (http://\S+)"  # funtask's line once the socket is bound
WORKER_STARTUP_LIMIT: Final = 30.0  # seconds; a safety net, never a wait for a state


def worker_env(**settings: str) -> dict[str, str]:
    """This environment without ``FUNTASK_*`` variables, unbuffered, plus ``settings``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FUNTASK_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


@dataclass
class WorkerProcess:
    """A worker process started by :func:`worker_process`, serving at ``url``."""

    process: trio.Process
    url: str
    lines: list[str]  # its stdout and stderr, merged, line by line

    def log(self, last: int = 80) -> str:
        """The worker's recent output, for assertion messages."""
        return "\n".join(self.lines[-last:])

    def send(self, signum: int = signal.SIGTERM, *, group: bool = False) -> float:
        """Send ``signum`` to the worker (or its whole process group); return the time sent."""
        sent = trio.current_time()
        if group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)
        return sent

    def sigterm(self, *, group: bool = False) -> float:
        """Send SIGTERM (see :meth:`send`)."""
        return self.send(signal.SIGTERM, group=group)

    async def exit_after(self, sent: float, limit: float, *, code: int = 0) -> float:
        """Wait up to ``limit`` s after ``sent`` for the exit with ``code``; return the seconds."""
        with trio.move_on_after(max(sent + limit - trio.current_time(), 0)):
            await self.process.wait()
        elapsed = trio.current_time() - sent
        assert self.process.returncode is not None, (
            f"worker still running {elapsed:.1f}s after the signal; output:\n{self.log()}"
        )
        assert self.process.returncode == code, (
            f"exit code {self.process.returncode}, not {code}; output:\n{self.log()}"
        )
        return elapsed


@asynccontextmanager
async def worker_process(
    args: list[str],
    *,
    env: dict[str, str],
    pattern: str = LISTENING,
    startup_limit: float = WORKER_STARTUP_LIMIT,
) -> AsyncIterator[WorkerProcess]:
    """Start ``args`` in the repository, in a process group of its own.

    Yields once an output line matches ``pattern``, whose group 1 is the URL;
    fails if the worker exits first. On leaving, the whole group is killed (a
    plain-hypercorn worker is its parent's child).
    """
    lines: list[str] = []
    found = trio.Event()
    url = ""
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                args,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                check=False,
            )
        )

        async def read_output() -> None:
            nonlocal url
            buffer = b""
            assert process.stdout is not None
            async for chunk in process.stdout:
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for raw in complete:
                    line = raw.decode(errors="replace")
                    lines.append(line)
                    match = re.search(pattern, line)
                    if match and not found.is_set():
                        url = match.group(1)
                        found.set()
            found.set()  # end of output: the worker is gone

        nursery.start_soon(read_output)
        try:
            with trio.fail_after(startup_limit):
                await found.wait()
            assert url, "worker exited before it was serving:\n" + "\n".join(lines)
            yield WorkerProcess(process, url, lines)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            nursery.cancel_scope.cancel()
