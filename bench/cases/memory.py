"""Case 5, ``memory``: RSS of the worker over many trivial jobs."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import trio

from bench.harness import WRK_CONNECTIONS, Case, Harness, Settings
from bench.lean import drive_jobs, get_json
from bench.processes import log, rss_bytes
from bench.report import Report


def run(h: Harness) -> dict[str, Any]:
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


def report(r: Report, data: dict[str, Any], s: Settings) -> None:
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


CASE = Case("memory", run, report, tools=())
