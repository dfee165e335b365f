"""Case 2, ``progress``: the cost of ``run.progress()`` with /events subscribers."""

from __future__ import annotations

from typing import Any

from bench.harness import Case, Harness, Settings
from bench.lean import run_task
from bench.processes import Service, log
from bench.report import Report

PROGRESS_VARIANTS = (
    ("tight", "progress(i, n) in a loop, no yield", {"batch": 0}),
    ("message", "progress(i, n, msg) with a new message each call", {"batch": 0, "message": True}),
    ("yielding", "progress(i, n), yielding to Trio every 1,000 calls", {"batch": 1000}),
)


def run(h: Harness) -> dict[str, Any]:
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


def report(r: Report, data: dict[str, Any], s: Settings) -> None:
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


CASE = Case("progress", run, report, tools=())
