"""Case 4, ``fanout``: one task reporting progress to many ``/events`` clients."""

from __future__ import annotations

import json
import secrets
import statistics
import time
from typing import Any

from bench.harness import Case, Harness, Settings
from bench.lean import run_task
from bench.processes import cpu_seconds, log
from bench.report import Report, _f


def run(h: Harness) -> dict[str, Any]:
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


def report(r: Report, data: dict[str, Any], s: Settings) -> None:
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


CASE = Case("fanout", run, report, tools=())
