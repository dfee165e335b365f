"""Case 1c, ``store``: trivial sync ``/run`` with the memory store vs the SQLite store."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.harness import (
    Case,
    Harness,
    Settings,
    Variant,
    baseline_label,
    compare_servers,
    round_ratios,
)
from bench.lean import get_json
from bench.processes import REPO, Service
from bench.report import Report


def run(h: Harness) -> dict[str, Any]:
    """Trivial sync ``/run``: the memory store (default) vs the SQLite store, interleaved.

    With ``--baseline DIR`` the memory server of another checkout (the commit before
    stores existed) runs in the same rounds, to show the memory store's cost.
    """
    database = Path(tempfile.mkdtemp(prefix="funtask-bench-store-", dir=REPO / "bench"))
    h.scratch.append(database)
    variants = [
        Variant("memory", "memory store (default)", env={"FUNTASK_STORE": "memory"}),
        Variant(
            "sqlite",
            "SQLite store (WAL, synchronous=NORMAL)",
            env={"FUNTASK_STORE": f"sqlite://{database}/jobs.db"},
        ),
    ]
    if h.baseline is not None:
        label = f"baseline {baseline_label(h.baseline)}"
        variants.append(Variant("base", label, env={"FUNTASK_STORE": "memory"}, root=h.baseline))

    def store_field(variant: Variant, server: Service) -> None:
        assert server.port is not None
        health = get_json(server.port, "/health", h.token)
        if ("store" in health) != (variant.key == "sqlite"):
            raise RuntimeError(f"{variant.label}: /health store field {health.get('store')!r}")

    summary = compare_servers(h, "store", variants, check=store_field)
    summary["ratio_rps"] = summary["sqlite"]["rps"] / summary["memory"]["rps"]
    summary["ratio_cpu"] = summary["sqlite"]["cpu_us"] / summary["memory"]["cpu_us"]
    summary["round_ratios"] = round_ratios(summary, "sqlite", "memory")
    if "base" in summary:
        summary["memory_vs_base_rps"] = summary["memory"]["rps"] / summary["base"]["rps"]
        summary["memory_vs_base_cpu"] = summary["memory"]["cpu_us"] / summary["base"]["cpu_us"]
        summary["round_ratios_base"] = round_ratios(summary, "memory", "base")
    return summary


def report(r: Report, data: dict[str, Any], s: Settings) -> None:
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


CASE = Case("store", run, report)
