"""The cases of ``python -m bench``, in the order a full run takes them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from bench.cases import (
    asyncjobs,
    fanout,
    health,
    latency,
    memory,
    metrics,
    overhead,
    profile,
    progress,
    redis,
    store,
    tracing,
)

if TYPE_CHECKING:
    from bench.harness import Case

__all__ = ["CASES", "DEFAULT_CASES"]

#: Every case by name, in the order a run takes them.
CASES: Final[dict[str, Case]] = {
    case.name: case
    for case in (
        overhead.CASE,
        latency.CASE,
        metrics.CASE,
        store.CASE,
        redis.CASE,
        tracing.CASE,
        progress.CASE,
        health.CASE,
        fanout.CASE,
        memory.CASE,
        asyncjobs.CASE,
        profile.CASE,
    )
}

#: What ``python -m bench`` runs when no case is named: every measurement (the profile,
#: a diagnosis rather than a figure, only when asked for).
DEFAULT_CASES: Final = tuple(name for name in CASES if name != "profile")
