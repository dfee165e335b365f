"""Task parameters: :class:`Params` and the error-collecting :class:`ParamReader`."""

from __future__ import annotations

import builtins
import copy
import math
import re
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Final, TypeVar, cast

from ._errors import ParamError

__all__ = ["MISSING", "ParamReader", "Params"]


class _Missing:
    """Sentinel type for "no default given"."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> builtins.str:
        return "MISSING"


MISSING: Final = _Missing()

_T = TypeVar("_T")
_D = TypeVar("_D")

_ZERO_TIME: Final = datetime(1, 1, 1, tzinfo=timezone.utc)

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


def _as_str(value: object) -> builtins.str | None:
    return value if isinstance(value, builtins.str) else None


def _as_int(value: object) -> builtins.int | None:
    if isinstance(value, builtins.bool):
        return None
    if isinstance(value, builtins.int):
        return value
    if isinstance(value, builtins.float) and math.isfinite(value) and value.is_integer():
        return builtins.int(value)
    return None


def _as_float(value: object) -> builtins.float | None:
    if isinstance(value, builtins.bool) or not isinstance(value, (builtins.int, builtins.float)):
        return None
    try:
        result = builtins.float(value)
    except OverflowError:  # an int beyond the float range
        return None
    return result if math.isfinite(result) else None


def _as_bool(value: object) -> builtins.bool | None:
    return value if isinstance(value, builtins.bool) else None


def parse_rfc3339(text: builtins.str) -> datetime | None:
    """Parse an RFC 3339 timestamp with a timezone into an aware datetime."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (builtins.int(g) for g in match.groups()[:6])
    fraction, zulu, sign, off_h, off_m = match.groups()[6:]
    micro = builtins.int((fraction or "").ljust(6, "0")[:6])
    if zulu:
        tz = timezone.utc
    else:
        hours, minutes = builtins.int(off_h), builtins.int(off_m)
        if hours > 23 or minutes > 59:
            return None
        offset = timedelta(hours=hours, minutes=minutes)
        tz = timezone(-offset if sign == "-" else offset)
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError:
        return None


def _as_time(value: object) -> datetime | None:
    return parse_rfc3339(value) if isinstance(value, builtins.str) else None


_CONVERTERS: Final = {
    "string": _as_str,
    "int": _as_int,
    "float": _as_float,
    "bool": _as_bool,
    "time": _as_time,
}


class Params(Mapping[builtins.str, Any]):
    """The parameters a job was started with: a read-only mapping with typed accessors.

    Each accessor returns the value or raises :class:`funtask.ParamError`
    naming the key and the expected type. A ``default`` is returned only
    when the key is missing, never for a value of the wrong type.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[builtins.str, Any] | None = None) -> None:
        self._data: dict[builtins.str, Any] = dict(data or {})

    def __getitem__(self, key: builtins.str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[builtins.str]:
        return iter(self._data)

    def __len__(self) -> builtins.int:
        return len(self._data)

    def __repr__(self) -> builtins.str:
        return f"Params({self._data!r})"

    def _get(self, key: builtins.str, expected: builtins.str, default: object) -> Any:
        if key not in self._data:
            if default is not MISSING:
                return default
            raise ParamError(f"missing parameter {key!r} (expected {expected})", [(key, expected)])
        value = _CONVERTERS[expected](self._data[key])
        if value is None:
            got = _type_name(self._data[key])
            raise ParamError(
                f"invalid parameter {key!r}: expected {expected}, got {got}", [(key, expected)]
            )
        return value

    def str(self, key: builtins.str, default: builtins.str | _Missing = MISSING) -> builtins.str:
        """Return the string parameter ``key``."""
        return cast(builtins.str, self._get(key, "string", default))

    def int(self, key: builtins.str, default: builtins.int | _Missing = MISSING) -> builtins.int:
        """Return the integer parameter ``key``; whole-number floats such as ``500.0`` count."""
        return cast(builtins.int, self._get(key, "int", default))

    def float(
        self, key: builtins.str, default: builtins.float | _Missing = MISSING
    ) -> builtins.float:
        """Return the number parameter ``key`` as a float (ints accepted, booleans refused)."""
        return cast(builtins.float, self._get(key, "float", default))

    def bool(
        self, key: builtins.str, default: builtins.bool | _Missing = MISSING
    ) -> builtins.bool:
        """Return the boolean parameter ``key``."""
        return cast(builtins.bool, self._get(key, "bool", default))

    def time(self, key: builtins.str, default: datetime | _Missing = MISSING) -> datetime:
        """Return the RFC 3339 timestamp parameter ``key`` as an aware datetime."""
        return cast(datetime, self._get(key, "time", default))

    def raw(self) -> dict[builtins.str, Any]:
        """Return a deep copy of the underlying parameter dict."""
        return copy.deepcopy(self._data)

    def reader(self) -> ParamReader:
        """Return a :class:`ParamReader` over these parameters."""
        return ParamReader(self)


def _type_name(value: object) -> builtins.str:
    if value is None:
        return "null"
    return type(value).__name__


class ParamReader:
    """Reads parameters, returning zero values on error and collecting every problem.

    Call :meth:`err` after the reads to get one :class:`funtask.ParamError`
    listing all bad keys, or ``None``.
    """

    __slots__ = ("_params", "_problems")

    def __init__(self, params: Params) -> None:
        self._params = params
        self._problems: list[tuple[builtins.str, builtins.str]] = []

    def _read(self, key: builtins.str, expected: builtins.str, zero: _T) -> _T:
        try:
            return cast(_T, self._params._get(key, expected, MISSING))
        except ParamError:
            self._problems.append((key, expected))
            return zero

    def str(self, key: builtins.str) -> builtins.str:
        """Return the string parameter ``key``, or ``""`` and record the problem."""
        return self._read(key, "string", "")

    def int(self, key: builtins.str) -> builtins.int:
        """Return the integer parameter ``key``, or ``0`` and record the problem."""
        return self._read(key, "int", 0)

    def float(self, key: builtins.str) -> builtins.float:
        """Return the number parameter ``key``, or ``0.0`` and record the problem."""
        return self._read(key, "float", 0.0)

    def bool(self, key: builtins.str) -> builtins.bool:
        """Return the boolean parameter ``key``, or ``False`` and record the problem."""
        return self._read(key, "bool", False)

    def time(self, key: builtins.str) -> datetime:
        """Return the timestamp parameter ``key``, or ``0001-01-01T00:00:00Z`` and record it."""
        return self._read(key, "time", _ZERO_TIME)

    def err(self) -> ParamError | None:
        """Return one :class:`funtask.ParamError` listing every bad key, or ``None``."""
        if not self._problems:
            return None
        listed = ", ".join(f"{key} (expected {expected})" for key, expected in self._problems)
        return ParamError(f"missing or invalid parameters: {listed}", self._problems)
