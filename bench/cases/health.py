"""Case 3, ``health``: ``GET /health`` with a full history against floors of its size."""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any

import trio

from bench.harness import (
    WRK_CONNECTIONS,
    WRK_THREADS,
    Case,
    Harness,
    Settings,
    Target,
    interleaved,
)
from bench.lean import drive_jobs, get_json
from bench.processes import HOST, log
from bench.report import Report, contention


def run(h: Harness) -> dict[str, Any]:
    """/health with empty and full history, and the floors sending as many bytes, side by side."""
    s = h.settings
    empty = h.start_server("health", wait=False)
    full = h.start_server("health")
    empty.wait_listening()
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
        ("fixed_floor", "raw_asgi_fixed", "floor: raw ASGI + funtask's hypercorn fixes"),
        ("quart_floor", "quart_app", "floor: quart-trio route, same size"),
    ):
        floor = h.start_server(app)
        url = f"http://{HOST}:{floor.port}/blob?n={size}"
        targets.append(Target(key, label, url, floor.worker_pid(), auth))
    results.update(interleaved(h, "health", targets, s.health_rounds, s.health_warmup))
    h.stop_all()
    results["ratio_floor"] = results["full"]["rps"] / results["floor"]["rps"]
    results["ratio_fixed_floor"] = results["full"]["rps"] / results["fixed_floor"]["rps"]
    results["ratio_quart_floor"] = results["full"]["rps"] / results["quart_floor"]["rps"]
    results["ratio_empty"] = results["full"]["rps"] / results["empty"]["rps"]
    return results


def report(r: Report, data: dict[str, Any], s: Settings) -> None:
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
        ("fixed_floor", data["full_bytes"]),
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
        f"- full `/health` / raw ASGI floor on stock hypercorn (the floor issue 14 measured "
        f"against): **{data['ratio_floor']:.1%}**; / on funtask's patched hypercorn "
        f"(stricter): {data['ratio_fixed_floor']:.1%}; / quart-trio floor: "
        f"{data['ratio_quart_floor']:.1%}",
        "",
    )
    contention(r, [data[key] for key in ("empty", "full", "floor", "fixed_floor", "quart_floor")])
    r.target(
        "/health with a full history: >= 95 % of the raw ASGI floor sending as many bytes, "
        "the floor as issue 14 measured it (stock hypercorn; 85 % when it was filed)",
        f"{data['ratio_floor']:.1%} (stricter, not the issue's yardstick: "
        f"{data['ratio_fixed_floor']:.1%} of the floor with funtask's hypercorn fixes installed)",
        data["ratio_floor"] >= 0.95,
    )


CASE = Case("health", run, report, tools=("wrk",))
