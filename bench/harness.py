"""The shared harness of ``python -m bench``: processes, wrk, interleaved rounds, drivers.

Every server runs as its own process on loopback under the same hypercorn
trio worker (``python -m hypercorn -k trio -w 1 --bind 127.0.0.1:PORT
bench.apps:APP``); HTTP load comes from ``wrk`` (C, so the load generator is
not what is measured). A case (``bench/cases/NAME.py``) starts what it needs
through a :class:`Harness`, measures, stops its processes and returns plain
figures; its report function turns them into a section of the Markdown report.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.lean import call
from bench.processes import (
    HOST,
    REPO,
    Service,
    children_cpu_seconds,
    cpu_seconds,
    free_port,
    log,
    machine_busy_seconds,
)

if TYPE_CHECKING:
    from bench.report import Report

BENCH = REPO / "bench"
WRK_THREADS = 2
WRK_CONNECTIONS = 16


# -- settings and cases ---------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """How long and how big each case is (``--quick`` and ``--smoke`` shrink them)."""

    quick: bool
    smoke: bool = False  # tiny runs that only check the harness works (tests/test_bench_smoke.py)
    warmup: int = 2  # seconds of wrk per server before measuring (0: no warm-up)
    rounds: int = 20  # overhead: interleaved rounds, each server once per round
    round_seconds: int = 1  # wrk takes whole seconds
    health_rounds: int = 5
    health_warmup: int = 1
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
    async_workers: int = 10  # async jobs in flight at a time
    async_tasks_per_worker: int = 8  # each worker goes round its own tasks
    async_warmup_jobs: int = 50  # unmeasured, first
    async_rounds: int = 5  # per place; with --baseline the two servers take turns
    hook_loops: int = 20_000  # observer hooks timed in the harness (metrics, tracing)
    hook_repeats: int = 7  # best of
    profile_seconds: float = 10.0  # of load under py-spy, per target
    profile_rate: int = 250  # py-spy samples per second
    profile_targets: tuple[str, ...] = ("run", "async")
    profile_dir: str = ""  # where the raw profiles go ("": the temporary directory)

    @classmethod
    def make(cls, quick: bool = False, smoke: bool = False) -> Settings:
        if smoke:
            return cls(
                quick=True,
                smoke=True,
                warmup=0,
                rounds=1,
                health_rounds=1,
                health_warmup=0,
                progress_calls=1_000,
                progress_repeats=1,
                progress_yielding_calls=2_000,
                subscribers=(0, 3),
                health_results=2,
                fanout_seconds=0.2,
                fanout_clients=5,
                fanout_pairs=1,
                memory_checkpoints=(16, 200),
                async_jobs=20,
                async_workers=2,
                async_tasks_per_worker=2,
                async_warmup_jobs=4,
                async_rounds=1,
                hook_loops=200,
                hook_repeats=1,
                profile_seconds=1.0,
            )
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
            async_rounds=2,
            profile_seconds=4.0,
        )


@dataclass(frozen=True)
class Case:
    """One case of ``python -m bench``: how to run it and how to report its figures.

    ``run`` starts what it needs through the harness, stops it again and returns
    JSON-able figures; ``report`` writes the case's section of the report from them.
    """

    name: str
    run: Callable[[Harness], dict[str, Any]]
    report: Callable[[Report, dict[str, Any], Settings], None]
    tools: tuple[str, ...] = ("wrk",)  # programs it needs on the PATH


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
        self.ports: set[int] = set()  # every port given to a server

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
        wait: bool = True,
    ) -> Service:
        """``python -m hypercorn -k trio -w 1 --bind 127.0.0.1:PORT bench.apps:APP``.

        ``root`` is the checkout whose ``funtask`` and ``bench.apps`` are served; with
        ``cpu`` the server (and its worker process) runs on that CPU only (``taskset``).
        Waits until it listens, unless ``wait`` is false (several servers starting at
        once: then call :meth:`Service.wait_listening` on each).
        """
        port = free_port()
        while port in self.ports:  # a port given to a server that may not listen yet
            port = free_port()
        self.ports.add(port)
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
        self.note(service.command.replace(f":{port}", ":PORT"))
        if wait:
            service.wait_listening()
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

    def stop_all(self) -> None:
        """Stop every process still running (a case's servers, once it has measured)."""
        for service in list(self.services):
            self.stop(service)

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
        threads: int = WRK_THREADS,
        connections: int = WRK_CONNECTIONS,
    ) -> list[str]:
        """The wrk command line (noted for the report)."""
        argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
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
        self, url: str, seconds: int, *, pid: int | None = None, **load: Any
    ) -> dict[str, Any]:
        """Run wrk (``load``: the options of :meth:`wrk_argv`); parse its report; add the
        server CPU per request when ``pid`` is given."""
        argv = self.wrk_argv(url, seconds, **load)
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
        if warmup:
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
            "rounds_p50_ms": [r["p50_ms"] for r in runs],
            "other_cores": statistics.mean(r["other_cores"] for r in runs),
            "wrk_cores": statistics.mean(r["wrk_cores"] for r in runs),
        }
    return summary


def round_ratios(
    summary: dict[str, dict[str, Any]], top: str, bottom: str, figure: str = "rounds_rps"
) -> list[float]:
    """Each round's requests/s (or another per-round ``figure``) of ``top`` over ``bottom``."""
    return [a / b for a, b in zip(summary[top][figure], summary[bottom][figure], strict=True)]


def baseline_label(path: Path) -> str:
    """The commit of a baseline checkout (git, or the BASELINE_COMMIT file), else its path."""
    done = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    if done.returncode == 0 and not str(path.resolve()).startswith(str(REPO)):
        return done.stdout.strip()
    marker = path / "BASELINE_COMMIT"
    return marker.read_text().strip() if marker.exists() else str(path)


# -- the trivial sync /run, server against server ------------------------------------------


def post_script(
    h: Harness, *, threads: int = WRK_THREADS, connections: int = WRK_CONNECTIONS
) -> dict[str, Any]:
    """wrk options for ``bench/post.lua``: every connection POSTs to a ``greetN`` of its own."""
    return {
        "script": "post.lua",
        "script_args": (str(connections // threads), h.token),
        "threads": threads,
        "connections": connections,
    }


def shared_cpu() -> int | None:
    """The CPU every server of a comparison is pinned to (``taskset -c``), if taskset exists."""
    return max(os.sched_getaffinity(0)) if shutil.which("taskset") else None


def check_greet(server: Service, token: str, label: str, expected: str = "Hello, g3!") -> None:
    """POST /run/greet3 once; fail unless the answer says ``expected``."""
    assert server.port is not None
    status, body = call(server.port, "POST", "/run/greet3", token, {"params": {"name": "g3"}})
    if status != 200 or not isinstance(body, dict) or body.get("message") != expected:
        raise RuntimeError(f"{label}: unexpected answer {status} {body!r}")


@dataclass(frozen=True)
class Variant:
    """One server of a side-by-side comparison of the trivial sync ``/run``."""

    key: str
    label: str
    app: str = "overhead"  # in bench/apps.py
    env: dict[str, str] = field(default_factory=dict)
    root: Path = REPO  # the checkout served (``--baseline`` gives another)
    expect: str = "Hello, g3!"  # what POST /run/greet3 answers


def compare_servers(
    h: Harness,
    name: str,
    variants: list[Variant],
    *,
    pinned: bool = True,
    check: Callable[[Variant, Service], None] | None = None,
    wrk: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Start each variant, check it answers, then measure them all in interleaved rounds.

    With ``pinned`` every server runs on the same CPU (``taskset -c``) with
    ``PYTHONHASHSEED=0``: processes compared against each other differ by several
    per cent for reasons of their own (where the scheduler puts them, string
    hashing). ``check`` looks further at each server before measuring; ``wrk``
    replaces the default load (:func:`post_script`). Every process the harness runs
    is stopped afterwards. Returns :func:`interleaved`'s summary and ``keys``.
    """
    load = wrk if wrk is not None else post_script(h)
    cpu = shared_cpu() if pinned else None
    servers = []
    for variant in variants:  # all start at once: each takes a second or two to import
        env = {"PYTHONHASHSEED": "0", **variant.env} if pinned else dict(variant.env)
        servers.append(
            h.start_server(variant.app, root=variant.root, cpu=cpu, env=env, wait=False)
        )
    targets = []
    for variant, server in zip(variants, servers, strict=True):
        server.wait_listening()
        check_greet(server, h.token, variant.label, variant.expect)
        if check is not None:
            check(variant, server)
        url = f"http://{HOST}:{server.port}"
        targets.append(Target(variant.key, variant.label, url, server.worker_pid(), load))
    summary: dict[str, Any] = interleaved(h, name, targets, h.settings.rounds, h.settings.warmup)
    h.stop_all()
    summary["keys"] = [variant.key for variant in variants]
    return summary


#: The trivial sync ``/run`` and the two floors under it, on the same hypercorn worker.
STACK: tuple[Variant, ...] = (
    Variant("raw_asgi", "raw ASGI", app="raw_asgi", expect="Hello, g0!"),
    Variant(
        "raw_fixed",
        "raw ASGI + funtask's hypercorn fixes",
        app="raw_asgi_fixed",
        expect="Hello, g0!",
    ),
    Variant("quart_app", "quart-trio route", app="quart_app", expect="Hello, g0!"),
    Variant("overhead", "funtask /run (greet)"),
)
