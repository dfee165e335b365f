"""funtask's speed benchmark: the overhead around the user's function, against our own stack.

    python bench/run.py                      # every case, ~5 minutes, writes bench/RESULTS.md
    python bench/run.py --quick              # every case, shorter (~1.5 minutes), prints only
    python bench/run.py --case overhead --case memory [--output FILE]
    python bench/run.py --case metrics --baseline DIR   # DIR: a checkout of another commit
    python bench/run.py --case store --baseline DIR     # memory vs SQLite store (vs DIR)
    python bench/run.py --case redis         # memory vs Redis store (needs redis-server)
    python bench/run.py --case tracing --rounds 60      # opentelemetry-api vs none vs an SDK

Every server runs as its own process on loopback under the same hypercorn
trio worker (``python -m hypercorn -k trio -w 1 --bind 127.0.0.1:PORT
bench.apps:APP``); HTTP load comes from ``wrk`` (C, so the load generator is
not what is measured). See ``bench/README.md`` for what each case does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import resource
import secrets
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.lean import Connection, request_once  # noqa: E402

BENCH = REPO / "bench"
HOST = "127.0.0.1"
CASES = (
    "overhead",
    "metrics",
    "store",
    "redis",
    "tracing",
    "progress",
    "health",
    "fanout",
    "memory",
    "async",
)
PACKAGES = ("funtask", "trio", "hypercorn", "quart", "quart-trio", "werkzeug", "h11", "httpx")
WRK_THREADS = 2
WRK_CONNECTIONS = 16


def log(message: str) -> None:
    """Progress on stderr (the results go to the Markdown file)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- settings ---------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """How long and how big each case is (``--quick`` shrinks them)."""

    quick: bool
    warmup: int = 2  # seconds of wrk per server before measuring
    rounds: int = 20  # overhead: interleaved rounds, each server once per round
    round_seconds: int = 1  # wrk takes whole seconds
    health_rounds: int = 5
    progress_calls: int = 100_000  # per timed job (tight loops)
    progress_repeats: int = 8  # best of
    progress_yielding_calls: int = 50_000  # the yielding loop also serves the subscribers
    subscribers: tuple[int, ...] = (0, 10, 1000)
    health_tasks: int = 50
    health_results: int = 100
    fanout_seconds: float = 5.0
    fanout_clients: int = 500
    fanout_pairs: int = 3  # quiet/loaded runs, alternated
    memory_checkpoints: tuple[int, ...] = (16, 1_000, 10_000, 25_000, 50_000, 75_000, 100_000)
    async_jobs: int = 1_000
    async_tasks: int = 10

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if not quick:
            return cls(quick=False)
        return cls(
            quick=True,
            warmup=1,
            rounds=2,
            round_seconds=1,
            progress_calls=50_000,
            progress_repeats=3,
            progress_yielding_calls=20_000,
            health_rounds=2,
            fanout_seconds=2.0,
            fanout_pairs=1,
            memory_checkpoints=(16, 1_000, 5_000, 10_000),
            async_jobs=200,
        )


# -- processes ----------------------------------------------------------------------


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
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
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


class Harness:
    """Shared state of one run: the token, temp dirs, services and the commands used."""

    def __init__(self, settings: Settings, baseline: Path | None = None) -> None:
        self.settings = settings
        self.baseline = baseline  # another checkout whose servers run beside this one's
        self.token = "bench-" + secrets.token_hex(12)
        self.tmp = Path(tempfile.mkdtemp(prefix="funtask-bench-"))
        self.logdir = self.tmp / "logs"
        self.logdir.mkdir()
        self.commands: list[str] = []
        self.services: list[Service] = []
        self.scratch: list[Path] = []  # dead-letter dirs outside self.tmp (tmpfs)

    def note(self, command: str) -> None:
        command = command.replace(self.token, "$TOKEN")
        if command not in self.commands:
            self.commands.append(command)

    def start_server(
        self,
        app: str,
        *,
        env: dict[str, str] | None = None,
        dead_letter_parent: Path | None = None,
        root: Path = REPO,
        cpu: int | None = None,
    ) -> Service:
        """``python -m hypercorn -k trio -w 1 --bind 127.0.0.1:PORT bench.apps:APP``.

        ``root`` is the checkout whose ``funtask`` and ``bench.apps`` are served; with
        ``cpu`` the server (and its worker process) runs on that CPU only (``taskset``).
        """
        port = free_port()
        parent = dead_letter_parent or self.tmp
        dead_letters = Path(tempfile.mkdtemp(prefix=f"dead-letters-{app}-", dir=parent))
        self.scratch.append(dead_letters)
        argv = [] if cpu is None else ["taskset", "-c", str(cpu)]
        argv += [sys.executable, "-m", "hypercorn", "-k", "trio", "-w", "1"]
        argv += ["--bind", f"{HOST}:{port}", f"bench.apps:{app}"]
        service = Service(
            f"{app}-{port}",
            argv,
            logdir=self.logdir,
            port=port,
            dead_letters=dead_letters,
            root=root,
            env={
                "FUNTASK_AUTH_TOKEN": self.token,
                "FUNTASK_DEAD_LETTER_DIR": str(dead_letters),
                **(env or {}),
            },
        )
        self.services.append(service)
        service.wait_listening()
        self.note(service.command.replace(f":{port}", ":PORT"))
        return service

    def start_clients(
        self, port: int, clients: int, *, watch: str = "", path: str = "/events"
    ) -> Service:
        """``python -m bench.sse_clients``: ``clients`` idle stream readers; waits until ready."""
        argv = [sys.executable, "-m", "bench.sse_clients", "--port", str(port)]
        argv += ["--token", self.token, "--clients", str(clients)]
        if path != "/events":
            argv += ["--path", path]
        if watch:
            argv += ["--watch", watch, "--timeout", "10"]
        service = Service(
            f"sse-clients-{clients}", argv, logdir=self.logdir, stdout_pipe=True, port=port
        )
        self.services.append(service)
        shown = service.command.replace(f"--port {port}", "--port PORT")
        self.note(shown.replace(watch, "JOBID") if watch else shown)
        line = service.read_line(120)
        _, ready, failed, errors = line.split(" ", 3)
        if int(ready) != clients:
            raise RuntimeError(
                f"{ready} of {clients} /events clients connected, {failed} failed: {errors}"
            )
        return service

    def stop(self, service: Service) -> None:
        service.stop()
        if service in self.services:
            self.services.remove(service)

    def close(self) -> None:
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                service.stop()
        for path in [*self.scratch, self.tmp]:
            shutil.rmtree(path, ignore_errors=True)

    # -- wrk -----------------------------------------------------------------------

    def wrk_argv(
        self,
        url: str,
        seconds: int,
        *,
        script: str | None = None,
        script_args: tuple[str, ...] = (),
        auth_header: bool = False,
    ) -> list[str]:
        """The wrk command line (noted for the report)."""
        argv = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency"]
        argv += ["--timeout", "10s"]
        if auth_header:
            argv += ["-H", f"Authorization: Bearer {self.token}"]
        if script:
            argv += ["-s", str(BENCH / script)]
        argv.append(url)
        if script_args:
            argv += ["--", *script_args]
        shown = shlex.join(argv).replace(str(REPO) + "/", "")
        shown = re.sub(r" -d\d+s ", " -dNs ", shown.replace(self.token, "$TOKEN"))
        self.note(re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", shown))
        return argv

    def wrk(
        self,
        url: str,
        seconds: int,
        *,
        script: str | None = None,
        script_args: tuple[str, ...] = (),
        auth_header: bool = False,
        pid: int | None = None,
    ) -> dict[str, Any]:
        """Run wrk; parse its report; add the server CPU per request when ``pid`` is given."""
        argv = self.wrk_argv(
            url, seconds, script=script, script_args=script_args, auth_header=auth_header
        )
        cpu_before = cpu_seconds(pid) if pid else 0.0
        busy_before, wrk_before = machine_busy_seconds(), children_cpu_seconds()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        cpu_after = cpu_seconds(pid) if pid else 0.0
        busy = machine_busy_seconds() - busy_before
        wrk_cpu = children_cpu_seconds() - wrk_before
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}{done.stdout}")
        result = parse_wrk(done.stdout)
        if pid and result["requests"]:
            result["server_cpu_us_per_request"] = (
                (cpu_after - cpu_before) / result["requests"] * 1e6
            )
            result["server_cpu_busy"] = (cpu_after - cpu_before) / result["seconds"]
            # CPU the rest of the machine used meanwhile (other people's processes), in cores.
            other = busy - wrk_cpu - (cpu_after - cpu_before)
            result["other_cores"] = max(other, 0.0) / result["seconds"]
            result["wrk_cores"] = wrk_cpu / result["seconds"]
        return result


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, p50/p99 latency (ms), request count, non-2xx and socket errors."""
    result: dict[str, Any] = {"non_2xx": 0, "socket_errors": 0, "raw": output}
    match = re.search(r"(\d+) requests in ([\d.]+)(m?s|m)", output)
    if not match:
        raise ValueError(f"unexpected wrk output:\n{output}")
    result["requests"] = int(match.group(1))
    result["seconds"] = float(match.group(2)) * (60.0 if match.group(3) == "m" else 1.0)
    if match.group(3) == "ms":
        result["seconds"] /= 1000
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not rate:
        raise ValueError(f"no Requests/sec in wrk output:\n{output}")
    result["rps"] = float(rate.group(1))
    for percent in ("50", "75", "90", "99"):
        found = re.search(rf"^\s+{percent}%\s+(\S+)", output, re.MULTILINE)
        if found:
            result[f"p{percent}_ms"] = _ms(found.group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        result["non_2xx"] = int(non_2xx.group(1))
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if errors:
        result["socket_errors"] = sum(int(n) for n in errors.groups())
    return result


# -- lean async drivers ----------------------------------------------------------------


def call(port: int, method: str, path: str, token: str, payload: Any = None) -> tuple[int, Any]:
    """One request from this process (setup, checks and sync task runs)."""
    return trio.run(lambda: request_once(port, method, path, token=token, payload=payload))


def get_json(port: int, path: str, token: str) -> Any:
    """GET ``path``; its JSON body (anything but 200 is an error)."""
    status, body = call(port, "GET", path, token)
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}: {body!r}")
    return body


def run_task(port: int, token: str, task: str, params: dict[str, Any], **extra: Any) -> Any:
    """POST /run/task synchronously; the result's data."""
    status, body = call(port, "POST", f"/run/{task}", token, {"params": params, **extra})
    if status != 200 or not isinstance(body, dict) or not body.get("success"):
        raise RuntimeError(f"/run/{task} answered {status}: {body!r}")
    return body.get("data", {})


async def drive_jobs(
    port: int,
    token: str,
    tasks: list[str],
    total: int,
    *,
    make_body: Callable[[str, int], bytes] = lambda task, n: b'{"params":{}}',
    per_task: bool = False,
) -> dict[str, int]:
    """Run ``total`` sync jobs, one keep-alive connection per task; count the statuses.

    With ``per_task`` every task runs ``total // len(tasks)`` of them; otherwise the
    connections share the total.
    """
    statuses: dict[str, int] = {}
    issued = 0
    headers = {"Authorization": f"Bearer {token}"}

    async def worker(task: str) -> None:
        nonlocal issued
        connection = await Connection.open(HOST, port)
        mine = 0
        try:
            while (mine < total // len(tasks)) if per_task else (issued < total):
                issued += 1
                mine += 1
                status, _ = await connection.request(
                    "POST", f"/run/{task}", make_body(task, issued), headers
                )
                statuses[str(status)] = statuses.get(str(status), 0) + 1
        finally:
            await connection.aclose()

    async with trio.open_nursery() as nursery:
        for task in tasks:
            nursery.start_soon(worker, task)
    return statuses


# -- case 1: request overhead --------------------------------------------------------------


@dataclass
class Target:
    """One server measured by :func:`interleaved`: a label, a URL and how to call wrk."""

    key: str
    label: str
    url: str
    pid: int
    wrk: dict[str, Any] = field(default_factory=dict)


def interleaved(
    h: Harness, name: str, targets: list[Target], rounds_count: int, warmup: int
) -> dict[str, dict[str, Any]]:
    """Warm each target up, then measure them in rounds, order rotated each round.

    The machine's speed drifts over seconds, so short rounds side by side compare
    the servers under the same conditions far better than one long run each.
    Returns per target: requests/s over all rounds, mean p50/p99, server CPU per
    request, non-2xx and socket errors, and each round's requests/s.
    """
    s = h.settings
    for target in targets:
        log(f"{name}: warm-up {target.label}")
        h.wrk(target.url, warmup, **target.wrk)
    rounds: dict[str, list[dict[str, Any]]] = {t.key: [] for t in targets}
    for index in range(rounds_count):
        shift = index % len(targets)
        for target in targets[shift:] + targets[:shift]:
            result = h.wrk(target.url, s.round_seconds, pid=target.pid, **target.wrk)
            rounds[target.key].append(result)
        log(f"{name}: round {index + 1}/{rounds_count} done")
    summary: dict[str, dict[str, Any]] = {}
    for target in targets:
        runs = rounds[target.key]
        requests = sum(r["requests"] for r in runs)
        seconds = sum(r["seconds"] for r in runs)
        summary[target.key] = {
            "label": target.label,
            "rps": requests / seconds,
            "p50_ms": statistics.mean(r["p50_ms"] for r in runs),
            "p99_ms": statistics.mean(r["p99_ms"] for r in runs),
            "requests": requests,
            "non_2xx": sum(r["non_2xx"] for r in runs),
            "socket_errors": sum(r["socket_errors"] for r in runs),
            "cpu_us": statistics.mean(r["server_cpu_us_per_request"] for r in runs),
            "busy": statistics.mean(r["server_cpu_busy"] for r in runs),
            "rounds_rps": [r["rps"] for r in runs],
            "rounds_cpu_us": [r["server_cpu_us_per_request"] for r in runs],
            "other_cores": statistics.mean(r["other_cores"] for r in runs),
            "wrk_cores": statistics.mean(r["wrk_cores"] for r in runs),
        }
    return summary


def round_ratios(
    summary: dict[str, dict[str, Any]], top: str, bottom: str, figure: str = "rounds_rps"
) -> list[float]:
    """Each round's requests/s (or another per-round ``figure``) of ``top`` over ``bottom``."""
    return [a / b for a, b in zip(summary[top][figure], summary[bottom][figure], strict=True)]


def case_overhead(h: Harness) -> dict[str, Any]:
    apps = [
        ("raw_asgi", "raw ASGI"),
        ("quart_app", "quart-trio route"),
        ("overhead", "funtask /run (greet)"),
    ]
    post = {
        "script": "post.lua",
        "script_args": (str(WRK_CONNECTIONS // WRK_THREADS), h.token),
    }
    targets = []
    for app, label in apps:
        server = h.start_server(app)
        assert server.port is not None
        status, body = call(
            server.port, "POST", "/run/greet3", h.token, {"params": {"name": "g3"}}
        )
        expected = "Hello, g3!" if app == "overhead" else "Hello, g0!"
        if status != 200 or body.get("message") != expected:
            raise RuntimeError(f"{app}: unexpected answer {status} {body!r}")
        url = f"http://{HOST}:{server.port}"
        targets.append(Target(app, label, url, server.worker_pid(), post))
    summary: dict[str, Any] = interleaved(
        h, "overhead", targets, h.settings.rounds, h.settings.warmup
    )
    for service in list(h.services):
        h.stop(service)
    summary["ratio_quart"] = summary["overhead"]["rps"] / summary["quart_app"]["rps"]
    summary["ratio_raw"] = summary["overhead"]["rps"] / summary["raw_asgi"]["rps"]
    summary["ratio_quart_raw"] = summary["quart_app"]["rps"] / summary["raw_asgi"]["rps"]
    summary["round_ratios_quart"] = round_ratios(summary, "overhead", "quart_app")
    return summary


# -- case 1b: the cost of metrics -------------------------------------------------------------


def baseline_label(path: Path) -> str:
    """The commit of a baseline checkout (git, or the BASELINE_COMMIT file), else its path."""
    done = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    if done.returncode == 0 and not str(path.resolve()).startswith(str(REPO)):
        return done.stdout.strip()
    marker = path / "BASELINE_COMMIT"
    return marker.read_text().strip() if marker.exists() else str(path)


def hook_costs(loops: int = 20_000, repeats: int = 7) -> dict[str, float]:
    """µs per job spent in the observer hooks (metrics on, and the no-op observer), best of N.

    Measured in this process on the observer itself: the hooks one sync ``/run`` calls
    (job started, job scope, job finished, run answered). Unlike requests/s on a shared
    machine, this is stable enough to see a microsecond.
    """

    async def measure() -> dict[str, float]:
        from examples.counter import greet
        from funtask import ok
        from funtask._jobs import Job
        from funtask._metrics import Metrics
        from funtask._observe import NO_OBSERVER, Observer
        from funtask._params import Params
        from funtask._run import Run
        from funtask._tasks import TaskDef
        from funtask._wire import finished_job

        task = TaskDef("greet0", greet)
        job = Job(task, "j", Params({}), Run("greet0", "j"), callback_url=None, max_duration=None)
        record = finished_job("greet0", "j", ok("hi"), 0.0001)
        metrics = Metrics(
            tasks=["greet0"], name="bench", instance="bench:1", version="0", dead_letter_dir=None
        )

        def per_job(observer: Observer) -> float:
            began = time.perf_counter()
            for _ in range(loops):
                observer.job_started(job)
                with observer.job_scope(job):
                    pass
                observer.job_finished(job, record, 0.0001)
                observer.run_answered("greet0", 200)
            return (time.perf_counter() - began) / loops * 1e6

        return {
            label: min(per_job(observer) for _ in range(repeats))
            for label, observer in (("on", metrics), ("off", NO_OBSERVER))
        }

    return trio.run(measure)


def case_metrics(h: Harness) -> dict[str, Any]:
    """Trivial sync ``/run`` with metrics on (the default) vs ``metrics=False``, interleaved.

    With ``--baseline DIR`` the same server from another checkout (e.g. the commit
    before metrics existed) runs in the same rounds, to show the hot path's cost.
    """
    apps = [("on", "overhead", "metrics on (default)", REPO)]
    apps.append(("off", "overhead_nometrics", "metrics=False", REPO))
    # The same server twice: how far two identical servers differ here (the noise).
    apps.append(("off2", "overhead_nometrics", "metrics=False, a second copy", REPO))
    if h.baseline is not None:
        label = f"baseline {baseline_label(h.baseline)} (no metrics)"
        apps.append(("base", "overhead", label, h.baseline))
    post = {
        "script": "post.lua",
        "script_args": (str(WRK_CONNECTIONS // WRK_THREADS), h.token),
    }
    # Servers compared process against process differ by several per cent for reasons
    # of their own (where the scheduler puts them, string hashing): every one runs on
    # the same CPU with the same hash seed.
    cpu = max(os.sched_getaffinity(0)) if shutil.which("taskset") else None
    targets = []
    for key, app, label, root in apps:
        server = h.start_server(app, root=root, cpu=cpu, env={"PYTHONHASHSEED": "0"})
        assert server.port is not None
        status, body = call(
            server.port, "POST", "/run/greet3", h.token, {"params": {"name": "g3"}}
        )
        if status != 200 or body.get("message") != "Hello, g3!":
            raise RuntimeError(f"{label}: unexpected answer {status} {body!r}")
        scraped, _ = call(server.port, "GET", "/metrics", h.token)
        if scraped != (200 if key == "on" else 404):
            raise RuntimeError(f"{label}: /metrics answered {scraped}")
        url = f"http://{HOST}:{server.port}"
        targets.append(Target(key, label, url, server.worker_pid(), post))
    summary: dict[str, Any] = interleaved(
        h, "metrics", targets, h.settings.rounds, h.settings.warmup
    )
    for service in list(h.services):
        h.stop(service)
    summary["keys"] = [key for key, *_ in apps]
    summary["hooks_us"] = hook_costs()
    summary["ratio_rps"] = summary["on"]["rps"] / summary["off"]["rps"]
    summary["ratio_cpu"] = summary["on"]["cpu_us"] / summary["off"]["cpu_us"]
    summary["round_ratios"] = round_ratios(summary, "on", "off")
    summary["round_cpu_ratios"] = round_ratios(summary, "on", "off", "rounds_cpu_us")
    summary["aa_rps"] = summary["off2"]["rps"] / summary["off"]["rps"]
    summary["aa_cpu"] = summary["off2"]["cpu_us"] / summary["off"]["cpu_us"]
    summary["round_cpu_ratios_aa"] = round_ratios(summary, "off2", "off", "rounds_cpu_us")
    if "base" in summary:
        summary["off_vs_base_rps"] = summary["off"]["rps"] / summary["base"]["rps"]
        summary["off_vs_base_cpu"] = summary["off"]["cpu_us"] / summary["base"]["cpu_us"]
        summary["on_vs_base_cpu"] = summary["on"]["cpu_us"] / summary["base"]["cpu_us"]
        summary["round_ratios_base"] = round_ratios(summary, "off", "base")
        summary["round_cpu_ratios_base"] = round_ratios(summary, "off", "base", "rounds_cpu_us")
    return summary


# -- case 1c: the cost of a store ----------------------------------------------------------


def case_store(h: Harness) -> dict[str, Any]:
    """Trivial sync ``/run``: the memory store (default) vs the SQLite store, interleaved.

    With ``--baseline DIR`` the memory server of another checkout (the commit before
    stores existed) runs in the same rounds, to show the memory store's cost.
    """
    database = Path(tempfile.mkdtemp(prefix="funtask-bench-store-", dir=REPO / "bench"))
    h.scratch.append(database)
    apps = [("memory", "memory store (default)", REPO, "memory")]
    apps.append(("sqlite", "SQLite store (WAL, synchronous=NORMAL)", REPO, ""))
    if h.baseline is not None:
        apps.append(("base", f"baseline {baseline_label(h.baseline)}", h.baseline, "memory"))
    post = {
        "script": "post.lua",
        "script_args": (str(WRK_CONNECTIONS // WRK_THREADS), h.token),
    }
    cpu = max(os.sched_getaffinity(0)) if shutil.which("taskset") else None
    targets = []
    for key, label, root, store in apps:
        env = {"PYTHONHASHSEED": "0", "FUNTASK_STORE": store or f"sqlite://{database}/jobs.db"}
        server = h.start_server("overhead", root=root, cpu=cpu, env=env)
        assert server.port is not None
        status, body = call(
            server.port, "POST", "/run/greet3", h.token, {"params": {"name": "g3"}}
        )
        if status != 200 or body.get("message") != "Hello, g3!":
            raise RuntimeError(f"{label}: unexpected answer {status} {body!r}")
        health = get_json(server.port, "/health", h.token)
        if ("store" in health) != (key == "sqlite"):
            raise RuntimeError(f"{label}: /health store field {health.get('store')!r}")
        url = f"http://{HOST}:{server.port}"
        targets.append(Target(key, label, url, server.worker_pid(), post))
    summary: dict[str, Any] = interleaved(
        h, "store", targets, h.settings.rounds, h.settings.warmup
    )
    for service in list(h.services):
        h.stop(service)
    summary["keys"] = [key for key, *_ in apps]
    summary["ratio_rps"] = summary["sqlite"]["rps"] / summary["memory"]["rps"]
    summary["ratio_cpu"] = summary["sqlite"]["cpu_us"] / summary["memory"]["cpu_us"]
    summary["round_ratios"] = round_ratios(summary, "sqlite", "memory")
    if "base" in summary:
        summary["memory_vs_base_rps"] = summary["memory"]["rps"] / summary["base"]["rps"]
        summary["memory_vs_base_cpu"] = summary["memory"]["cpu_us"] / summary["base"]["cpu_us"]
        summary["round_ratios_base"] = round_ratios(summary, "memory", "base")
    return summary


# -- case 1d: the Redis store ------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(h: Harness) -> Iterator[str]:
    """A ``redis-server`` of the harness's own on a free loopback port, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="redis-", dir=h.tmp))
    argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(directory), "--maxmemory-policy", "noeviction"]
    h.note(shlex.join(argv).replace(str(port), "REDISPORT").replace(str(directory), "DIR"))
    with open(h.logdir / "redis-server.log", "wb") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://{HOST}:{port}"
    finally:
        process.kill()
        process.wait()


def case_redis(h: Harness) -> dict[str, Any]:
    """Trivial sync ``/run`` with the memory store vs the Redis store on loopback, interleaved."""
    post = {
        "script": "post.lua",
        "script_args": (str(WRK_CONNECTIONS // WRK_THREADS), h.token),
    }
    # The funtask servers share the last CPU (as in case 1b); redis-server may use any.
    cpu = max(os.sched_getaffinity(0)) if shutil.which("taskset") else None
    with redis_server(h) as url:
        apps = [
            ("memory", "memory store (default)", {}),
            ("redis", "Redis store (loopback)", {"FUNTASK_STORE": url}),
        ]
        targets = []
        for key, label, env in apps:
            server = h.start_server("overhead", cpu=cpu, env={"PYTHONHASHSEED": "0", **env})
            assert server.port is not None
            status, body = call(
                server.port, "POST", "/run/greet3", h.token, {"params": {"name": "g3"}}
            )
            if status != 200 or body.get("message") != "Hello, g3!":
                raise RuntimeError(f"{label}: unexpected answer {status} {body!r}")
            health = get_json(server.port, "/health", h.token)
            if (key == "redis") != (health.get("store") == "ok"):
                raise RuntimeError(f"{label}: /health says store={health.get('store')!r}")
            targets.append(
                Target(key, label, f"http://{HOST}:{server.port}", server.worker_pid(), post)
            )
        summary: dict[str, Any] = interleaved(
            h, "redis", targets, h.settings.rounds, h.settings.warmup
        )
        for service in list(h.services):
            h.stop(service)
    summary["ratio_rps"] = summary["redis"]["rps"] / summary["memory"]["rps"]
    summary["ratio_cpu"] = summary["redis"]["cpu_us"] / summary["memory"]["cpu_us"]
    summary["round_ratios"] = round_ratios(summary, "redis", "memory")
    return summary


# -- case 1e: the cost of tracing -------------------------------------------------------------


def tracing_hook_costs(loops: int = 20_000, repeats: int = 7) -> dict[str, float]:
    """µs per job in the tracing observer's hooks, best of N, timed in this process.

    The hooks one sync ``/run`` calls, as the runner calls them: ``none`` is the no-op
    observer (no package), ``api`` the tracing observer without an SDK (no
    ``traceparent`` in the request), ``api_forward`` the same with a valid
    ``traceparent`` and ``tracestate`` (validated and kept for a callback), ``sdk``
    with an SDK configured (a ``BatchSpanProcessor`` whose exporter discards spans);
    ``metrics`` and ``metrics_api`` are the default server's observers without and
    with the package (metrics alone, and metrics and tracing fanned out).
    The SDK is set as the global provider only after the other figures.
    """

    async def measure() -> dict[str, float]:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
        from werkzeug.datastructures import Headers

        from examples.counter import greet
        from funtask import ok
        from funtask._jobs import Job
        from funtask._metrics import Metrics
        from funtask._observe import NO_OBSERVER, Observer, combine_observers
        from funtask._params import Params
        from funtask._run import Run
        from funtask._tasks import TaskDef
        from funtask._tracing import Tracing
        from funtask._wire import finished_job

        task = TaskDef("greet0", greet)
        params = Params({})
        record = finished_job("greet0", "j", ok("hi"), 0.0001)
        plain = Headers({"Content-Type": "application/json", "Authorization": "Bearer x"})
        traced = plain.copy()
        traced["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        traced["tracestate"] = "rojo=00f067aa0ba902b7"

        def per_job(observer: Observer, headers: Headers) -> float:
            jobs = [
                Job(task, "j", params, Run("greet0", "j"), callback_url=None, max_duration=None)
                for _ in range(loops)
            ]
            began = time.perf_counter()
            for job in jobs:
                run = job.run
                job.request_headers = headers
                observer.job_started(job)
                job.request_headers = None
                run._on_step = observer.job_steps(job)
                with observer.job_scope(job):
                    run.step("greeting")
                observer.job_finished(job, record, 0.0001)
                observer.run_answered("greet0", 200)
            return (time.perf_counter() - began) / loops * 1e6

        tracing = Tracing("bench")
        metrics = Metrics(
            tasks=["greet0"], name="bench", instance="bench:1", version="0", dead_letter_dir=None
        )
        both = combine_observers([metrics, tracing])  # the default server's observer
        costs = {
            label: min(per_job(observer, headers) for _ in range(repeats))
            for label, observer, headers in (
                ("none", NO_OBSERVER, plain),
                ("api", tracing, plain),
                ("api_forward", tracing, traced),
                ("metrics", metrics, plain),
                ("metrics_api", both, plain),
            )
        }

        class Discard(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Discard()))
        trace.set_tracer_provider(provider)
        traced_by_sdk = Tracing("bench")  # looks at the global provider when made
        costs["sdk"] = min(per_job(traced_by_sdk, traced) for _ in range(repeats))
        provider.shutdown()
        return costs

    return trio.run(measure)


def case_tracing(h: Harness) -> dict[str, Any]:
    """Trivial sync ``/run``: opentelemetry-api installed (no SDK) vs blocked vs an SDK.

    The same server (``bench.apps:overhead``) five times, side by side in interleaved
    rounds: twice with the API as installed here and no SDK; twice with every
    ``opentelemetry`` import blocked in the server process (as without the package);
    and with an SDK configured (``FUNTASK_BENCH_OTEL``, see bench/apps.py).
    """
    # Two processes of each kind: identical servers differ by several per cent here
    # for reasons of their own (placement in memory), so each kind is the mean of two.
    apps = [
        ("api", "", "opentelemetry-api, no SDK"),
        ("none", "block", "no opentelemetry (imports blocked)"),
        ("api2", "", "opentelemetry-api, no SDK, a second copy"),
        ("none2", "block", "no opentelemetry, a second copy"),
        ("sdk", "sdk", "SDK configured (spans discarded)"),
    ]
    post = {
        "script": "post.lua",
        "script_args": (str(WRK_CONNECTIONS // WRK_THREADS), h.token),
    }
    cpu = max(os.sched_getaffinity(0)) if shutil.which("taskset") else None
    targets = []
    for key, mode, label in apps:
        env = {"PYTHONHASHSEED": "0"}
        if mode:
            env["FUNTASK_BENCH_OTEL"] = mode
        server = h.start_server("overhead", cpu=cpu, env=env)
        assert server.port is not None
        status, body = call(
            server.port, "POST", "/run/greet3", h.token, {"params": {"name": "g3"}}
        )
        if status != 200 or body.get("message") != "Hello, g3!":
            raise RuntimeError(f"{label}: unexpected answer {status} {body!r}")
        h.note(f"FUNTASK_BENCH_OTEL={mode or '(unset)'}: {label}")
        url = f"http://{HOST}:{server.port}"
        targets.append(Target(key, label, url, server.worker_pid(), post))
    summary: dict[str, Any] = interleaved(
        h, "tracing", targets, h.settings.rounds, h.settings.warmup
    )
    for service in list(h.services):
        h.stop(service)
    summary["keys"] = [key for key, *_ in apps]
    summary["hooks_us"] = tracing_hook_costs()
    for key in ("api", "none"):  # the mean of the two copies, round by round
        pair = (summary[key], summary[key + "2"])
        summary[key + "_mean"] = {
            "label": pair[0]["label"] + " (mean of both copies)",
            "rps": statistics.mean(p["rps"] for p in pair),
            "cpu_us": statistics.mean(p["cpu_us"] for p in pair),
            "rounds_rps": [
                (a + b) / 2
                for a, b in zip(pair[0]["rounds_rps"], pair[1]["rounds_rps"], strict=True)
            ],
            "rounds_cpu_us": [
                (a + b) / 2
                for a, b in zip(pair[0]["rounds_cpu_us"], pair[1]["rounds_cpu_us"], strict=True)
            ],
        }
    for top, bottom in (
        ("api_mean", "none_mean"),
        ("api2", "api"),
        ("none2", "none"),
        ("sdk", "none_mean"),
    ):
        summary[f"{top}_rps"] = summary[top]["rps"] / summary[bottom]["rps"]
        summary[f"{top}_cpu"] = summary[top]["cpu_us"] / summary[bottom]["cpu_us"]
        summary[f"{top}_round_cpu"] = round_ratios(summary, top, bottom, "rounds_cpu_us")
        summary[f"{top}_round_rps"] = round_ratios(summary, top, bottom)
        summary[f"{top}_delta_us"] = summary[top]["cpu_us"] - summary[bottom]["cpu_us"]
    return summary


# -- case 2: progress cost -----------------------------------------------------------------


PROGRESS_VARIANTS = (
    ("tight", "progress(i, n) in a loop, no yield", {"batch": 0}),
    ("message", "progress(i, n, msg) with a new message each call", {"batch": 0, "message": True}),
    ("yielding", "progress(i, n), yielding to Trio every 1,000 calls", {"batch": 1000}),
)


def case_progress(h: Harness) -> dict[str, Any]:
    """One ``progress`` server per subscriber count, each with its subscribers connected
    all along; the timed jobs go round the servers in turn (the machine's speed drifts,
    so the counts are compared side by side rather than one after the other)."""
    s = h.settings
    servers: dict[int, Service] = {}
    clients: list[Service] = []
    for subscribers in s.subscribers:
        servers[subscribers] = server = h.start_server("progress")
        assert server.port is not None
        if subscribers:
            log(f"progress: connecting {subscribers} /events subscribers")
            clients.append(h.start_clients(server.port, subscribers))
    results: dict[str, Any] = {
        "calls": s.progress_calls,
        "repeats": s.progress_repeats,
        "yielding_calls": s.progress_yielding_calls,
        "by_subscribers": {n: {} for n in s.subscribers},
    }
    for index in range(s.progress_repeats):
        order = (
            s.subscribers[index % len(s.subscribers) :]
            + s.subscribers[: index % len(s.subscribers)]
        )
        for subscribers in order:
            row = results["by_subscribers"][subscribers]
            for key, _, params in PROGRESS_VARIANTS:
                yielding = key == "yielding"
                if yielding and index > 0:
                    continue  # one job: between batches it also serves every subscriber
                calls = s.progress_yielding_calls if yielding else s.progress_calls
                port = servers[subscribers].port
                assert port is not None
                data = run_task(port, h.token, "spin", {"n": calls, **params})
                data["all"] = [data["ns_per_call"]]
                if key in row:
                    data["all"] = row[key]["all"] + data["all"]
                    if row[key]["ns_per_call"] <= data["ns_per_call"]:
                        row[key]["all"] = data["all"]
                        continue
                row[key] = data
        log(
            f"progress: round {index + 1}/{s.progress_repeats}: "
            + ", ".join(
                f"{n} subscribers {results['by_subscribers'][n]['tight']['all'][-1]:.0f} ns"
                for n in s.subscribers
            )
        )
    for service in clients:
        h.stop(service)
    for server in servers.values():
        h.stop(server)
    zero = results["by_subscribers"][s.subscribers[0]]
    most = results["by_subscribers"][s.subscribers[-1]]
    results["ratio"] = {
        key: most[key]["ns_per_call"] / zero[key]["ns_per_call"] for key, _, _ in PROGRESS_VARIANTS
    }
    return results


# -- case 3: /health cost ------------------------------------------------------------------


def case_health(h: Harness) -> dict[str, Any]:
    """/health with empty and full history, and the floors sending as many bytes, side by side."""
    s = h.settings
    empty = h.start_server("health")
    full = h.start_server("health")
    assert empty.port is not None and full.port is not None
    results: dict[str, Any] = {"tasks": s.health_tasks, "results_per_task": s.health_results}
    body = get_json(empty.port, "/health", h.token)
    results["empty_bytes"] = len(json.dumps(body, separators=(",", ":")).encode())
    log(f"health: filling {s.health_tasks} x {s.health_results} results")
    tasks = [f"t{i:02d}" for i in range(s.health_tasks)]
    began = time.perf_counter()
    total = s.health_tasks * s.health_results
    statuses = trio.run(partial(drive_jobs, full.port, h.token, tasks, total, per_task=True))
    results["fill_seconds"] = time.perf_counter() - began
    results["fill_statuses"] = statuses
    body = get_json(full.port, "/health", h.token)
    counts = [len(doc.get("results", [])) for doc in body["tasks"].values()]
    results["history_min"], results["history_max"] = min(counts), max(counts)
    size = len(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())
    results["full_bytes"] = size
    auth = {"auth_header": True}
    targets = [
        Target(
            "empty",
            "/health, empty history",
            f"http://{HOST}:{empty.port}/health",
            empty.worker_pid(),
            auth,
        ),
        Target(
            "full",
            f"/health, {s.health_results} results per task",
            f"http://{HOST}:{full.port}/health",
            full.worker_pid(),
            auth,
        ),
    ]
    for key, app, label in (
        ("floor", "raw_asgi", "floor: raw ASGI, same size"),
        ("quart_floor", "quart_app", "floor: quart-trio route, same size"),
    ):
        floor = h.start_server(app)
        url = f"http://{HOST}:{floor.port}/blob?n={size}"
        targets.append(Target(key, label, url, floor.worker_pid(), auth))
    results.update(interleaved(h, "health", targets, s.health_rounds, 1))
    for service in list(h.services):
        h.stop(service)
    results["ratio_floor"] = results["full"]["rps"] / results["floor"]["rps"]
    results["ratio_quart_floor"] = results["full"]["rps"] / results["quart_floor"]["rps"]
    results["ratio_empty"] = results["full"]["rps"] / results["empty"]["rps"]
    return results


# -- case 4: SSE fan-out --------------------------------------------------------------------


def case_fanout(h: Harness) -> dict[str, Any]:
    """The fanout task alone and with N /events clients, alternated; then the floors' SSE cost.

    Two servers: one without clients, one with N clients connected (afresh for
    every run, each watching for that run's job to end). The runs alternate,
    quiet then loaded, so a drift of the machine's speed hits both alike; the
    slowdown is the median over the pairs.
    """
    s = h.settings
    quiet = h.start_server("progress")
    loaded_server = h.start_server("progress")
    assert quiet.port is not None and loaded_server.port is not None
    params = {"seconds": s.fanout_seconds, "every": 100}
    pairs: list[dict[str, Any]] = []
    for index in range(s.fanout_pairs):
        log(f"fanout {index + 1}/{s.fanout_pairs}: {s.fanout_seconds:g} s, no clients")
        alone = run_task(quiet.port, h.token, "fanout", params)
        job_id = "fanout-" + secrets.token_hex(6)
        clients = h.start_clients(loaded_server.port, s.fanout_clients, watch=job_id)
        before = clients.count()
        log(f"fanout {index + 1}/{s.fanout_pairs}: with {s.fanout_clients} clients")
        loaded = run_task(loaded_server.port, h.token, "fanout", params, jobId=job_id)
        report = json.loads(clients.read_line(30))
        h.stop(clients)
        delays = [(t - loaded["end_monotonic"]) * 1000 for t in report["seen"]]
        frames = report["frames"] - before["frames"]
        # The server thread's CPU outside the task's own loop went to the streams, less
        # what the loop's checkpoints cost alone (per call, from the quiet run).
        idle_per_call = (alone["server_cpu_seconds"] - alone["task_cpu_seconds"]) / alone["calls"]
        sse_cpu = (
            loaded["server_cpu_seconds"]
            - loaded["task_cpu_seconds"]
            - loaded["calls"] * idle_per_call
        )
        # The task's share of the thread's CPU: what the streams took from it, measured
        # inside one run, so the machine's speed drifting between runs cancels out.
        share_alone = alone["task_cpu_seconds"] / alone["server_cpu_seconds"]
        share_loaded = loaded["task_cpu_seconds"] / loaded["server_cpu_seconds"]
        pairs.append(
            {
                "alone": alone,
                "loaded": loaded,
                "share_alone": share_alone,
                "share_loaded": share_loaded,
                "slowdown": 1 - share_loaded / share_alone,
                "calls_slowdown": 1 - loaded["calls_per_second"] / alone["calls_per_second"],
                "received": len(delays),
                "delay_ms": {
                    "min": min(delays) if delays else None,
                    "p50": statistics.median(delays) if delays else None,
                    "max": max(delays) if delays else None,
                },
                "frames": frames,
                "frame_bytes": (report["bytes"] - before["bytes"]) / max(frames, 1),
                "frames_per_second": frames / loaded["seconds"],
                "us_per_frame": sse_cpu / max(frames, 1) * 1e6,
                "client_cpu_seconds": report["cpu_seconds"],
            }
        )
        log(
            f"fanout {index + 1}/{s.fanout_pairs}: slowdown {pairs[-1]['slowdown']:.1%} "
            f"(calls/s {pairs[-1]['calls_slowdown']:.1%})"
        )
    h.stop(loaded_server)
    h.stop(quiet)
    middle = sorted(pairs, key=lambda pair: pair["slowdown"])[len(pairs) // 2]
    results: dict[str, Any] = {
        "clients": s.fanout_clients,
        "seconds": s.fanout_seconds,
        **middle,
        "pairs": pairs,
        "slowdown": statistics.median(pair["slowdown"] for pair in pairs),
        "last_delay_ms": statistics.median(
            pair["delay_ms"]["max"] if pair["delay_ms"]["max"] is not None else 1e9
            for pair in pairs
        ),
        "floors": {},
    }
    frame_bytes = results["frame_bytes"]
    size = round(frame_bytes)
    for app, label in (("raw_asgi", "raw ASGI"), ("quart_app", "quart-trio route")):
        floor = h.start_server(app)
        assert floor.port is not None
        pid = floor.worker_pid()
        log(f"fanout: floor {label}, {s.fanout_clients} streams of {size} B frames at 20/s")
        path = f"/sse?n={size}&interval=0.05"
        clients = h.start_clients(floor.port, s.fanout_clients, path=path)
        first, cpu_first = clients.count(), cpu_seconds(pid)
        time.sleep(s.fanout_seconds)
        last, cpu_last = clients.count(), cpu_seconds(pid)
        clients.finish()
        h.stop(clients)
        h.stop(floor)
        seconds = last["t"] - first["t"]
        floor_frames = last["frames"] - first["frames"]
        results["floors"][app] = {
            "label": label,
            "frames_per_second": floor_frames / seconds,
            "demand_per_second": s.fanout_clients * 20,
            "busy": (cpu_last - cpu_first) / seconds,
            "us_per_frame": (cpu_last - cpu_first) / max(floor_frames, 1) * 1e6,
        }
    return results


# -- case 5: memory -------------------------------------------------------------------------


def case_memory(h: Harness) -> dict[str, Any]:
    s = h.settings
    server = h.start_server("overhead")
    assert server.port is not None
    pid = server.worker_pid()
    tasks = [f"greet{i}" for i in range(WRK_CONNECTIONS)]

    def greet(task: str, index: int) -> bytes:
        return b'{"params":{"name":"%s"}}' % task.encode()

    samples: list[tuple[int, int]] = [(0, rss_bytes(pid))]
    statuses: dict[str, int] = {}
    done = 0
    began = time.perf_counter()
    for checkpoint in s.memory_checkpoints:
        counts = trio.run(
            partial(drive_jobs, server.port, h.token, tasks, checkpoint - done, make_body=greet)
        )
        for key, value in counts.items():
            statuses[key] = statuses.get(key, 0) + value
        done = checkpoint
        samples.append((done, rss_bytes(pid)))
        log(f"memory: {done} jobs, RSS {samples[-1][1] / 2**20:.1f} MiB")
    elapsed = time.perf_counter() - began
    body = get_json(server.port, "/health", h.token)
    history = max(len(doc.get("results", [])) for doc in body["tasks"].values())
    assert server.dead_letters is not None
    dead_letters = len(list(server.dead_letters.iterdir()))
    h.stop(server)
    start = 1_000 if 1_000 in s.memory_checkpoints else s.memory_checkpoints[0]
    first = dict(samples)[start]
    last = samples[-1][1]
    return {
        "samples": samples,
        "statuses": statuses,
        "jobs_per_second": done / elapsed,
        "growth_bytes": last - first,
        "from": start,
        "to": s.memory_checkpoints[-1],
        "history_max": history,
        "dead_letters": dead_letters,
    }


# -- case 6: async throughput ---------------------------------------------------------------


async def drive_async(
    port: int, receiver_port: int, token: str, tasks: int, jobs: int
) -> dict[str, Any]:
    """``jobs`` async runs over ``tasks`` tasks, each task's next job after its callback."""
    delivered: dict[str, float] = {}
    events: dict[str, trio.Event] = {}
    posted: dict[str, float] = {}
    retries = 0
    unexpected: list[str] = []
    hook = f"http://{HOST}:{receiver_port}/hook"

    async def listen(stream: trio.SocketStream) -> None:
        buffer = b""
        while b"\r\n\r\n" not in buffer:  # the response head
            buffer += await stream.receive_some(65536)
        buffer = buffer.partition(b"\r\n\r\n")[2]
        while True:
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                job, _, stamp = line.rpartition(b" ")
                name = job.decode()
                delivered[name] = float(stamp)
                if name in events:
                    events[name].set()
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            buffer += chunk

    async def worker(task: str, count: int) -> None:
        nonlocal retries
        connection = await Connection.open(HOST, port)
        headers = {"Authorization": f"Bearer {token}"}
        for index in range(count):
            job_id = f"{task}-{index}"
            events[job_id] = trio.Event()
            body = json.dumps({"params": {}, "callbackUrl": hook, "jobId": job_id}).encode()
            posted[job_id] = time.monotonic()
            backoff = 0.001
            while True:
                status, answer = await connection.request("POST", f"/run/{task}", body, headers)
                if status == 202:
                    break
                if status != 409:
                    unexpected.append(f"{status} {answer[:200]!r}")
                    return
                retries += 1  # the slot is held until the delivery finished
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 0.02)
            await events[job_id].wait()
        await connection.aclose()

    notify = await trio.open_tcp_stream(HOST, receiver_port)
    await notify.send_all(b"GET /notify HTTP/1.1\r\nHost: x\r\n\r\n")
    per_task = [jobs // tasks + (1 if i < jobs % tasks else 0) for i in range(tasks)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listen, notify)
        await trio.sleep(0.2)  # the receiver has registered the notify stream
        with trio.move_on_after(300):
            async with trio.open_nursery() as workers:
                for index, count in enumerate(per_task):
                    workers.start_soon(worker, f"a{index}", count)
        nursery.cancel_scope.cancel()
    latencies = sorted((delivered[j] - posted[j]) * 1000 for j in posted if j in delivered)
    first, last = min(posted.values()), max(delivered.values(), default=0.0)
    return {
        "jobs": jobs,
        "delivered": len(latencies),
        "seconds": last - first,
        "jobs_per_second": len(latencies) / (last - first) if last > first else 0.0,
        "latency_p50_ms": statistics.median(latencies) if latencies else None,
        "latency_p99_ms": latencies[int(len(latencies) * 0.99) - 1] if latencies else None,
        "busy_retries": retries,
        "unexpected": unexpected[:5],
    }


def wait_idle(port: int, token: str, timeout: float = 30.0) -> bool:
    """Until /health shows every task idle (no job running or delivering)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = get_json(port, "/health", token)["tasks"].values()
        if all(doc["status"] == "idle" for doc in tasks):
            return True
        time.sleep(0.05)
    return False


def dead_letter_cycle_ms(directory: Path, count: int = 20) -> float:
    """The median time of what a delivery does on disk: write, fsync, rename, fsync the
    directory; later unlink and fsync the directory again (as ``funtask._deadletters``)."""
    times = []
    fd_dir = os.open(directory, os.O_RDONLY)
    try:
        for index in range(count):
            began = time.perf_counter()
            temp, final = directory / f".tmp-{index}", directory / f"probe-{index}.json"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, b"{}" * 256)
            os.fsync(fd)
            os.close(fd)
            os.replace(temp, final)
            os.fsync(fd_dir)
            os.unlink(final)
            os.fsync(fd_dir)
            times.append((time.perf_counter() - began) * 1000)
    finally:
        os.close(fd_dir)
    return statistics.median(times)


def case_async(h: Harness) -> dict[str, Any]:
    """Async jobs with callbacks, dead letters on disk and (to isolate fsync) on tmpfs."""
    s = h.settings
    argv = [sys.executable, "-m", "bench.receiver", "--port", "0"]
    receiver = Service("receiver", argv, logdir=h.logdir, stdout_pipe=True)
    h.services.append(receiver)
    h.note(receiver.command)
    receiver_port = int(receiver.read_line(30).split()[1])
    places = [("disk", h.tmp)]
    if Path("/dev/shm").is_dir():
        places.append(("tmpfs", Path("/dev/shm")))
    results: dict[str, Any] = {"jobs": s.async_jobs, "tasks": s.async_tasks, "runs": {}}
    for label, parent in places:
        server = h.start_server(
            "callbacks",
            env={"BENCH_CALLBACK_ORIGIN": f"http://{HOST}:{receiver_port}"},
            dead_letter_parent=parent,
        )
        assert server.port is not None and server.dead_letters is not None
        pid = server.worker_pid()
        log(f"async: {s.async_jobs} jobs over {s.async_tasks} tasks, dead letters on {label}")
        cpu_before = cpu_seconds(pid)
        result = trio.run(
            drive_async, server.port, receiver_port, h.token, s.async_tasks, s.async_jobs
        )
        result["idle"] = wait_idle(server.port, h.token)
        result["server_cpu_us_per_job"] = (
            (cpu_seconds(pid) - cpu_before) / max(result["delivered"], 1) * 1e6
        )
        result["dead_letters_left"] = len(list(server.dead_letters.iterdir()))
        result["filesystem"] = filesystem_type(server.dead_letters)
        result["cycle_ms"] = dead_letter_cycle_ms(server.dead_letters)
        h.stop(server)
        results["runs"][label] = result
    h.stop(receiver)
    return results


def filesystem_type(path: Path) -> str:
    """The filesystem type of the mount holding ``path`` (from /proc/mounts)."""
    best, kind = "", "?"
    with open("/proc/mounts") as file:
        for line in file:
            parts = line.split()
            if str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


def speed_probe() -> float:
    """Milliseconds for a fixed pure-Python workload (best of 5): how fast the machine is now.

    The benchmark shares a small VM; its speed drifts with the neighbours' load.
    Probing before each case shows by how much.
    """
    document = {"jobId": "0" * 36, "success": True, "message": "Hello", "data": {"n": 1}}
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        for i in range(2000):
            json.loads(json.dumps({**document, "i": i}))
        best = min(best, time.perf_counter() - began)
    return best * 1000


# -- machine and report -----------------------------------------------------------------------


def machine() -> dict[str, str]:
    """nproc, CPU model, memory, kernel, Python, wrk and package versions."""
    info: dict[str, str] = {}
    info["nproc"] = str(len(os.sched_getaffinity(0)))
    with open("/proc/cpuinfo") as file:
        model = next((line.split(":", 1)[1].strip() for line in file if "model name" in line), "?")
    info["cpu"] = model
    with open("/proc/meminfo") as file:
        total = next(int(line.split()[1]) for line in file if line.startswith("MemTotal"))
    info["memory"] = f"{total / 2**20:.1f} GiB"
    info["kernel"] = platform.release()
    info["python"] = f"{platform.python_implementation()} {platform.python_version()}"
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    info["wrk"] = (wrk.stdout + wrk.stderr).splitlines()[0].strip()
    for name in PACKAGES:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = "not installed"
    return info


def _f(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


class Report:
    """The Markdown of RESULTS.md, built section by section."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.targets: list[tuple[str, str, str]] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def target(self, name: str, measured: str, ok: bool) -> None:
        self.targets.append((name, measured, _met(ok)))


def contention(r: Report, rows: list[dict[str, Any]]) -> None:
    """Say so when other processes used a lot of CPU during a comparison."""
    others = statistics.mean(row["other_cores"] for row in rows)
    if others > 0.25:
        r.add(
            f"> Other processes on this machine used {others:.2f} of its "
            f"{os.cpu_count()} cores on average while this was measured: the figures are "
            "lower and noisier than on a quiet machine; the ratios (side by side) less so.",
            "",
        )


def report_overhead(r: Report, data: dict[str, Any], s: Settings) -> None:
    r.add(
        "## 1. Request overhead: trivial sync `/run` vs the floors",
        "",
        f"wrk, {WRK_THREADS} threads, {WRK_CONNECTIONS} keep-alive connections, POST with a "
        "JSON body and the `Authorization` header (`bench/post.lua`: each connection "
        "keeps its own task `greet0`…`greet15`, so no request meets a busy slot). "
        f"{s.rounds} round(s) of {s.round_seconds:g} s per server after a {s.warmup:g} s "
        "warm-up, order rotated per round; latency is the mean of the rounds' percentiles. "
        "Server CPU is the hypercorn worker's user+system time per request "
        "(from /proc; the server is single-threaded, so ~1/requests-per-second when busy).",
        "",
        "| server | requests/s | p50 | p99 | server CPU/request | server busy | non-2xx | "
        "socket errors | per round (req/s) | wrk / others' CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    )
    for app in ("raw_asgi", "quart_app", "overhead"):
        row = data[app]
        rounds = ", ".join(f"{v:,.0f}" for v in row["rounds_rps"])
        r.add(
            f"| {row['label']} | {row['rps']:,.0f} | {row['p50_ms']:.2f} ms | "
            f"{row['p99_ms']:.2f} ms | {row['cpu_us']:,.0f} µs | {row['busy']:.0%} | "
            f"{row['non_2xx']} | {row['socket_errors']} | {rounds} | "
            f"{row['wrk_cores']:.2f} / {row['other_cores']:.2f} cores |"
        )
    added = data["overhead"]["cpu_us"] - data["quart_app"]["cpu_us"]
    quart_cost = data["quart_app"]["cpu_us"] - data["raw_asgi"]["cpu_us"]
    by_cpu = data["quart_app"]["cpu_us"] / data["overhead"]["cpu_us"]
    rounds = data["round_ratios_quart"]
    r.add(
        "",
        f"- funtask / quart-trio route: **{data['ratio_quart']:.1%}** of the requests/s "
        f"(median of the rounds {statistics.median(rounds):.0%}: "
        + ", ".join(f"{v:.0%}" for v in rounds)
        + f"); by server CPU per request: {by_cpu:.1%}",
        f"- funtask / raw ASGI: **{data['ratio_raw']:.1%}**",
        f"- quart-trio route / raw ASGI: {data['ratio_quart_raw']:.1%} (Quart's own cost: "
        f"{quart_cost:,.0f} µs of CPU per request on top of hypercorn)",
        f"- funtask adds {added:,.0f} µs of server CPU per request over the bare quart-trio "
        "route (auth, body parsing, the job's task, cancel scope and result record).",
        "",
        "The bare quart-trio route is a little cheaper than it should be: quart-trio cancels "
        "the request when hypercorn reports the end of the stream, which happens inside the "
        "last `send`, so hypercorn's keep-alive idle timer is never restarted and an idle "
        "connection to it is never closed (checked: still open after 12 s with a 5 s "
        "`keep_alive_timeout`). funtask shields that last send, so the timer works, and "
        "replaces hypercorn's timer task per request with one timer per connection "
        "(`funtask/_hypercorn_fixes.py`), which pays for the difference.",
        "",
    )
    contention(r, [data[app] for app in ("raw_asgi", "quart_app", "overhead")])
    r.target(
        "request overhead: funtask >= 85 % of the quart-trio route's requests/s",
        f"{data['ratio_quart']:.1%}",
        data["ratio_quart"] >= 0.85,
    )


def report_metrics(r: Report, data: dict[str, Any], s: Settings) -> None:
    r.add(
        "## 1b. The cost of metrics: trivial sync `/run`, metrics on vs `metrics=False`",
        "",
        "The server of case 1 (`bench.apps:overhead`, metrics on by default) against the same "
        "tasks with `metrics=False` (`bench.apps:overhead_nometrics`)"
        + (
            ", and the same server from the baseline checkout (`--baseline`, run with its own "
            "code: `PYTHONPATH` and working directory set to it), "
            if "base" in data
            else ", "
        )
        + f"side by side: wrk as in case 1, {s.rounds} round(s) of {s.round_seconds:g} s per "
        f"server after a {s.warmup:g} s warm-up, order rotated per round. Every server runs "
        "on the same CPU (`taskset -c`, the last one) with `PYTHONHASHSEED=0`, and a second, "
        "identical `metrics=False` server shows how far two equal servers differ here.",
        "",
        "| server | requests/s | p50 | p99 | server CPU/request | non-2xx | per round (req/s) "
        "| others' CPU |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    )
    for key in data["keys"]:
        row = data[key]
        rounds = ", ".join(f"{v:,.0f}" for v in row["rounds_rps"])
        r.add(
            f"| {row['label']} | {row['rps']:,.0f} | {row['p50_ms']:.2f} ms | "
            f"{row['p99_ms']:.2f} ms | {row['cpu_us']:,.0f} µs | {row['non_2xx']} | {rounds} | "
            f"{row['other_cores']:.2f} cores |"
        )
    rounds = data["round_ratios"]
    r.add(
        "",
        f"- metrics on / off: **{data['ratio_rps']:.1%}** of the requests/s (median of the "
        f"rounds {statistics.median(rounds):.1%}: " + ", ".join(f"{v:.0%}" for v in rounds) + ")",
        f"- server CPU per request, on / off: **{data['ratio_cpu'] - 1:+.1%}** "
        f"({data['on']['cpu_us'] - data['off']['cpu_us']:+,.1f} µs); median of the rounds' "
        f"ratios {statistics.median(data['round_cpu_ratios']) - 1:+.1%}",
        f"- the noise: two identical `metrics=False` servers differ by "
        f"{data['aa_rps'] - 1:+.1%} in requests/s and {data['aa_cpu'] - 1:+.1%} in server "
        f"CPU per request (median of the rounds' CPU ratios "
        f"{statistics.median(data['round_cpu_ratios_aa']) - 1:+.1%})",
        f"- the observer hooks of one sync job, timed alone in the harness (best of 7 x "
        f"20,000): metrics on **{data['hooks_us']['on']:.2f} µs**, metrics off (the no-op "
        f"observer) {data['hooks_us']['off']:.2f} µs; against "
        f"{data['off']['cpu_us']:,.0f} µs of server CPU per request that is "
        f"{data['hooks_us']['on'] / data['off']['cpu_us']:.2%} and "
        f"{data['hooks_us']['off'] / data['off']['cpu_us']:.2%}",
    )
    if "base" in data:
        base_rounds = data["round_ratios_base"]
        r.add(
            f"- `metrics=False` / baseline: {data['off_vs_base_rps']:.1%} of the requests/s "
            f"(median of the rounds {statistics.median(base_rounds):.1%}); server CPU per "
            f"request {data['off_vs_base_cpu'] - 1:+.1%} (median of the rounds' ratios "
            f"{statistics.median(data['round_cpu_ratios_base']) - 1:+.1%}; metrics on: "
            f"{data['on_vs_base_cpu'] - 1:+.1%})",
        )
    r.add("")
    contention(r, [data[key] for key in data["keys"]])
    r.target(
        "metrics on: >= 95 % of the requests/s with metrics=False",
        f"{data['ratio_rps']:.1%}",
        data["ratio_rps"] >= 0.95,
    )
    r.target(
        "metrics on: server CPU per request at most +5 % over metrics=False",
        f"{data['ratio_cpu'] - 1:+.1%}",
        data["ratio_cpu"] <= 1.05,
    )


def report_tracing(r: Report, data: dict[str, Any], s: Settings) -> None:
    r.add(
        "## 1e. The cost of tracing: opentelemetry-api without an SDK, and with one",
        "",
        "The server of case 1 (`bench.apps:overhead`) five times, side by side: twice with "
        "`opentelemetry-api` installed and no SDK configured (the tracing observer on, "
        "making no span); twice with every `opentelemetry` import blocked in the server "
        "process (a `sys.meta_path` finder: as without the package, so no tracing "
        "observer) -- two identical processes differ by several per cent here, so each "
        "kind is the mean of its two; and once with an SDK `TracerProvider` configured (a "
        "`BatchSpanProcessor` whose exporter discards the spans). wrk as in case 1 (no "
        f"`traceparent` sent), {s.rounds} round(s) of {s.round_seconds:g} s per server after "
        f"a {s.warmup:g} s warm-up, order rotated per round; every server on the same CPU "
        "(`taskset -c`) with `PYTHONHASHSEED=0`.",
        "",
        "| server | requests/s | p50 | p99 | server CPU/request | non-2xx | others' CPU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    )
    for key in data["keys"]:
        row = data[key]
        r.add(
            f"| {row['label']} | {row['rps']:,.0f} | {row['p50_ms']:.2f} ms | "
            f"{row['p99_ms']:.2f} ms | {row['cpu_us']:,.1f} µs | {row['non_2xx']} | "
            f"{row['other_cores']:.2f} cores |"
        )
    r.add("")
    for key, what in (
        ("api_mean", "API, no SDK / blocked (each the mean of its two copies)"),
        ("api2", "the noise: API, second copy / first copy"),
        ("none2", "the noise: blocked, second copy / first copy"),
        ("sdk", "SDK configured / blocked (mean of both copies)"),
    ):
        r.add(
            f"- {what}: **{data[key + '_rps']:.1%}** of the requests/s (median "
            f"of the rounds {statistics.median(data[key + '_round_rps']):.1%}); server CPU "
            f"per request **{data[key + '_cpu'] - 1:+.1%}** "
            f"({data[key + '_delta_us']:+,.1f} µs; median of the "
            f"rounds' ratios {statistics.median(data[key + '_round_cpu']) - 1:+.1%})"
        )
    hooks = data["hooks_us"]
    r.add(
        f"- the observer hooks of one sync job with one step, timed alone in the harness "
        f"(best of 7 x 20,000; the step call included): no observer "
        f"{hooks['none']:.2f} µs; tracing observer without an SDK {hooks['api']:.2f} µs, "
        f"with a valid `traceparent`/`tracestate` to forward {hooks['api_forward']:.2f} µs; "
        f"with an SDK (job span, one step event, batch processor) {hooks['sdk']:.2f} µs; "
        f"the default server's observers (metrics on): {hooks['metrics']:.2f} µs without "
        f"the package, {hooks['metrics_api']:.2f} µs with it and no SDK "
        f"({hooks['metrics_api'] - hooks['metrics']:+.2f} µs, "
        f"{(hooks['metrics_api'] - hooks['metrics']) / data['none_mean']['cpu_us']:.2%} of the "
        "server CPU per request)",
        "",
    )
    contention(r, [data[key] for key in data["keys"]])
    r.target(
        "opentelemetry-api without an SDK: >= 98 % of the requests/s without the package",
        f"{data['api_mean_rps']:.1%}",
        data["api_mean_rps"] >= 0.98,
    )
    r.target(
        "opentelemetry-api without an SDK: server CPU per request at most +2 %",
        f"{data['api_mean_cpu'] - 1:+.1%}",
        data["api_mean_cpu"] <= 1.02,
    )


def report_progress(r: Report, data: dict[str, Any]) -> None:
    r.add(
        "## 2. Progress cost: `run.progress()` with /events subscribers",
        "",
        f"The `spin` task times {data['calls']:,} calls with `time.perf_counter_ns` inside "
        f"the job (best of {data['repeats']} jobs; the yielding loop: one job of "
        f"{data['yielding_calls']:,} calls, timing only the calls, not the time the "
        "subscribers' frames take between batches). Subscribers are real `/events` HTTP "
        "streams (`bench/sse_clients.py`, idle readers in another process). The bare `for` "
        "loop costs the figure in the last column, included in the others.",
        "",
        "| subscribers | "
        + " | ".join(label for _, label, _ in PROGRESS_VARIANTS)
        + " | bare loop |",
        "|---:|" + "---:|" * (len(PROGRESS_VARIANTS) + 1),
    )
    for subscribers, row in data["by_subscribers"].items():
        cells = " | ".join(f"{row[key]['ns_per_call']:,.0f} ns" for key, _, _ in PROGRESS_VARIANTS)
        loop = row["tight"]["loop_ns_per_iteration"]
        r.add(f"| {subscribers:,} | {cells} | {loop:.0f} ns |")
    ratios = ", ".join(f"{key} {value:.2f}x" for key, value in data["ratio"].items())
    r.add("", f"- most subscribers / none: {ratios}", "")
    zero = min(data["by_subscribers"])
    worst = max(
        row[key]["ns_per_call"]
        for row in data["by_subscribers"].values()
        for key in ("tight", "yielding")
    )
    alone = data["by_subscribers"][zero]["tight"]["ns_per_call"]
    r.target(
        "progress: < 2 µs per call",
        f"{worst:,.0f} ns worst (no message); {alone:,.0f} ns with no subscriber",
        worst < 2000,
    )
    r.target(
        "progress: 1,000 subscribers within 1.2x of none",
        ratios,
        max(data["ratio"][key] for key in ("tight", "yielding")) <= 1.2,
    )


def report_health(r: Report, data: dict[str, Any]) -> None:
    r.add(
        "## 3. `/health` cost with a full history",
        "",
        f"{data['tasks']} tasks, each holding {data['history_min']}-{data['history_max']} "
        f"results (filled with {sum(data['fill_statuses'].values()):,} sync jobs in "
        f"{data['fill_seconds']:.1f} s; statuses {data['fill_statuses']}), against the same "
        "server with an empty history and the floors sending a body of the same size "
        "(`GET /blob?n=SIZE` on the raw ASGI app and on the bare quart-trio app). wrk GET "
        f"with the `Authorization` header, {WRK_THREADS} threads, {WRK_CONNECTIONS} "
        "connections, rounds interleaved as in case 1.",
        "",
        "| | body | requests/s | p50 | p99 | server CPU/request | non-2xx | per round (req/s) "
        "| others' CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    )
    for key, size in (
        ("empty", data["empty_bytes"]),
        ("full", data["full_bytes"]),
        ("floor", data["full_bytes"]),
        ("quart_floor", data["full_bytes"]),
    ):
        row = data[key]
        rounds = ", ".join(f"{v:,.0f}" for v in row["rounds_rps"])
        r.add(
            f"| {row['label']} | {size:,} B | {row['rps']:,.0f} | {row['p50_ms']:.2f} ms | "
            f"{row['p99_ms']:.2f} ms | {row['cpu_us']:,.0f} µs | {row['non_2xx']} | {rounds} | "
            f"{row['other_cores']:.2f} cores |"
        )
    r.add(
        "",
        f"- full / empty history: {data['ratio_empty']:.1%} of the requests/s for a "
        f"{data['full_bytes'] / data['empty_bytes']:,.0f}x larger document",
        f"- full `/health` / raw ASGI floor: {data['ratio_floor']:.1%}; "
        f"/ quart-trio floor: {data['ratio_quart_floor']:.1%}",
        "",
    )
    contention(r, [data[key] for key in ("empty", "full", "floor", "quart_floor")])


def report_fanout(r: Report, data: dict[str, Any]) -> None:
    pairs = data["pairs"]
    r.add(
        "## 4. SSE fan-out: one task reporting progress to many `/events` clients",
        "",
        f"The `fanout` task calls `run.progress` as fast as it can for {data['seconds']:g} s "
        "(yielding to Trio every 100 calls), alone on one server and with "
        f"{data['clients']} `/events` clients (`bench/sse_clients.py`, raw Trio sockets in "
        f"another process) on another; {len(pairs)} pair(s) of runs, alternated (quiet, "
        "loaded, quiet, loaded, ...), the clients connected afresh for each loaded run. "
        "The slowdown is measured as the task's share of the server thread's CPU "
        "(`time.thread_time()` around each batch of 100 calls, over the thread's CPU for "
        "the job): with clients, the streams take the rest. It is a ratio inside each "
        "run, so it does not depend on the machine's speed, which on this VM can change "
        "by more than the effect between two 5 s runs (the calls/s columns show it: "
        "compare them only within a row). "
        "The delay is CLOCK_MONOTONIC from the task's return to each "
        "client's receipt of the frame showing the job finished. Server thread CPU is "
        "`time.thread_time()` of the Trio thread over the job; the CPU per frame is what "
        "the thread spent outside the task's own loop (less the loop's own checkpoints, "
        "priced from the quiet run), per frame delivered.",
        "",
        "| pair | calls/s alone | calls/s with clients | task's CPU share alone / with "
        "clients | slowdown | frames delivered | CPU per frame | final frame: first / "
        "median / last client | clients with it |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    )
    for index, pair in enumerate(pairs, 1):
        delay = pair["delay_ms"]
        r.add(
            f"| {index} | {pair['alone']['calls_per_second']:,.0f} | "
            f"{pair['loaded']['calls_per_second']:,.0f} | "
            f"{pair['share_alone']:.1%} / {pair['share_loaded']:.1%} | {pair['slowdown']:.1%} | "
            f"{pair['frames_per_second']:,.0f}/s of {pair['frame_bytes']:,.0f} B | "
            f"{pair['us_per_frame']:,.0f} µs | "
            f"{_f(delay['min'], 1)} / {_f(delay['p50'], 1)} / {_f(delay['max'], 1)} ms | "
            f"{pair['received']} of {data['clients']} |"
        )
    r.add(
        "",
        f"- slowdown of the task: **{data['slowdown']:.1%}** (median of the pairs); "
        f"last client's final frame after **{_f(data['last_delay_ms'], 1)} ms** "
        "(median of the runs); client process CPU "
        f"{data['client_cpu_seconds']:.1f} s in the median run",
        "",
        f"The floors: {data['clients']} streams, each sent a frame of the same size every "
        "50 ms (funtask's `MIN_FRAME_INTERVAL`, i.e. what funtask would send if it kept up), "
        "by the raw ASGI app and by a bare quart-trio streaming route "
        "(`GET /sse`), for the same time:",
        "",
        "| floor | frames wanted | frames delivered | server CPU busy | CPU per frame |",
        "|---|---:|---:|---:|---:|",
    )
    for floor in data["floors"].values():
        r.add(
            f"| {floor['label']} | {floor['demand_per_second']:,}/s | "
            f"{floor['frames_per_second']:,.0f}/s | {floor['busy']:.0%} | "
            f"{floor['us_per_frame']:,.0f} µs |"
        )
    r.add("")
    r.target(
        f"SSE fan-out: task slowed by at most 20 % with {data['clients']} clients",
        f"{data['slowdown']:.1%}",
        data["slowdown"] <= 0.20,
    )
    every = all(pair["received"] == data["clients"] for pair in pairs)
    r.target(
        "SSE fan-out: every client has the final frame within 100 ms",
        f"{'all' if every else 'not all'} {data['clients']} clients, the last after "
        f"{_f(data['last_delay_ms'], 1)} ms (median of {len(pairs)} runs; runs: "
        + ", ".join(f"{_f(pair['delay_ms']['max'], 1)}" for pair in pairs)
        + " ms)",
        every and data["last_delay_ms"] <= 100,
    )


def report_store(r: Report, data: dict[str, Any]) -> None:
    r.add(
        "## 1c. The cost of a store: trivial sync `/run`, memory vs SQLite",
        "",
        "The `overhead` server (16 `greet` tasks) with `FUNTASK_STORE=memory` and with "
        "`FUNTASK_STORE=sqlite://…` (a file on the same ext4 disk as the repository), "
        "every server pinned to the same CPU with the same hash seed, rounds interleaved "
        "and rotated. With the SQLite store every `/run` makes two inline write "
        "transactions (claim, settle); an async job adds one for the delivery outcome.",
        "",
        "| server | requests/s | p50 | p99 | server CPU/request |",
        "|---|---:|---:|---:|---:|",
    )
    for key in data["keys"]:
        row = data[key]
        r.add(
            f"| {row['label']} | {row['rps']:,.0f} | {row['p50_ms']:.2f} ms | "
            f"{row['p99_ms']:.2f} ms | {row['cpu_us']:,.0f} µs |"
        )
    rounds = data["round_ratios"]
    r.add(
        "",
        f"- SQLite / memory: requests/s **{data['ratio_rps']:.1%}**, CPU per request "
        f"{data['ratio_cpu']:.2f}x; per round {min(rounds):.1%} … {max(rounds):.1%}",
    )
    if "memory_vs_base_rps" in data:
        base_rounds = data["round_ratios_base"]
        r.add(
            f"- memory store / baseline: requests/s **{data['memory_vs_base_rps']:.1%}**, "
            f"CPU per request {data['memory_vs_base_cpu']:.2f}x; per round "
            f"{min(base_rounds):.1%} … {max(base_rounds):.1%}",
        )
    r.add("")
    r.target(
        "store: SQLite `/run` ≥ 85 % of memory's requests/s",
        f"{data['ratio_rps']:.1%}",
        data["ratio_rps"] >= 0.85,
    )


def report_memory(r: Report, data: dict[str, Any]) -> None:
    r.add(
        "## 5. Memory: RSS of the worker over many trivial jobs",
        "",
        f"Sync `greet` jobs over 16 tasks from a lean keep-alive client "
        f"(`bench/lean.py`), {data['jobs_per_second']:,.0f} jobs/s; history bounded at "
        f"{data['history_max']} per task (default); VmRSS of the hypercorn worker.",
        "",
        "| jobs | " + " | ".join(f"{n:,}" for n, _ in data["samples"]) + " |",
        "|---|" + "---:|" * len(data["samples"]),
        "| RSS | " + " | ".join(f"{b / 2**20:.1f} MiB" for _, b in data["samples"]) + " |",
        "",
        f"- growth {data['from']:,} → {data['to']:,} jobs: "
        f"**{data['growth_bytes'] / 2**20:+.2f} MiB**; statuses {data['statuses']}; "
        f"dead letters {data['dead_letters']}",
        "",
    )
    if data["to"] >= 100_000:
        r.target(
            "memory: growth 1k → 100k jobs < 5 MB",
            f"{data['growth_bytes'] / 1e6:+.2f} MB",
            data["growth_bytes"] < 5e6,
        )


def report_async(r: Report, data: dict[str, Any]) -> None:
    r.add(
        "## 6. Async throughput with callbacks",
        "",
        f"{data['jobs']:,} async jobs over {data['tasks']} tasks, POSTed with `callbackUrl` to "
        "a local receiver (`bench/receiver.py`, its own process); a task's next job is POSTed "
        "once its previous callback arrived (the slot is held until the delivery has ended, "
        "dead letter removed, so a POST that comes too early gets 409 and is retried after "
        "1-20 ms). Every delivery writes an fsynced dead letter first and removes it after "
        "the 2xx. Run twice: dead letters on the disk, then on tmpfs (where fsync costs "
        'nothing), to separate the disk from funtask. "Dead-letter cycle" is the median '
        "time of those file operations alone, timed by the harness in the same directory.",
        "",
        "| dead letters on | jobs delivered | seconds (first POST → last callback) | jobs/s | "
        "POST → callback p50 / p99 | server CPU/job | 409 retries | dead letters left | "
        "dead-letter cycle |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    )
    for label, run in data["runs"].items():
        r.add(
            f"| {label} ({run['filesystem']}) | {run['delivered']:,} | {run['seconds']:.2f} | "
            f"**{run['jobs_per_second']:,.0f}** | {_f(run['latency_p50_ms'], 1)} / "
            f"{_f(run['latency_p99_ms'], 1)} ms | {run['server_cpu_us_per_job']:,.0f} µs | "
            f"{run['busy_retries']} | {run['dead_letters_left']} | {run['cycle_ms']:.2f} ms |"
        )
        if run["unexpected"]:
            r.add(f"| | unexpected answers: {run['unexpected']} | | | | | | | |")
    r.add("")


def report_redis(r: Report, data: dict[str, Any], s: Settings) -> None:
    r.add(
        "## 1d. The Redis store: trivial sync `/run`, memory vs Redis (loopback)",
        "",
        "The server of case 1 (`bench.apps:overhead`) twice: with the memory store (the "
        "default) and with `FUNTASK_STORE=redis://127.0.0.1:PORT`, a `redis-server` of the "
        "harness's own without persistence (each `/run` claims its jobId and settles its "
        f"result: two Lua scripts). wrk as in case 1, {s.rounds} round(s) of "
        f"{s.round_seconds:g} s per server after a {s.warmup:g} s warm-up, order rotated "
        "per round; both servers on the same CPU (`taskset -c`, the last one), redis-server "
        "wherever the scheduler puts it (its CPU shows under others').",
        "",
        "| server | requests/s | p50 | p99 | server CPU/request | non-2xx | per round (req/s) "
        "| others' CPU |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    )
    for key in ("memory", "redis"):
        row = data[key]
        rounds = ", ".join(f"{v:,.0f}" for v in row["rounds_rps"])
        r.add(
            f"| {row['label']} | {row['rps']:,.0f} | {row['p50_ms']:.2f} ms | "
            f"{row['p99_ms']:.2f} ms | {row['cpu_us']:,.0f} µs | {row['non_2xx']} | {rounds} | "
            f"{row['other_cores']:.2f} cores |"
        )
    rounds = data["round_ratios"]
    r.add(
        "",
        f"- Redis / memory: **{data['ratio_rps']:.1%}** of the requests/s (median of the "
        f"rounds {statistics.median(rounds):.1%}: " + ", ".join(f"{v:.0%}" for v in rounds) + ")",
        f"- server CPU per request, Redis / memory: {data['ratio_cpu'] - 1:+.1%} "
        f"({data['redis']['cpu_us'] - data['memory']['cpu_us']:+,.1f} µs)",
        "",
    )
    r.target(
        "Redis store: >= 65 % of the memory store's requests/s (loopback)",
        f"{data['ratio_rps']:.1%}",
        data["ratio_rps"] >= 0.65,
    )


REPORTERS: dict[str, Callable[..., None]] = {
    "overhead": report_overhead,
    "metrics": report_metrics,
    "store": report_store,
    "redis": report_redis,
    "tracing": report_tracing,
    "progress": report_progress,
    "health": report_health,
    "fanout": report_fanout,
    "memory": report_memory,
    "async": report_async,
}


def render(
    results: dict[str, Any], info: dict[str, str], h: Harness, elapsed: float, argv: list[str]
) -> str:
    s = h.settings
    r = Report()
    for case in CASES:
        if case in results:
            reporter = REPORTERS[case]
            if case in ("overhead", "metrics", "redis", "tracing"):
                reporter(r, results[case], s)
            else:
                reporter(r, results[case])
    head = [
        "# funtask benchmark results",
        "",
        f"Generated by `python bench/run.py{' ' + shlex.join(argv) if argv else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; the run took {elapsed:.0f} s"
        f"{' (--quick: shortened, not the reference figures)' if s.quick else ''}.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    head += [f"| {key} | {value} |" for key, value in info.items()]
    probes = results.get("speed_probe_ms", {})
    if probes:
        spread = max(probes.values()) / min(probes.values()) - 1
        head += [
            "| speed probe | "
            + ", ".join(f"{case} {ms:.1f}" for case, ms in probes.items())
            + f" ms (spread {spread:.0%}) |",
            "",
            "The speed probe is a fixed pure-Python workload (2,000 JSON round trips, best "
            "of 5) timed in the harness before each case, while no server is busy: this VM "
            "shares its host, and its speed drifts. Figures from different cases are only "
            "comparable as far as the probes agree; the side-by-side comparisons (rounds "
            "interleaved, order rotated) are what to trust.",
        ]
    head += ["", "## Targets", "", "| target | measured | |", "|---|---|---|"]
    head += [f"| {name} | {measured} | {ok} |" for name, measured, ok in r.targets]
    head += ["", *r.lines, "## Commands", "", "```sh"]
    head += [*h.commands, "```", ""]
    return "\n".join(head)


# -- main ---------------------------------------------------------------------------------------


def parse_cases(values: list[str] | None) -> list[str]:
    if not values:
        return list(CASES)
    chosen: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name not in CASES:
                raise SystemExit(f"unknown case {name!r}; choose from {', '.join(CASES)}")
            if name not in chosen:
                chosen.append(name)
    return [case for case in CASES if case in chosen]


@contextlib.contextmanager
def harness(settings: Settings, baseline: Path | None = None) -> Iterator[Harness]:
    h = Harness(settings, baseline)
    try:
        yield h
    finally:
        h.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Measure funtask's overhead against its own stack (see bench/README.md)."
    )
    parser.add_argument(
        "--case",
        action="append",
        metavar="NAME",
        help=f"run only this case (repeatable or comma-separated): {', '.join(CASES)}",
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (~1.5 minutes)")
    parser.add_argument(
        "--output",
        type=Path,
        help="Markdown file to write (default: bench/RESULTS.md for a full run of every "
        "case; otherwise the report is only printed)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw figures as JSON")
    parser.add_argument(
        "--rounds",
        type=int,
        help="interleaved rounds of the overhead, metrics and tracing cases",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="a checkout of another commit (e.g. `git archive REV | tar -x -C DIR`) whose "
        "bench.apps:overhead the metrics case runs side by side with this one's",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    cases = parse_cases(args.case)
    settings = Settings.make(args.quick)
    if args.rounds:
        settings = dataclasses.replace(settings, rounds=args.rounds)
    output = args.output
    if output is None and not args.quick and cases == list(CASES):
        output = BENCH / "RESULTS.md"
    info = machine()
    results: dict[str, Any] = {}
    began = time.monotonic()
    runners = {
        "overhead": case_overhead,
        "metrics": case_metrics,
        "store": case_store,
        "redis": case_redis,
        "tracing": case_tracing,
        "progress": case_progress,
        "health": case_health,
        "fanout": case_fanout,
        "memory": case_memory,
        "async": case_async,
    }
    if args.baseline is not None and not (args.baseline / "bench" / "apps.py").exists():
        raise SystemExit(f"--baseline {args.baseline}: no bench/apps.py there")
    with harness(settings, args.baseline) as h:
        probes: dict[str, float] = {}
        for case in cases:
            probes[case] = speed_probe()
            log(f"case {case} (speed probe {probes[case]:.1f} ms)")
            results[case] = runners[case](h)
        probes["end"] = speed_probe()
        results["speed_probe_ms"] = probes
        elapsed = time.monotonic() - began
        text = render(results, info, h, elapsed, sys.argv[1:] if argv is None else argv)
    if output is not None:
        output.write_text(text)
        log(f"wrote {output}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, default=str))
    print(text)


if __name__ == "__main__":
    main()
