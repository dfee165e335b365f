"""funtask's speed benchmark: the overhead around the user's function, against our own stack.

    python -m bench                          # every case, ~6 minutes, writes bench/RESULTS.md
    python -m bench --quick                  # every case, shorter (~1.5 minutes), prints only
    python -m bench overhead memory [--output FILE]   # some cases (or --case NAME, repeatable)
    python -m bench store --rounds 30        # memory vs SQLite store, 30 rounds
    python -m bench metrics --baseline DIR   # DIR: a checkout of another commit
    python -m bench redis                    # memory vs Redis store (needs redis-server)
    python -m bench tracing --rounds 60      # opentelemetry-api vs none vs an SDK
    python -m bench latency                  # one connection: p50/p99 of the floors and /run
    python -m bench profile run async        # py-spy on the server under load, by layer
    python -m bench overhead --smoke         # a fraction of a second: does the case still run?

See ``bench/README.md`` for what each case does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.cases import CASES, DEFAULT_CASES
from bench.cases.profile import TARGETS as PROFILE_TARGETS
from bench.harness import BENCH, Harness, Settings
from bench.processes import find_tool, log
from bench.report import machine, render, speed_probe


def parse_cases(positional: list[str], options: list[str] | None) -> tuple[list[str], list[str]]:
    """The cases to run, in their usual order, and the profile's targets.

    ``profile`` takes the names after it that are profile targets (``run``,
    ``async``): ``python -m bench profile async`` profiles the async case rather
    than running it. Without a name, every default case.
    """
    names: list[str] = []
    targets: list[str] = []
    words = [*positional, *(w for value in options or [] for w in value.split(","))]
    profiling = False
    for word in (w.strip() for w in words):
        if profiling and word in PROFILE_TARGETS:
            if word not in targets:
                targets.append(word)
            continue
        if word not in CASES:
            raise SystemExit(f"unknown case {word!r}; choose from {', '.join(CASES)}")
        profiling = word == "profile"
        if word not in names:
            names.append(word)
    if not names:
        names = list(DEFAULT_CASES)
    if "profile" in names and not targets:
        targets = list(PROFILE_TARGETS)
    return [name for name in CASES if name in names], targets


@contextlib.contextmanager
def harness(settings: Settings, baseline: Path | None = None) -> Iterator[Harness]:
    h = Harness(settings, baseline)
    try:
        yield h
    finally:
        h.close()


def main(argv: list[str] | None = None) -> None:
    """Run the cases asked for; print the report (and write it where asked)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure funtask's overhead against its own stack (see bench/README.md).",
    )
    parser.add_argument(
        "cases",
        nargs="*",
        metavar="CASE",
        help=f"cases to run (default: all but profile): {', '.join(CASES)}; "
        f"`profile` may be followed by what to profile: {', '.join(PROFILE_TARGETS)}",
    )
    parser.add_argument(
        "--case",
        action="append",
        metavar="NAME",
        help="run only this case (repeatable or comma-separated; as the positional names)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="shorter runs (~1.5 minutes)")
    size.add_argument(
        "--smoke",
        action="store_true",
        help="tiny runs (a round of ~1 s, a few jobs and clients): checks that the harness "
        "works, the figures mean nothing (tests/test_bench_smoke.py)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="Markdown file to write (default: bench/RESULTS.md for a full run of every "
        "case; otherwise the report is only printed)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw figures as JSON")
    parser.add_argument(
        "--rounds",
        type=int,
        help="interleaved rounds of the wrk cases (overhead, latency, metrics, store, redis, "
        "tracing)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="a checkout of another commit (e.g. `git archive REV | tar -x -C DIR`) whose "
        "bench.apps:overhead the metrics and store cases run side by side with this one's",
    )
    parser.add_argument(
        "--profile-dir",
        type=Path,
        metavar="DIR",
        help="where the profile case writes py-spy's raw profiles "
        "(default: funtask-bench-profiles in the temporary directory)",
    )
    args = parser.parse_args(argv)
    names, targets = parse_cases(args.cases, args.case)
    cases = [CASES[name] for name in names]
    missing = sorted({tool for case in cases for tool in case.tools if not find_tool(tool)})
    if missing:
        raise SystemExit(
            f"{', '.join(missing)} not installed (apt-get install wrk redis-server; "
            "pip install py-spy), needed by: "
            + ", ".join(case.name for case in cases if set(case.tools) & set(missing))
        )
    settings = Settings.make(args.quick, args.smoke)
    if args.rounds:
        settings = dataclasses.replace(settings, rounds=args.rounds)
    if targets:
        settings = dataclasses.replace(settings, profile_targets=tuple(targets))
    if args.profile_dir:
        settings = dataclasses.replace(settings, profile_dir=str(args.profile_dir))
    output = args.output
    if output is None and not settings.quick and names == list(DEFAULT_CASES):
        output = BENCH / "RESULTS.md"
    if args.baseline is not None and not (args.baseline / "bench" / "apps.py").exists():
        raise SystemExit(f"--baseline {args.baseline}: no bench/apps.py there")
    info = machine()
    results: dict[str, Any] = {}
    began = time.monotonic()
    with harness(settings, args.baseline) as h:
        probes: dict[str, float] = {}
        for case in cases:
            probes[case.name] = speed_probe()
            log(f"case {case.name} (speed probe {probes[case.name]:.1f} ms)")
            results[case.name] = case.run(h)
        probes["end"] = speed_probe()
        results["speed_probe_ms"] = probes
        elapsed = time.monotonic() - began
        shown = sys.argv[1:] if argv is None else argv
        text = render(cases, results, info, h, elapsed, shown)
    if output is not None:
        output.write_text(text)
        log(f"wrote {output}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, default=str))
    print(text)


if __name__ == "__main__":
    main()
