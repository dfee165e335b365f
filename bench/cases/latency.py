"""Case 1f, ``latency``: one connection, one request at a time, the floors beside ``/run``."""

from __future__ import annotations

import statistics
from typing import Any

from bench.harness import STACK, Case, Harness, Settings, compare_servers, post_script
from bench.report import Report, contention


def run(h: Harness) -> dict[str, Any]:
    """The trivial sync ``/run`` and the two floors with wrk ``-t1 -c1``, interleaved rounds.

    At one connection the server is idle between requests, so the latency is the
    whole path of one request (loopback, hypercorn, the app) rather than queueing.
    """
    load = post_script(h, threads=1, connections=1)
    summary = compare_servers(h, "latency", list(STACK), pinned=False, wrk=load)
    summary["p50_ratio_raw"] = summary["overhead"]["p50_ms"] / summary["raw_asgi"]["p50_ms"]
    summary["p50_ratio_fixed"] = summary["overhead"]["p50_ms"] / summary["raw_fixed"]["p50_ms"]
    summary["p50_ratio_quart"] = summary["overhead"]["p50_ms"] / summary["quart_app"]["p50_ms"]
    return summary


def report(r: Report, data: dict[str, Any], s: Settings) -> None:
    r.add(
        "## 1f. Latency at one connection: trivial sync `/run` vs the floors",
        "",
        "The servers of case 1, each driven by wrk with one thread and one keep-alive "
        "connection (`-t1 -c1`, `bench/post.lua`: one request at a time, `greet0`), "
        f"{s.rounds} round(s) of {s.round_seconds:g} s per server"
        + (f" after a {s.warmup:g} s warm-up" if s.warmup else "")
        + ", order rotated per round. p50 and p99 are the means of the rounds' "
        "percentiles. No Go worker is built on this machine: the raw ASGI app on the same "
        "hypercorn trio worker is the floor to read `/run` against.",
        "",
        "| server | p50 | p99 | requests/s | server CPU/request | non-2xx | p50 per round |",
        "|---|---:|---:|---:|---:|---:|---|",
    )
    for key in data["keys"]:
        row = data[key]
        rounds = ", ".join(f"{v * 1000:,.0f} µs" for v in row["rounds_p50_ms"])
        r.add(
            f"| {row['label']} | {row['p50_ms'] * 1000:,.0f} µs | "
            f"{row['p99_ms'] * 1000:,.0f} µs | {row['rps']:,.0f} | {row['cpu_us']:,.0f} µs | "
            f"{row['non_2xx']} | {rounds} |"
        )
    added = (data["overhead"]["p50_ms"] - data["raw_asgi"]["p50_ms"]) * 1000
    r.add(
        "",
        f"- funtask `/run` p50 / raw ASGI p50: **{data['p50_ratio_raw']:.2f}x** "
        f"({added:+,.0f} µs); / raw ASGI + fixes: {data['p50_ratio_fixed']:.2f}x; "
        f"/ quart-trio route: {data['p50_ratio_quart']:.2f}x "
        f"(median of the rounds: "
        + ", ".join(
            f"{statistics.median(data[key]['rounds_p50_ms']) * 1000:,.0f} µs"
            for key in data["keys"]
        )
        + ")",
        "",
    )
    contention(r, [data[key] for key in data["keys"]])


CASE = Case("latency", run, report)
