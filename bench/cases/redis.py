"""Case 1d, ``redis``: trivial sync ``/run`` with the memory store vs Redis on loopback."""

from __future__ import annotations

import contextlib
import shlex
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.harness import Case, Harness, Settings, Variant, compare_servers, round_ratios
from bench.lean import get_json
from bench.processes import HOST, Service, free_port
from bench.report import Report, wrk_rows


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


def run(h: Harness) -> dict[str, Any]:
    """Trivial sync ``/run`` with the memory store vs the Redis store on loopback, interleaved."""

    def store_ok(variant: Variant, server: Service) -> None:
        assert server.port is not None
        health = get_json(server.port, "/health", h.token)
        if (variant.key == "redis") != (health.get("store") == "ok"):
            raise RuntimeError(f"{variant.label}: /health says store={health.get('store')!r}")

    # The funtask servers share the last CPU (as in case 1b); redis-server may use any.
    with redis_server(h) as url:
        variants = [
            Variant("memory", "memory store (default)"),
            Variant("redis", "Redis store (loopback)", env={"FUNTASK_STORE": url}),
        ]
        summary = compare_servers(h, "redis", variants, check=store_ok)
    summary["ratio_rps"] = summary["redis"]["rps"] / summary["memory"]["rps"]
    summary["ratio_cpu"] = summary["redis"]["cpu_us"] / summary["memory"]["cpu_us"]
    summary["round_ratios"] = round_ratios(summary, "redis", "memory")
    return summary


def report(r: Report, data: dict[str, Any], s: Settings) -> None:
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
    wrk_rows(r, [data[key] for key in ("memory", "redis")])
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


CASE = Case("redis", run, report, tools=("wrk", "redis-server"))
