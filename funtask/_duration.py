"""Go-compatible duration formatting.

The funtask HTTP API reports durations (``duration``, ``running``, ``uptime``)
as strings in exactly the format produced by Go's ``time.Duration.String()``,
e.g. ``"12ms"``, ``"1.234s"``, ``"1m2.5s"`` or ``"2h0m0s"``.

All formatting is done with integer arithmetic on nanosecond counts so that no
precision is lost.  Float seconds are converted through the shortest decimal
representation of the float (its ``repr``), so ``2.0005`` rounds to ``2.001s``
as a human would expect; rounding is always half away from zero.
"""

from __future__ import annotations

import math
import operator
from fractions import Fraction

__all__ = [
    "duration_ms",
    "format_duration",
    "format_duration_ns",
    "format_duration_seconds",
]

_NANOSECOND = 1
_MICROSECOND = 1_000 * _NANOSECOND
_MILLISECOND = 1_000 * _MICROSECOND
_SECOND = 1_000 * _MILLISECOND

_MICRO_SIGN = "\u00b5"


def _frac(value: int, prec: int) -> tuple[str, int]:
    """Split ``value`` into ``prec`` fraction digits (zeros trimmed) and the integer part."""
    digits: list[str] = []
    printed = False
    for _ in range(prec):
        value, digit = divmod(value, 10)
        printed = printed or digit != 0
        if printed:
            digits.append(str(digit))
    if not digits:
        return "", value
    return "." + "".join(reversed(digits)), value


def format_duration_ns(ns: int) -> str:
    """Format an integer nanosecond count exactly like Go's ``time.Duration.String()``."""
    n = operator.index(ns)
    if n == 0:
        return "0s"
    sign = "-" if n < 0 else ""
    u = -n if n < 0 else n

    if u < _SECOND:
        if u < _MICROSECOND:
            unit, prec = "ns", 0
        elif u < _MILLISECOND:
            unit, prec = _MICRO_SIGN + "s", 3
        else:
            unit, prec = "ms", 6
        fraction, whole = _frac(u, prec)
        return f"{sign}{whole}{fraction}{unit}"

    fraction, whole_seconds = _frac(u, 9)
    minutes, seconds = divmod(whole_seconds, 60)
    out = f"{seconds}{fraction}s"
    if minutes > 0:
        hours, minutes = divmod(minutes, 60)
        out = f"{minutes}m{out}"
        if hours > 0:
            out = f"{hours}h{out}"
    return sign + out


# Below this many units, a float product is within 2**-21 of the exact decimal
# value, so a fraction more than 1e-6 away from .5 cannot be on the other side of a tie.
_FAST_LIMIT = float(2**30)


def _round_seconds(seconds: float, unit_ns: int) -> int:
    """Round float ``seconds`` to a multiple of ``unit_ns`` (half away from zero); return ns."""
    if not math.isfinite(seconds):
        raise ValueError(f"duration must be finite, got {seconds!r}")
    scaled = seconds * (_SECOND // unit_ns)
    if -_FAST_LIMIT < scaled < _FAST_LIMIT:
        whole = math.floor(scaled)
        fraction = scaled - whole
        if abs(fraction - 0.5) > 1e-6:  # not a tie: the nearest multiple is unambiguous
            return (whole + (fraction > 0.5)) * unit_ns
    # A tie, or nearly: decide exactly, on the shortest decimal representation.
    exact = Fraction(repr(float(seconds))) * _SECOND / unit_ns
    magnitude = (abs(exact) * 2 + 1) // 2
    units = -magnitude if exact < 0 else magnitude
    return int(units) * unit_ns


def format_duration(seconds: float) -> str:
    """Format float ``seconds`` rounded to the nearest millisecond, Go style (``1m2.5s``)."""
    return format_duration_ns(_round_seconds(seconds, _MILLISECOND))


def format_duration_seconds(seconds: float) -> str:
    """Format float ``seconds`` rounded to the whole second, like Go's ``d.Round(time.Second)``."""
    return format_duration_ns(_round_seconds(seconds, _SECOND))


def duration_ms(seconds: float) -> int:
    """Return float ``seconds`` as whole milliseconds, rounded half away from zero."""
    return _round_seconds(seconds, _MILLISECOND) // _MILLISECOND
