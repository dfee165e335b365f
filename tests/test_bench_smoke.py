"""Every case of ``python -m bench`` runs and reports, in its ``--smoke`` size.

Not a timing test: a case runs for about a second (a round of wrk, a few jobs,
a few clients) so that the harness cannot rot between the hand-made runs that
produce bench/RESULTS.md. Each case runs as ``python -m bench CASE --smoke`` in
its own process and must exit 0, write its section of the report and the
figures its report is made from. Nothing here touches bench/RESULTS.md.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

from bench.cases import CASES
from bench.cases.profile import attribute
from bench.processes import find_tool

REPO: Final = Path(__file__).resolve().parent.parent
RESULTS: Final = REPO / "bench" / "RESULTS.md"
CASE_TIMEOUT: Final = 180  # seconds; a smoke run takes a few (servers start in ~1 s each)

#: Per case: a heading its report section must have, and keys its figures must have.
EXPECTED: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "overhead": (
        "## 1. Request overhead: trivial sync `/run` vs the floors",
        ("raw_asgi", "raw_fixed", "quart_app", "overhead", "ratio_raw", "ratio_fixed"),
    ),
    "latency": (
        "## 1f. Latency at one connection",
        ("raw_asgi", "raw_fixed", "quart_app", "overhead", "p50_ratio_raw", "p50_ratio_fixed"),
    ),
    "metrics": ("## 1b. The cost of metrics", ("on", "off", "off2", "hooks_us", "ratio_cpu")),
    "store": ("## 1c. The cost of a store", ("memory", "sqlite", "ratio_rps")),
    "redis": ("## 1d. The Redis store", ("memory", "redis", "ratio_rps")),
    "tracing": ("## 1e. The cost of tracing", ("api_mean", "none_mean", "sdk", "hooks_us")),
    "progress": ("## 2. Progress cost", ("by_subscribers", "ratio")),
    "health": (
        "## 3. `/health` cost with a full history",
        ("full", "floor", "fixed_floor", "ratio_floor", "ratio_fixed_floor"),
    ),
    "fanout": ("## 4. SSE fan-out", ("pairs", "slowdown", "floors")),
    "memory": ("## 5. Memory: RSS of the worker", ("samples", "growth_bytes")),
    "async": ("## 6. Async throughput with callbacks", ("runs", "workers", "tasks")),
    "profile": ("## Profile: where the server's CPU goes, by layer", ("rate", "targets")),
}

TOOLS: Final = {
    "wrk": "apt-get install wrk",
    "redis-server": "apt-get install redis-server",
    "py-spy": "pip install py-spy (the dev extra)",
}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


def test_every_case_is_checked() -> None:
    assert set(EXPECTED) == set(CASES)


def test_profile_attribution_rule() -> None:
    """The innermost frame of a known package decides; the stdlib counts for its caller."""
    site = "/venv/lib/python3.11/site-packages"
    stdlib = "/usr/lib/python3.11"
    thread = [
        f"Thread.run ({stdlib}/threading.py:982)",
        f"WorkerThread._work ({site}/trio/_core/_thread_cache.py:213)",
        f"capture ({site}/outcome/_impl.py:67)",
    ]
    dead_letter = f"write_dead_letter ({REPO}/funtask/_deadletters.py:320)"
    assert attribute([*thread, dead_letter, f"replace ({stdlib}/os.py:10)"])[0] == (
        "dead-letter I/O"
    )
    assert attribute(thread)[0] == "trio"
    handler = f"run ({REPO}/funtask/_app.py:100)"
    assert attribute([handler, f"dumps ({stdlib}/json/__init__.py:231)"])[0] == "json"
    assert attribute([handler, f"info ({stdlib}/logging/__init__.py:1)"])[0] == "funtask"
    h11 = f"next_event ({site}/h11/_connection.py:400)"
    assert attribute([f"handle ({site}/hypercorn/protocol/h11.py:1)", h11])[0] == "h11"
    assert attribute([f"get ({site}/werkzeug/datastructures.py:1)"])[0] == "quart/werkzeug"
    assert attribute([f"send ({site}/httpcore/_async/http11.py:1)"])[0] == "httpx/httpcore"
    assert attribute([f"inc ({site}/prometheus_client/metrics.py:1)"])[0] == "other"
    assert attribute(["<module> (<frozen runpy>:88)", f"x ({stdlib}/selectors.py:1)"])[0] == (
        "other"
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the bench reads /proc")
@pytest.mark.parametrize("name", list(CASES))
def test_case_runs_and_reports(name: str, tmp_path: Path) -> None:
    for tool in CASES[name].tools:
        if find_tool(tool) is None:
            pytest.skip(f"{name} needs {tool}, not installed here ({TOOLS[tool]})")
    before = _digest(RESULTS)
    output, figures = tmp_path / "report.md", tmp_path / "figures.json"
    argv = [sys.executable, "-m", "bench", name, "--smoke", "--output", str(output)]
    argv += ["--json", str(figures), "--profile-dir", str(tmp_path / "profiles")]
    done = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=CASE_TIMEOUT, check=False
    )
    assert done.returncode == 0, f"python -m bench {name} --smoke failed:\n{done.stderr[-4000:]}"
    assert _digest(RESULTS) == before, "a smoke run must not write bench/RESULTS.md"

    heading, keys = EXPECTED[name]
    report = output.read_text()
    assert report.startswith("# funtask benchmark results")
    assert heading in report
    assert "## Targets" in report and "## Commands" in report
    assert report in done.stdout  # printed as well as written
    results = json.loads(figures.read_text())["results"]
    assert set(results) == {name, "speed_probe_ms"}
    missing = [key for key in keys if key not in results[name]]
    assert not missing, f"{name}: no {missing} in its figures"

    if name == "async":
        for run in results[name]["runs"].values():
            assert run["delivered"] == run["jobs"] and run["busy"] == 0
            assert run["server_cpu_us_per_job"] > 0 and run["dead_letters_left"] == 0
    if name == "profile":
        for target, profile in results[name]["targets"].items():
            assert profile["samples"] > 0, f"py-spy sampled nothing for {target}"
            assert set(profile["layers"]) >= {"hypercorn", "funtask", "trio", "other"}
            assert Path(profile["raw"]).parent == tmp_path / "profiles"
            assert Path(profile["raw"]).stat().st_size > 0
