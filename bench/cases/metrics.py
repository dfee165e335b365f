"""Case 1b, ``metrics``: trivial sync ``/run`` with metrics on vs ``metrics=False``."""

from __future__ import annotations

import statistics
import time
from typing import Any

import trio

from bench.harness import (
    Case,
    Harness,
    Settings,
    Variant,
    baseline_label,
    compare_servers,
    round_ratios,
)
from bench.lean import call
from bench.processes import Service
from bench.report import Report, contention, wrk_rows


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


def run(h: Harness) -> dict[str, Any]:
    """Trivial sync ``/run`` with metrics on (the default) vs ``metrics=False``, interleaved.

    With ``--baseline DIR`` the same server from another checkout (e.g. the commit
    before metrics existed) runs in the same rounds, to show the hot path's cost.
    """
    variants = [
        Variant("on", "metrics on (default)"),
        Variant("off", "metrics=False", app="overhead_nometrics"),
        # The same server twice: how far two identical servers differ here (the noise).
        Variant("off2", "metrics=False, a second copy", app="overhead_nometrics"),
    ]
    if h.baseline is not None:
        label = f"baseline {baseline_label(h.baseline)} (no metrics)"
        variants.append(Variant("base", label, root=h.baseline))

    def scrape(variant: Variant, server: Service) -> None:
        assert server.port is not None
        scraped, _ = call(server.port, "GET", "/metrics", h.token)
        if scraped != (200 if variant.key == "on" else 404):
            raise RuntimeError(f"{variant.label}: /metrics answered {scraped}")

    summary = compare_servers(h, "metrics", variants, check=scrape)
    summary["hooks_us"] = hook_costs(h.settings.hook_loops, h.settings.hook_repeats)
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


def report(r: Report, data: dict[str, Any], s: Settings) -> None:
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
    wrk_rows(r, [data[key] for key in data["keys"]])
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
        f"- the observer hooks of one sync job, timed alone in the harness (best of "
        f"{s.hook_repeats} x {s.hook_loops:,}): metrics on "
        f"**{data['hooks_us']['on']:.2f} µs**, metrics off (the no-op "
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


CASE = Case("metrics", run, report)
