"""Case 1e, ``tracing``: opentelemetry-api without an SDK, blocked, and with an SDK."""

from __future__ import annotations

import statistics
import time
from typing import Any

import trio

from bench.harness import Case, Harness, Settings, Variant, compare_servers, round_ratios
from bench.processes import Service
from bench.report import Report, contention


def tracing_hook_costs(loops: int = 20_000, repeats: int = 7) -> dict[str, float]:
    """µs per job in the tracing observer's hooks, best of N, timed in this process.

    The hooks one sync ``/run`` calls, as the runner calls them: ``none`` is the no-op
    observer (no package), ``api`` the tracing observer without an SDK (no
    ``traceparent`` in the request), ``api_forward`` the same with a valid
    ``traceparent`` and ``tracestate`` (validated and kept for a callback), ``sdk``
    with an SDK configured (a ``BatchSpanProcessor`` whose exporter discards spans);
    ``metrics`` and ``metrics_api`` are the default server's observers without and
    with the package (metrics alone, and metrics and tracing fanned out).
    The SDK is set as the global provider only after the other figures.
    """

    async def measure() -> dict[str, float]:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
        from werkzeug.datastructures import Headers

        from examples.counter import greet
        from funtask import ok
        from funtask._jobs import Job
        from funtask._metrics import Metrics
        from funtask._observe import NO_OBSERVER, Observer, combine_observers
        from funtask._params import Params
        from funtask._run import Run
        from funtask._tasks import TaskDef
        from funtask._tracing import Tracing
        from funtask._wire import finished_job

        task = TaskDef("greet0", greet)
        params = Params({})
        record = finished_job("greet0", "j", ok("hi"), 0.0001)
        plain = Headers({"Content-Type": "application/json", "Authorization": "Bearer x"})
        traced = plain.copy()
        traced["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        traced["tracestate"] = "rojo=00f067aa0ba902b7"

        def per_job(observer: Observer, headers: Headers) -> float:
            jobs = [
                Job(task, "j", params, Run("greet0", "j"), callback_url=None, max_duration=None)
                for _ in range(loops)
            ]
            began = time.perf_counter()
            for job in jobs:
                run = job.run
                job.request_headers = headers
                observer.job_started(job)
                job.request_headers = None
                run._on_step = observer.job_steps(job)
                with observer.job_scope(job):
                    run.step("greeting")
                observer.job_finished(job, record, 0.0001)
                observer.run_answered("greet0", 200)
            return (time.perf_counter() - began) / loops * 1e6

        tracing = Tracing("bench")
        metrics = Metrics(
            tasks=["greet0"], name="bench", instance="bench:1", version="0", dead_letter_dir=None
        )
        both = combine_observers([metrics, tracing])  # the default server's observer
        costs = {
            label: min(per_job(observer, headers) for _ in range(repeats))
            for label, observer, headers in (
                ("none", NO_OBSERVER, plain),
                ("api", tracing, plain),
                ("api_forward", tracing, traced),
                ("metrics", metrics, plain),
                ("metrics_api", both, plain),
            )
        }

        class Discard(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Discard()))
        trace.set_tracer_provider(provider)
        traced_by_sdk = Tracing("bench")  # looks at the global provider when made
        costs["sdk"] = min(per_job(traced_by_sdk, traced) for _ in range(repeats))
        provider.shutdown()
        return costs

    return trio.run(measure)


def run(h: Harness) -> dict[str, Any]:
    """Trivial sync ``/run``: opentelemetry-api installed (no SDK) vs blocked vs an SDK.

    The same server (``bench.apps:overhead``) five times, side by side in interleaved
    rounds: twice with the API as installed here and no SDK; twice with every
    ``opentelemetry`` import blocked in the server process (as without the package);
    and with an SDK configured (``FUNTASK_BENCH_OTEL``, see bench/apps.py).
    """
    # Two processes of each kind: identical servers differ by several per cent here
    # for reasons of their own (placement in memory), so each kind is the mean of two.
    kinds = [
        ("api", "", "opentelemetry-api, no SDK"),
        ("none", "block", "no opentelemetry (imports blocked)"),
        ("api2", "", "opentelemetry-api, no SDK, a second copy"),
        ("none2", "block", "no opentelemetry, a second copy"),
        ("sdk", "sdk", "SDK configured (spans discarded)"),
    ]
    variants = [
        Variant(key, label, env={"FUNTASK_BENCH_OTEL": mode} if mode else {})
        for key, mode, label in kinds
    ]

    def note_mode(variant: Variant, server: Service) -> None:
        mode = variant.env.get("FUNTASK_BENCH_OTEL", "(unset)")
        h.note(f"FUNTASK_BENCH_OTEL={mode}: {variant.label}")

    summary = compare_servers(h, "tracing", variants, check=note_mode)
    summary["hooks_us"] = tracing_hook_costs(h.settings.hook_loops, h.settings.hook_repeats)
    for key in ("api", "none"):  # the mean of the two copies, round by round
        pair = (summary[key], summary[key + "2"])
        summary[key + "_mean"] = {
            "label": pair[0]["label"] + " (mean of both copies)",
            "rps": statistics.mean(p["rps"] for p in pair),
            "cpu_us": statistics.mean(p["cpu_us"] for p in pair),
            "rounds_rps": [
                (a + b) / 2
                for a, b in zip(pair[0]["rounds_rps"], pair[1]["rounds_rps"], strict=True)
            ],
            "rounds_cpu_us": [
                (a + b) / 2
                for a, b in zip(pair[0]["rounds_cpu_us"], pair[1]["rounds_cpu_us"], strict=True)
            ],
        }
    for top, bottom in (
        ("api_mean", "none_mean"),
        ("api2", "api"),
        ("none2", "none"),
        ("sdk", "none_mean"),
    ):
        summary[f"{top}_rps"] = summary[top]["rps"] / summary[bottom]["rps"]
        summary[f"{top}_cpu"] = summary[top]["cpu_us"] / summary[bottom]["cpu_us"]
        summary[f"{top}_round_cpu"] = round_ratios(summary, top, bottom, "rounds_cpu_us")
        summary[f"{top}_round_rps"] = round_ratios(summary, top, bottom)
        summary[f"{top}_delta_us"] = summary[top]["cpu_us"] - summary[bottom]["cpu_us"]
    return summary


def report(r: Report, data: dict[str, Any], s: Settings) -> None:
    r.add(
        "## 1e. The cost of tracing: opentelemetry-api without an SDK, and with one",
        "",
        "The server of case 1 (`bench.apps:overhead`) five times, side by side: twice with "
        "`opentelemetry-api` installed and no SDK configured (the tracing observer on, "
        "making no span); twice with every `opentelemetry` import blocked in the server "
        "process (a `sys.meta_path` finder: as without the package, so no tracing "
        "observer) -- two identical processes differ by several per cent here, so each "
        "kind is the mean of its two; and once with an SDK `TracerProvider` configured (a "
        "`BatchSpanProcessor` whose exporter discards the spans). wrk as in case 1 (no "
        f"`traceparent` sent), {s.rounds} round(s) of {s.round_seconds:g} s per server after "
        f"a {s.warmup:g} s warm-up, order rotated per round; every server on the same CPU "
        "(`taskset -c`) with `PYTHONHASHSEED=0`.",
        "",
        "| server | requests/s | p50 | p99 | server CPU/request | non-2xx | others' CPU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    )
    for key in data["keys"]:
        row = data[key]
        r.add(
            f"| {row['label']} | {row['rps']:,.0f} | {row['p50_ms']:.2f} ms | "
            f"{row['p99_ms']:.2f} ms | {row['cpu_us']:,.1f} µs | {row['non_2xx']} | "
            f"{row['other_cores']:.2f} cores |"
        )
    r.add("")
    for key, what in (
        ("api_mean", "API, no SDK / blocked (each the mean of its two copies)"),
        ("api2", "the noise: API, second copy / first copy"),
        ("none2", "the noise: blocked, second copy / first copy"),
        ("sdk", "SDK configured / blocked (mean of both copies)"),
    ):
        r.add(
            f"- {what}: **{data[key + '_rps']:.1%}** of the requests/s (median "
            f"of the rounds {statistics.median(data[key + '_round_rps']):.1%}); server CPU "
            f"per request **{data[key + '_cpu'] - 1:+.1%}** "
            f"({data[key + '_delta_us']:+,.1f} µs; median of the "
            f"rounds' ratios {statistics.median(data[key + '_round_cpu']) - 1:+.1%})"
        )
    hooks = data["hooks_us"]
    r.add(
        f"- the observer hooks of one sync job with one step, timed alone in the harness "
        f"(best of {s.hook_repeats} x {s.hook_loops:,}; the step call included): no observer "
        f"{hooks['none']:.2f} µs; tracing observer without an SDK {hooks['api']:.2f} µs, "
        f"with a valid `traceparent`/`tracestate` to forward {hooks['api_forward']:.2f} µs; "
        f"with an SDK (job span, one step event, batch processor) {hooks['sdk']:.2f} µs; "
        f"the default server's observers (metrics on): {hooks['metrics']:.2f} µs without "
        f"the package, {hooks['metrics_api']:.2f} µs with it and no SDK "
        f"({hooks['metrics_api'] - hooks['metrics']:+.2f} µs, "
        f"{(hooks['metrics_api'] - hooks['metrics']) / data['none_mean']['cpu_us']:.2%} of the "
        "server CPU per request)",
        "",
    )
    contention(r, [data[key] for key in data["keys"]])
    r.target(
        "opentelemetry-api without an SDK: >= 98 % of the requests/s without the package",
        f"{data['api_mean_rps']:.1%}",
        data["api_mean_rps"] >= 0.98,
    )
    r.target(
        "opentelemetry-api without an SDK: server CPU per request at most +2 %",
        f"{data['api_mean_cpu'] - 1:+.1%}",
        data["api_mean_cpu"] <= 1.02,
    )


CASE = Case("tracing", run, report)
