"""``profile``: py-spy on a server under load, its samples summed by layer of the stack.

    python -m bench profile run      # the trivial sync /run under wrk (case 1's load)
    python -m bench profile async    # async jobs with callbacks, end to end (case 6's load)

py-spy (``record --format raw --nonblocking --full-filenames``) samples the
hypercorn worker while the load runs and writes its raw profile (collapsed
stacks, one ``frame;frame;… count`` line per stack, which speedscope and
flamegraph.pl read). Idle threads are left out (py-spy's default), so the
samples are the server's CPU time. Each sample is attributed to one layer by
:func:`attribute`; the rule is in bench/README.md.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sysconfig
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from bench.cases.asyncjobs import async_jobs, start_callbacks_server, start_receiver
from bench.harness import Case, Harness, Settings, check_greet, post_script
from bench.processes import HOST, REPO, cpu_seconds, find_tool, log
from bench.report import Report

#: What ``python -m bench profile`` can profile.
TARGETS: Final = ("run", "async")

#: The layers in report order, and the top-level packages that make them up.
LAYERS: Final = (
    "hypercorn",
    "h11",
    "quart/werkzeug",
    "httpx/httpcore",
    "dead-letter I/O",
    "funtask",
    "trio",
    "json",
    "other",
)
PACKAGE_LAYERS: Final = {
    "hypercorn": "hypercorn",
    "h11": "h11",
    "quart": "quart/werkzeug",
    "quart_trio": "quart/werkzeug",
    "werkzeug": "quart/werkzeug",
    "httpx": "httpx/httpcore",
    "httpcore": "httpx/httpcore",
    "certifi": "httpx/httpcore",  # httpx's CA bundle
    "funtask": "funtask",
    "trio": "trio",
    "outcome": "trio",  # trio's own helpers (to_thread's worker, sniffing)
    "sniffio": "trio",
}
DEAD_LETTERS: Final = "funtask/_deadletters.py"
_STDLIB: Final = str(Path(sysconfig.get_paths()["stdlib"]).resolve())
_FRAME: Final = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def origin(filename: str) -> tuple[str, str]:
    """Where a frame's file comes from: ``(kind, top-level name)``.

    ``kind`` is ``package`` (site-packages, or this checkout: ``funtask``,
    ``bench``, ``examples``), ``stdlib`` (the standard library, frozen modules)
    or ``unknown``; the name is the top-level package or module.
    """
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
        return "stdlib", filename
    parts = Path(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            index = parts.index(marker)
            if index + 1 < len(parts):
                return "package", parts[index + 1].removesuffix(".py")
    if filename.startswith(str(REPO) + "/"):
        return "package", Path(filename).relative_to(REPO).parts[0].removesuffix(".py")
    if filename.startswith(_STDLIB + "/") or "/lib/python3" in filename:
        tail = filename.split("/lib/python3", 1)[-1].split("/", 2)
        name = tail[1] if len(tail) > 1 else filename
        return "stdlib", name.removesuffix(".py")
    return "unknown", filename


def layer_of(filename: str) -> str | None:
    """The layer a frame's file makes attributable, or None (stdlib: ask the caller)."""
    kind, name = origin(filename)
    if kind == "stdlib":
        return "json" if name == "json" else None
    if kind == "unknown":
        return None
    if name == "funtask" and filename.endswith(DEAD_LETTERS):
        return "dead-letter I/O"
    return PACKAGE_LAYERS.get(name, "other")


def attribute(stack: list[str]) -> tuple[str, str]:
    """The layer of one sampled stack (root first) and the frame that decided it.

    The innermost frame whose file belongs to a known package decides: standard
    library frames (``os``, ``selectors``, ``logging``, ``threading`` …) count for
    the nearest caller that is not one, except ``json``, a layer of its own. A
    stack of nothing but the standard library is ``other``.
    """
    for frame in reversed(stack):
        match = _FRAME.match(frame)
        filename = match.group("file") if match else frame
        layer = layer_of(filename)
        if layer is not None:
            return layer, frame
    return "other", stack[-1] if stack else "?"


def summarise(raw: Path) -> dict[str, Any]:
    """Samples by layer, and the frames that decided most samples, from a raw profile."""
    layers: Counter[str] = Counter()
    frames: Counter[tuple[str, str]] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        layer, frame = attribute(stack_text.split(";"))
        layers[layer] += count
        frames[(layer, _short(frame))] += count
        total += count
    return {
        "samples": total,
        "layers": {layer: layers.get(layer, 0) for layer in LAYERS},
        "top": [[layer, frame, count] for (layer, frame), count in frames.most_common(12)],
    }


def _short(frame: str) -> str:
    """``function (path:line)`` with the path from its package down."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    filename = match.group("file")
    for marker in ("/site-packages/", "/dist-packages/", str(REPO) + "/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    else:
        filename = filename.rsplit("/lib/", 1)[-1]
    line = f":{match.group('line')}" if match.group("line") else ""
    return f"{match.group('function')} ({filename}{line})"


class PySpy:
    """``py-spy record`` on one process, from when it is made until :meth:`stop`."""

    def __init__(self, h: Harness, pid: int, output: Path) -> None:
        binary = find_tool("py-spy")
        if binary is None:
            raise SystemExit("py-spy is not installed (pip install py-spy)")
        self.output = output
        argv = [binary, "record", "--pid", str(pid), "--rate", str(h.settings.profile_rate)]
        argv += ["--format", "raw", "--nonblocking", "--full-filenames", "-o", str(output)]
        h.note(
            " ".join(argv)
            .replace(binary, "py-spy")
            .replace(f"--pid {pid}", "--pid WORKER_PID")
            .replace(str(output), "OUT.txt")
        )
        self.log = h.logdir / f"py-spy-{output.stem}.log"
        with open(self.log, "wb") as log_file:
            self.proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while b"Sampling process" not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"py-spy did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Ctrl-C: py-spy writes the profile and exits."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not self.output.exists():
            raise RuntimeError(f"py-spy wrote no profile:\n{self.log.read_text()}")


def profile_run(h: Harness, output: Path) -> dict[str, Any]:
    """The trivial sync ``/run`` under wrk as in case 1, py-spy on the worker meanwhile."""
    s = h.settings
    server = h.start_server("overhead")
    check_greet(server, h.token, "overhead")
    pid = server.worker_pid()
    url = f"http://{HOST}:{server.port}"
    load = post_script(h)
    if s.warmup:
        h.wrk(url, s.warmup, **load)
    seconds = max(1, round(s.profile_seconds))
    spy = PySpy(h, pid, output)
    try:
        before = cpu_seconds(pid)
        result = h.wrk(url, seconds, pid=pid, **load)
        cpu = cpu_seconds(pid) - before
    finally:
        spy.stop()
    h.stop_all()
    return {
        "what": f"trivial sync `/run` under wrk ({seconds} s, as in case 1)",
        "unit": "request",
        "count": result["requests"],
        "non_2xx": result["non_2xx"],
        "server_cpu_us": cpu / max(result["requests"], 1) * 1e6,
    }


def profile_async(h: Harness, output: Path) -> dict[str, Any]:
    """Async jobs with callbacks as in case 6 (memory store, dead letters on disk)."""
    s = h.settings
    _, receiver_port = start_receiver(h)
    server = start_callbacks_server(h, receiver_port)
    pid = server.worker_pid()
    spies: list[PySpy] = []  # started once the warm-up jobs are done
    try:
        result = async_jobs(
            h,
            server,
            receiver_port,
            s.async_jobs,
            measuring=lambda: spies.append(PySpy(h, pid, output)),
        )
    finally:
        for spy in spies:
            spy.stop()
    h.stop_all()
    if result["busy"] or result["unexpected"]:
        raise RuntimeError(f"profile async: 409s or unexpected answers: {result}")
    return {
        "what": f"{result['delivered']:,} async jobs with callbacks (as in case 6, on disk, "
        f"after {s.async_warmup_jobs} unprofiled)",
        "unit": "job",
        "count": result["delivered"],
        "non_2xx": result["busy"],
        "server_cpu_us": result["server_cpu_us_per_job"],
    }


PROFILERS: Final[dict[str, Callable[[Harness, Path], dict[str, Any]]]] = {
    "run": profile_run,
    "async": profile_async,
}


def run(h: Harness) -> dict[str, Any]:
    """Each profile target asked for in turn; their raw profiles and layer shares."""
    s = h.settings
    directory = Path(s.profile_dir or Path(tempfile.gettempdir()) / "funtask-bench-profiles")
    directory.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"rate": s.profile_rate, "targets": {}}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for target in s.profile_targets:
        output = directory / f"profile-{target}-{stamp}.txt"
        log(f"profile {target}: py-spy -> {output}")
        figures = PROFILERS[target](h, output)
        figures["raw"] = str(output)
        figures.update(summarise(output))
        results["targets"][target] = figures
    return results


def report(r: Report, data: dict[str, Any], s: Settings) -> None:
    r.add(
        "## Profile: where the server's CPU goes, by layer",
        "",
        f"py-spy `record --format raw --nonblocking --full-filenames --rate {data['rate']}` "
        "on the hypercorn worker while the load runs; idle threads are not sampled, so the "
        "samples are the server's CPU time. A sample counts for the layer of its innermost "
        "frame whose file belongs to a known package; standard-library frames count for "
        "their nearest caller outside it, except `json`, a layer of its own; "
        "`funtask/_deadletters.py` (and the `os` calls under it) is dead-letter I/O, the "
        "rest of `funtask/` is funtask; anything else, and stacks of nothing but the "
        "standard library, is other. CPU per unit is the worker's user + system time over "
        "the load, shared out by the samples.",
        "",
    )
    for target, figures in data["targets"].items():
        samples = max(figures["samples"], 1)
        unit = figures["unit"]
        r.add(
            f"### `{target}`: {figures['what']}",
            "",
            f"{figures['samples']:,} samples; {figures['count']:,} {unit}s, "
            f"{figures['server_cpu_us']:,.0f} µs of server CPU per {unit}; raw profile: "
            f"`{figures['raw']}`.",
            "",
            f"| layer | samples | share | µs per {unit} |",
            "|---|---:|---:|---:|",
        )
        for layer, count in figures["layers"].items():
            share = count / samples
            r.add(
                f"| {layer} | {count:,} | {share:.1%} | {share * figures['server_cpu_us']:,.0f} |"
            )
        r.add("", "| deciding frame (most samples) | layer | share |", "|---|---|---:|")
        for layer, frame, count in figures["top"]:
            r.add(f"| `{frame}` | {layer} | {count / samples:.1%} |")
        r.add("")


CASE = Case("profile", run, report, tools=("wrk", "py-spy"))
