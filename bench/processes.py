"""The processes of ``python -m bench``: started, watched, measured from /proc, stopped."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def log(message: str) -> None:
    """Progress on stderr (the results go to the Markdown file)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU time of ``pid`` so far (every thread of it), in seconds."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def machine_busy_seconds() -> float:
    """CPU time spent by the whole machine so far (every core, not idle or iowait)."""
    with open("/proc/stat") as file:
        fields = [int(v) for v in file.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU time of this process's waited-for children (wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rss_bytes(pid: int) -> int:
    """The resident set size of ``pid`` (VmRSS)."""
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Service:
    """A process this harness started (a server, the receiver or the SSE clients)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        logdir: Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
        stdout_pipe: bool = False,
        dead_letters: Path | None = None,
        root: Path = REPO,
    ) -> None:
        self.name = name
        self.root = root
        self.argv = argv
        self.port = port
        self.dead_letters = dead_letters
        self.logfile = logdir / f"{name}.log"
        self._log = open(self.logfile, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root), **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if stdout_pipe else self._log,
            stderr=self._log,
            start_new_session=True,
        )
        self._pending = b""

    @property
    def command(self) -> str:
        shown = shlex.join(
            a.replace(sys.executable, "python").replace(str(REPO) + "/", "") for a in self.argv
        )
        return shown if self.root == REPO else f"(cd BASELINE && {shown})"

    def wait_listening(self, timeout: float = 30.0) -> None:
        """Until the port accepts connections."""
        assert self.port is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited early ({self.proc.returncode}):\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen within {timeout} s:\n{self.log_tail()}")

    def worker_pid(self) -> int:
        """hypercorn ``-w 1`` serves from a spawned child; this is its pid."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pid = self.proc.pid
            with open(f"/proc/{pid}/task/{pid}/children") as file:
                children = [int(c) for c in file.read().split()]
            for child in children:
                with open(f"/proc/{child}/cmdline", "rb") as file:
                    if b"spawn_main" in file.read():
                        return child
            time.sleep(0.05)
        raise RuntimeError(f"no hypercorn worker under {self.proc.pid}")

    def read_line(self, timeout: float) -> str:
        """One line of the process's stdout (``stdout_pipe=True``)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no output from {self.name} in {timeout} s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
                self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode()

    def count(self) -> dict[str, Any]:
        """Ask ``bench.sse_clients`` for its frame and byte counts so far."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"count\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.read_line(30)))

    def finish(self) -> dict[str, Any]:
        """Close an idle ``bench.sse_clients``'s stdin; its final report."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return dict(json.loads(self.read_line(30)))

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL the process group it leads if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored SIGTERM for {timeout} s; killing its group")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log.close()


def find_tool(name: str) -> str | None:
    """``name`` on the PATH, or beside this Python (a venv's ``bin``: py-spy from pip)."""
    found = shutil.which(name)
    if found is None:
        beside = Path(sys.executable).parent / name
        found = str(beside) if beside.exists() else None
    return found
