"""Tests for funtask._duration (Go ``time.Duration.String()`` compatible formatting)."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from funtask._duration import (
    duration_ms,
    format_duration,
    format_duration_ns,
    format_duration_seconds,
)

NS = 1
US = 1_000 * NS
MS = 1_000 * US
S = 1_000 * MS
M = 60 * S
H = 60 * M

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

MU = "\u00b5"  # MICRO SIGN, as emitted by Go

# (nanoseconds, Go's time.Duration(ns).String())
GO_CASES: list[tuple[int, str]] = [
    (0, "0s"),
    (1, "1ns"),
    (9, "9ns"),
    (10, "10ns"),
    (999, "999ns"),
    (1 * US, f"1{MU}s"),
    (1100 * NS, f"1.1{MU}s"),
    (1001 * NS, f"1.001{MU}s"),
    (10 * US, f"10{MU}s"),
    (999 * US, f"999{MU}s"),
    (999_999 * NS, f"999.999{MU}s"),
    (1 * MS, "1ms"),
    (1_000_001 * NS, "1.000001ms"),
    (1500 * US, "1.5ms"),
    (2200 * US, "2.2ms"),
    (12 * MS, "12ms"),
    (100 * MS, "100ms"),
    (999_999_999 * NS, "999.999999ms"),
    (1 * S, "1s"),
    (1 * S + 1, "1.000000001s"),
    (1234 * MS, "1.234s"),
    (3300 * MS, "3.3s"),
    (10 * S, "10s"),
    (59_999 * MS, "59.999s"),
    (1 * M, "1m0s"),
    (62_500 * MS, "1m2.5s"),
    (4 * M + 5 * S, "4m5s"),
    (4 * M + 5001 * MS, "4m5.001s"),
    (8 * M + 1 * NS, "8m0.000000001s"),
    (10 * M, "10m0s"),
    (59 * M + 59 * S, "59m59s"),
    (1 * H, "1h0m0s"),
    (1 * H + 1, "1h0m0.000000001s"),
    (1 * H + 1 * M + 1001 * MS, "1h1m1.001s"),
    (H + 59 * M + 59 * S + 999_999_999, "1h59m59.999999999s"),
    (2 * H, "2h0m0s"),
    (5 * H + 6 * M + 7001 * MS, "5h6m7.001s"),
    (24 * H, "24h0m0s"),
    (100 * H, "100h0m0s"),
    (INT64_MAX, "2562047h47m16.854775807s"),
    (INT64_MIN, "-2562047h47m16.854775808s"),
    (-1, "-1ns"),
    (-999, "-999ns"),
    (-1 * US, f"-1{MU}s"),
    (-1500 * US, "-1.5ms"),
    (-1 * S, "-1s"),
    (-1500 * MS, "-1.5s"),
    (-1 * M, "-1m0s"),
    (-(62_500 * MS), "-1m2.5s"),
    (-2 * H, "-2h0m0s"),
    (-(INT64_MAX), "-2562047h47m16.854775807s"),
]


@pytest.mark.parametrize(("ns", "expected"), GO_CASES)
def test_format_duration_ns_matches_go(ns: int, expected: str) -> None:
    assert format_duration_ns(ns) == expected


def test_go_table_is_large_enough() -> None:
    assert len(GO_CASES) >= 40
    assert len({ns for ns, _ in GO_CASES}) == len(GO_CASES)


def test_micro_sign_is_u00b5() -> None:
    out = format_duration_ns(5 * US)
    assert out == "5\u00b5s"
    assert "\u03bc" not in out  # not GREEK SMALL LETTER MU
    assert out.encode("utf-8") == b"5\xc2\xb5s"


def test_format_duration_ns_rejects_non_integers() -> None:
    with pytest.raises(TypeError):
        format_duration_ns(1.5)  # type: ignore[arg-type]


# --- rounding helpers -------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0s"),
        (0.0, "0s"),
        (-0.0, "0s"),
        (0.0123, "12ms"),
        (1.2344, "1.234s"),
        (1.2345, "1.235s"),
        (62.5, "1m2.5s"),
        (7200, "2h0m0s"),
        (7200.0, "2h0m0s"),
        (0.0004, "0s"),
        (0.0005, "1ms"),
        (0.0015, "2ms"),
        (0.0025, "3ms"),
        (2.0005, "2.001s"),
        (0.9995, "1s"),
        (59.9999, "1m0s"),
        (3599.9996, "1h0m0s"),
        (1e-9, "0s"),
        (-0.0004, "0s"),
        (-0.0005, "-1ms"),
        (-0.0123, "-12ms"),
        (-1.2345, "-1.235s"),
        (-62.5, "-1m2.5s"),
        (-7200, "-2h0m0s"),
    ],
)
def test_format_duration(seconds: float, expected: str) -> None:
    assert format_duration(seconds) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0s"),
        (0.2, "0s"),
        (0.4999, "0s"),
        (0.5, "1s"),
        (1.5, "2s"),
        (2.5, "3s"),
        (3.4, "3s"),
        (59.4, "59s"),
        (59.5, "1m0s"),
        (62.6, "1m3s"),
        (3599.5, "1h0m0s"),
        (3661, "1h1m1s"),
        (90061.2, "25h1m1s"),
        (-0.2, "0s"),
        (-0.5, "-1s"),
        (-2.5, "-3s"),
        (-62.6, "-1m3s"),
    ],
)
def test_format_duration_seconds(seconds: float, expected: str) -> None:
    assert format_duration_seconds(seconds) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, 0),
        (0.0, 0),
        (-0.0, 0),
        (0.0004, 0),
        (0.0005, 1),
        (0.0123, 12),
        (1.2344, 1234),
        (1.2345, 1235),
        (62.5, 62500),
        (7200, 7_200_000),
        (-0.0004, 0),
        (-0.0005, -1),
        (-1.2345, -1235),
    ],
)
def test_duration_ms(seconds: float, expected: int) -> None:
    result = duration_ms(seconds)
    assert type(result) is int
    assert result == expected


@pytest.mark.parametrize("func", [format_duration, format_duration_seconds, duration_ms])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_rounding_helpers_reject_non_finite(func: object, bad: float) -> None:
    assert callable(func)
    with pytest.raises(ValueError):
        func(bad)


# --- property tests ---------------------------------------------------------

_UNIT_NS = {"ns": NS, "us": US, MU + "s": US, "\u03bcs": US, "ms": MS, "s": S, "m": M, "h": H}
_TOKEN = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|" + MU + "s|\u03bcs|ms|s|m|h)")

# Shape of the canonical Go output (stricter than what ParseDuration accepts).
_FRAC = r"(?:\.\d*[1-9])?"
_CANONICAL = re.compile(
    r"0s|-?(?:"
    rf"[1-9]\d{{0,2}}{_FRAC}(?:ns|{MU}s|ms)"
    rf"|(?:(?:[1-9]\d*h[0-5]?\d|[1-5]?\d)m)?[0-5]?\d{_FRAC}s"
    r")"
)


def parse_go_duration(text: str) -> Fraction:
    """A small exact re-implementation of Go's time.ParseDuration (result in ns)."""
    rest = text
    sign = 1
    if rest[:1] in ("-", "+"):
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    if rest == "0":
        return Fraction(0)
    if not rest:
        raise ValueError(f"invalid duration {text!r}")
    total = Fraction(0)
    pos = 0
    while pos < len(rest):
        match = _TOKEN.match(rest, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r}")
        total += Fraction(match[1]) * _UNIT_NS[match[2]]
        pos = match.end()
    return sign * total


def test_parser_sanity() -> None:
    assert parse_go_duration("1h1m1.001s") == H + M + 1001 * MS
    assert parse_go_duration(f"-1.5{MU}s") == -1500
    assert parse_go_duration("1.5us") == 1500
    assert parse_go_duration("0") == 0
    with pytest.raises(ValueError):
        parse_go_duration("1x")
    with pytest.raises(ValueError):
        parse_go_duration("")


@pytest.mark.parametrize(("ns", "text"), GO_CASES)
def test_go_table_roundtrips_through_parser(ns: int, text: str) -> None:
    assert parse_go_duration(text) == ns
    assert _CANONICAL.fullmatch(text)


int64s = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)


@given(int64s)
@example(0)
@example(INT64_MAX)
@example(INT64_MIN)
@example(S - 1)
@example(S)
@example(-S)
def test_roundtrip(ns: int) -> None:
    text = format_duration_ns(ns)
    assert parse_go_duration(text) == ns
    assert _CANONICAL.fullmatch(text), text


@given(
    st.one_of(
        st.integers(min_value=1, max_value=INT64_MAX),
        st.integers(min_value=1, max_value=10 * S),
    )
)
@example(1)
@example(INT64_MAX)
def test_sign_symmetry(n: int) -> None:
    assert format_duration_ns(-n) == "-" + format_duration_ns(n)


finite_seconds = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


@given(finite_seconds)
@example(0.0005)
@example(-0.0005)
@example(1.2345)
def test_format_duration_is_whole_milliseconds(seconds: float) -> None:
    text = format_duration(seconds)
    parsed = parse_go_duration(text)
    assert parsed.denominator == 1
    assert parsed % MS == 0
    assert parsed == duration_ms(seconds) * MS


@given(finite_seconds)
def test_duration_ms_is_nearest(seconds: float) -> None:
    exact_ms = Fraction(repr(seconds)) * 1000
    result = duration_ms(seconds)
    assert abs(result - exact_ms) <= Fraction(1, 2)
    if abs(result - exact_ms) == Fraction(1, 2):
        # ties go away from zero
        assert abs(result) > abs(exact_ms)


@given(finite_seconds)
def test_format_duration_seconds_is_whole_seconds(seconds: float) -> None:
    parsed = parse_go_duration(format_duration_seconds(seconds))
    assert parsed % S == 0
    assert abs(parsed - Fraction(repr(seconds)) * S) <= S / 2


@given(finite_seconds)
def test_helpers_are_odd(seconds: float) -> None:
    assert duration_ms(-seconds) == -duration_ms(seconds)
    positive = format_duration(abs(seconds))
    if positive != "0s":
        assert format_duration(-abs(seconds)) == "-" + positive
