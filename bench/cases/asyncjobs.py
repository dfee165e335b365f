"""Case 6, ``async``: async jobs with callbacks, end to end."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from bench.harness import Case, Harness, Settings, baseline_label
from bench.lean import Connection, get_json
from bench.processes import HOST, REPO, Service, cpu_times, log
from bench.report import Report, _f


class BusyError(RuntimeError):
    """A POST met ``409 busy``: the harness reused a task before its slot was free."""


async def drive_async(
    port: int,
    receiver_port: int,
    token: str,
    workers: int,
    tasks_per_worker: int,
    jobs: int,
    prefix: str = "",
) -> dict[str, Any]:
    """``jobs`` async runs, ``workers`` in flight at a time, never two on one task.

    Worker ``w`` goes round its own tasks ``a{w*K}`` … ``a{w*K+K-1}`` (``K =
    tasks_per_worker``), one job at a time: it POSTs the next job once the
    previous job's callback has arrived, to the next task of its own. funtask
    holds a task's slot until the delivery has completely ended (the 2xx read,
    the dead letter removed), a little after the receiver has the callback, so a
    task gets its next job only ``K - 1`` whole jobs later. A ``409 busy`` is
    counted (and the POST retried after 1-20 ms, so the run completes); the
    caller fails if there were any. Job ids are ``{prefix}{task}-{n}``.
    """
    delivered: dict[str, float] = {}
    events: dict[str, trio.Event] = {}
    posted: dict[str, float] = {}
    busy = 0
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

    async def worker(tasks: list[str], count: int) -> None:
        nonlocal busy
        connection = await Connection.open(HOST, port)
        headers = {"Authorization": f"Bearer {token}"}
        for index in range(count):
            task = tasks[index % len(tasks)]
            job_id = f"{prefix}{task}-{index}"
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
                busy += 1
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 0.02)
            await events[job_id].wait()
        await connection.aclose()

    notify = await trio.open_tcp_stream(HOST, receiver_port)
    await notify.send_all(b"GET /notify HTTP/1.1\r\nHost: x\r\n\r\n")
    per_worker = [jobs // workers + (1 if i < jobs % workers else 0) for i in range(workers)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listen, notify)
        await trio.sleep(0.2)  # the receiver has registered the notify stream
        with trio.move_on_after(300):
            async with trio.open_nursery() as running:
                for index, count in enumerate(per_worker):
                    first = index * tasks_per_worker
                    tasks = [f"a{first + k}" for k in range(tasks_per_worker)]
                    running.start_soon(worker, tasks, count)
        nursery.cancel_scope.cancel()
    latencies = sorted((delivered[j] - posted[j]) * 1000 for j in posted if j in delivered)
    first_post, last = min(posted.values()), max(delivered.values(), default=0.0)
    return {
        "jobs": jobs,
        "delivered": len(latencies),
        "seconds": last - first_post,
        "jobs_per_second": len(latencies) / (last - first_post) if last > first_post else 0.0,
        "latency_p50_ms": statistics.median(latencies) if latencies else None,
        "latency_p99_ms": latencies[int(len(latencies) * 0.99) - 1] if latencies else None,
        "busy": busy,
        "unexpected": unexpected[:5],
    }


def start_receiver(h: Harness) -> tuple[Service, int]:
    """``python -m bench.receiver``, the callback receiver; the process and its port."""
    argv = [sys.executable, "-m", "bench.receiver", "--port", "0"]
    receiver = Service("receiver", argv, logdir=h.logdir, stdout_pipe=True)
    h.services.append(receiver)
    h.note(receiver.command)
    return receiver, int(receiver.read_line(30).split()[1])


def start_callbacks_server(
    h: Harness, receiver_port: int, parent: Path | None = None, root: Path = REPO
) -> Service:
    """``bench.apps:callbacks`` of the checkout ``root``, memory store, tasks for every worker."""
    s = h.settings
    env = {
        "BENCH_CALLBACK_ORIGIN": f"http://{HOST}:{receiver_port}",
        "BENCH_CALLBACK_TASKS": str(s.async_workers * s.async_tasks_per_worker),
        "FUNTASK_STORE": "memory",
    }
    return h.start_server("callbacks", env=env, dead_letter_parent=parent, root=root)


def async_jobs(
    h: Harness,
    server: Service,
    receiver_port: int,
    jobs: int,
    *,
    measuring: Callable[[], object] | None = None,
    warm_up: bool = True,
    prefix: str = "",
) -> dict[str, Any]:
    """Drive ``jobs`` async jobs through ``server``; the figures, server CPU per job included.

    With ``warm_up``, ``Settings.async_warmup_jobs`` jobs go first, unmeasured (once
    per server: job ids repeat). ``prefix`` starts the measured jobs' ids (one per
    round on the same server, since a repeated job id is answered from history).

    The server's CPU (user + system of the worker process, every thread of it) is
    read before the first measured POST and after the last dead letter is gone, so it
    covers the measured jobs whole and nothing else (no /health polling).
    ``measuring`` is called after the warm-up, just before the measured jobs (the
    profile starts py-spy there).
    """
    s = h.settings
    assert server.port is not None and server.dead_letters is not None
    pid = server.worker_pid()
    port = server.port

    def drive(count: int, job_prefix: str) -> dict[str, Any]:
        return trio.run(
            drive_async,
            port,
            receiver_port,
            h.token,
            s.async_workers,
            s.async_tasks_per_worker,
            count,
            job_prefix,
        )

    if warm_up and s.async_warmup_jobs:  # the first delivery imports httpx and builds its client
        warm = drive(s.async_warmup_jobs, "warmup-")
        wait_empty(server.dead_letters)
        if warm["busy"] or warm["unexpected"]:
            raise BusyError(f"async warm-up met 409 or another answer: {warm}")
    if measuring is not None:
        measuring()
    before = cpu_times(pid)
    result = drive(jobs, prefix)
    result["drained"] = wait_empty(server.dead_letters)
    after = cpu_times(pid)
    jobs_done = max(result["delivered"], 1)
    result["server_user_us_per_job"] = (after[0] - before[0]) / jobs_done * 1e6
    result["server_sys_us_per_job"] = (after[1] - before[1]) / jobs_done * 1e6
    result["server_cpu_us_per_job"] = (sum(after) - sum(before)) / jobs_done * 1e6
    return result


def wait_empty(directory: Path, timeout: float = 30.0) -> bool:
    """Until ``directory`` holds no file (every dead letter removed), polled from here."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(directory.iterdir()):
            return True
        time.sleep(0.002)
    return False


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


def run(h: Harness) -> dict[str, Any]:
    """Async jobs with callbacks, dead letters on disk and (to isolate fsync) on tmpfs.

    Per place, ``Settings.async_rounds`` rounds of ``async_jobs`` jobs each; with
    ``--baseline`` the baseline checkout's server runs beside this one's, the two
    taking turns round by round (order rotated), so both see the same machine.
    """
    s = h.settings
    receiver, receiver_port = start_receiver(h)
    places = [("disk", h.tmp)]
    if Path("/dev/shm").is_dir():
        places.append(("tmpfs", Path("/dev/shm")))
    checkouts = [("this", REPO)]
    if h.baseline is not None:
        checkouts.append(("base", h.baseline))
    results: dict[str, Any] = {
        "jobs": s.async_jobs,
        "rounds": s.async_rounds,
        "workers": s.async_workers,
        "tasks": s.async_workers * s.async_tasks_per_worker,
        "baseline": None if h.baseline is None else baseline_label(h.baseline),
        "runs": {},
        "baseline_runs": {},
    }
    for label, parent in places:
        servers = {
            name: start_callbacks_server(h, receiver_port, parent, root)
            for name, root in checkouts
        }
        log(
            f"async: {s.async_rounds} x {s.async_jobs} jobs per server, {s.async_workers} "
            f"in flight over {results['tasks']} tasks, dead letters on {label}"
        )
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
        for index in range(s.async_rounds):
            names = list(servers)
            names = names[index % len(names) :] + names[: index % len(names)]
            for name in names:
                server = servers[name]
                result = async_jobs(
                    h, server, receiver_port, s.async_jobs, warm_up=index == 0, prefix=f"r{index}-"
                )
                _check(f"{label}, {name}, round {index + 1}", result)
                rounds[name].append(result)
        for name, server in servers.items():
            assert server.port is not None and server.dead_letters is not None
            summary = _summarise(rounds[name])
            summary["idle"] = wait_idle(server.port, h.token)
            summary["dead_letters_left"] = len(list(server.dead_letters.iterdir()))
            summary["filesystem"] = filesystem_type(server.dead_letters)
            summary["cycle_ms"] = dead_letter_cycle_ms(server.dead_letters)
            h.stop(server)
            results["runs" if name == "this" else "baseline_runs"][label] = summary
    h.stop(receiver)
    return results


def _check(where: str, result: dict[str, Any]) -> None:
    if result["busy"] or result["unexpected"]:
        raise BusyError(
            f"async ({where}): {result['busy']} POST(s) met 409 busy and "
            f"{len(result['unexpected'])} got another answer ({result['unexpected']}): "
            "a task got a job before its previous delivery had ended; the harness must "
            "never meet 409 (raise Settings.async_tasks_per_worker)"
        )


def _summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds of one server: medians, sums where a sum is meant, and the rounds."""

    def median(key: str) -> float:
        return float(statistics.median(r[key] for r in rounds if r[key] is not None))

    return {
        "jobs": sum(r["jobs"] for r in rounds),
        "delivered": sum(r["delivered"] for r in rounds),
        "busy": sum(r["busy"] for r in rounds),
        "unexpected": [u for r in rounds for u in r["unexpected"]],
        "drained": all(r["drained"] for r in rounds),
        "seconds": median("seconds"),
        "jobs_per_second": median("jobs_per_second"),
        "latency_p50_ms": median("latency_p50_ms"),
        "latency_p99_ms": median("latency_p99_ms"),
        "server_cpu_us_per_job": median("server_cpu_us_per_job"),
        "server_user_us_per_job": median("server_user_us_per_job"),
        "server_sys_us_per_job": median("server_sys_us_per_job"),
        "rounds_cpu_us_per_job": [r["server_cpu_us_per_job"] for r in rounds],
    }


def filesystem_type(path: Path) -> str:
    """The filesystem type of the mount holding ``path`` (from /proc/mounts)."""
    best, kind = "", "?"
    with open("/proc/mounts") as file:
        for line in file:
            parts = line.split()
            if str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


def report(r: Report, data: dict[str, Any], s: Settings) -> None:
    rounds = data["rounds"]
    base = data["baseline"]
    r.add(
        "## 6. Async throughput with callbacks",
        "",
        f"{rounds} round(s) of {data['jobs']:,} async jobs per server, {data['workers']} in "
        f"flight at a time over {data['tasks']} tasks, POSTed with `callbackUrl` to a local "
        "receiver (`bench/receiver.py`, its own process), memory store. Each of the "
        f"{data['workers']} drivers goes round {data['tasks'] // data['workers']} tasks of "
        "its own and POSTs its next job once the previous callback arrived, so a task gets "
        "a job only after several whole jobs (funtask holds the slot until the delivery "
        "has ended, dead letter removed): the harness never meets `409 busy`, and fails if "
        "it does. Every delivery writes an fsynced dead letter first and removes it after "
        "the 2xx. Server CPU per job is the hypercorn worker's user + system time (all its "
        "threads) from a round's first POST until its last dead letter was gone, over the "
        f"jobs delivered; {s.async_warmup_jobs} jobs per server go first, unmeasured (the "
        "first delivery builds the callback client). The figures are the medians of the "
        "rounds"
        + (
            f"; the baseline `{base}` runs beside this checkout, the two taking turns "
            "round by round"
            if base
            else ""
        )
        + ". Dead letters on the disk, then on tmpfs (where fsync costs nothing), to "
        'separate the disk from funtask. "Dead-letter cycle" is the median time of those '
        "file operations alone, timed by the harness in the same directory.",
        "",
        "| dead letters on | server | jobs delivered | jobs/s | POST → callback p50 / p99 | "
        "server CPU/job (user + sys) | per round | 409s | dead letters left | "
        "dead-letter cycle |",
        "|---|---|---:|---:|---|---:|---|---:|---:|---:|",
    )
    for label, run in data["runs"].items():
        rows = [("this checkout", run)]
        if label in data["baseline_runs"]:
            rows.append((f"baseline `{base}`", data["baseline_runs"][label]))
        for name, one in rows:
            per_round = ", ".join(f"{cpu:,.0f}" for cpu in one["rounds_cpu_us_per_job"])
            r.add(
                f"| {label} ({one['filesystem']}) | {name} | {one['delivered']:,} | "
                f"**{one['jobs_per_second']:,.0f}** | {_f(one['latency_p50_ms'], 1)} / "
                f"{_f(one['latency_p99_ms'], 1)} ms | "
                f"**{one['server_cpu_us_per_job']:,.0f} µs** "
                f"({one['server_user_us_per_job']:,.0f} + "
                f"{one['server_sys_us_per_job']:,.0f}) | {per_round} µs | {one['busy']} | "
                f"{one['dead_letters_left']} | {one['cycle_ms']:.2f} ms |"
            )
            if one["unexpected"]:
                r.add(f"| | | unexpected answers: {one['unexpected']} | | | | | | | |")
    r.add("")
    for label, run in data["runs"].items():
        other = data["baseline_runs"].get(label)
        if other is not None:
            ratios = [
                a / b
                for a, b in zip(
                    run["rounds_cpu_us_per_job"], other["rounds_cpu_us_per_job"], strict=True
                )
            ]
            r.add(
                f"- {label}: server CPU per job, this checkout / baseline `{base}`: "
                f"**{run['server_cpu_us_per_job'] / other['server_cpu_us_per_job']:.2f}x** "
                f"(per round: {', '.join(f'{x:.2f}' for x in ratios)})"
            )
    if data["baseline_runs"]:
        r.add("")
    disk = data["runs"].get("disk")
    if disk is not None:
        r.target(
            "async job with a callback, end to end: <= 2 ms of server CPU per job "
            "(memory store, dead letters on disk, median of the rounds; issue 14)",
            f"{disk['server_cpu_us_per_job'] / 1000:.2f} ms "
            f"(rounds {', '.join(f'{c / 1000:.2f}' for c in disk['rounds_cpu_us_per_job'])}), "
            f"{disk['busy']} 409s",
            disk["server_cpu_us_per_job"] <= 2000 and disk["busy"] == 0,
        )


CASE = Case("async", run, report, tools=())
