"""Tests for funtask.Params and funtask.ParamReader."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import funtask
from funtask.testing import make_params, make_raw_params

UTC = timezone.utc
ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)


#: (accessor name, the type name used in error messages)
ACCESSORS = [
    ("str", "string"),
    ("int", "int"),
    ("float", "float"),
    ("bool", "bool"),
    ("time", "time"),
]


def tz(hours: int = 0, minutes: int = 0) -> timezone:
    return timezone(timedelta(hours=hours, minutes=minutes))


# -- basic accessors --------------------------------------------------------


class TestStr:
    def test_value(self) -> None:
        assert make_params({"name": "alice"}).str("name") == "alice"

    def test_empty_string_is_a_value(self) -> None:
        assert make_params({"name": ""}).str("name", "default") == ""

    def test_unicode(self) -> None:
        assert make_params({"name": "zoë 🚀"}).str("name") == "zoë 🚀"

    def test_missing(self) -> None:
        with pytest.raises(funtask.ParamError) as info:
            make_params({}).str("name")
        assert "name" in str(info.value)
        assert "string" in str(info.value)

    @pytest.mark.parametrize("value", [1, 1.5, True, None, ["a"], {"a": "b"}])
    def test_wrong_type(self, value: Any) -> None:
        with pytest.raises(funtask.ParamError) as info:
            make_params({"name": value}).str("name")
        assert "name" in str(info.value)
        assert "string" in str(info.value)

    def test_default_on_missing(self) -> None:
        assert make_params({}).str("name", "bob") == "bob"

    def test_default_never_for_wrong_type(self) -> None:
        with pytest.raises(funtask.ParamError):
            make_params({"name": 5}).str("name", "bob")

    def test_default_never_for_null(self) -> None:
        with pytest.raises(funtask.ParamError):
            make_params({"name": None}).str("name", "bob")


class TestInt:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (0, 0),
            (42, 42),
            (-7, -7),
            (500.0, 500),
            (-3.0, -3),
            (0.0, 0),
            (-0.0, 0),
            (1e15, 10**15),
            (2**70, 2**70),
            (float(2**60), 2**60),
        ],
    )
    def test_accepts(self, value: Any, expected: int) -> None:
        got = make_params({"n": value}).int("n")
        assert got == expected
        assert type(got) is int

    @pytest.mark.parametrize(
        "value",
        [3.7, 0.5, -0.1, math.inf, -math.inf, math.nan, True, False, "5", "5.0", None, [5], {}],
    )
    def test_refuses(self, value: Any) -> None:
        with pytest.raises(funtask.ParamError) as info:
            make_raw_params({"n": value}).int("n")
        assert "n" in str(info.value)
        assert "int" in str(info.value)

    def test_missing(self) -> None:
        with pytest.raises(funtask.ParamError, match="int"):
            make_params({}).int("limit")

    def test_default_on_missing(self) -> None:
        assert make_params({}).int("limit", 10) == 10

    @pytest.mark.parametrize("value", [3.7, True, "10", None])
    def test_default_never_for_wrong_type(self, value: Any) -> None:
        with pytest.raises(funtask.ParamError):
            make_params({"limit": value}).int("limit", 10)


class TestFloat:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [(1.5, 1.5), (0, 0.0), (3, 3.0), (-2, -2.0), (1e300, 1e300), (2**53, 2.0**53)],
    )
    def test_accepts(self, value: Any, expected: float) -> None:
        got = make_params({"x": value}).float("x")
        assert got == expected
        assert type(got) is float

    @pytest.mark.parametrize(
        "value",
        [True, False, "1.5", None, [1.0], 10**400, -(10**400), math.inf, -math.inf, math.nan],
    )
    def test_refuses(self, value: Any) -> None:
        with pytest.raises(funtask.ParamError) as info:
            make_raw_params({"x": value}).float("x")
        assert "x" in str(info.value)
        assert "float" in str(info.value)

    def test_missing_and_default(self) -> None:
        with pytest.raises(funtask.ParamError, match="float"):
            make_params({}).float("x")
        assert make_params({}).float("x", 2.5) == 2.5

    def test_default_never_for_wrong_type(self) -> None:
        with pytest.raises(funtask.ParamError):
            make_params({"x": True}).float("x", 2.5)


class TestBool:
    @pytest.mark.parametrize("value", [True, False])
    def test_accepts(self, value: bool) -> None:
        assert make_params({"b": value}).bool("b") is value

    @pytest.mark.parametrize("value", [0, 1, 0.0, 1.0, "true", "false", "", None, [], {}])
    def test_strict(self, value: Any) -> None:
        with pytest.raises(funtask.ParamError) as info:
            make_params({"b": value}).bool("b")
        assert "b" in str(info.value)
        assert "bool" in str(info.value)

    def test_missing_and_default(self) -> None:
        with pytest.raises(funtask.ParamError, match="bool"):
            make_params({}).bool("b")
        assert make_params({}).bool("b", True) is True
        assert make_params({}).bool("b", False) is False

    def test_default_never_for_wrong_type(self) -> None:
        with pytest.raises(funtask.ParamError):
            make_params({"b": 1}).bool("b", True)


class TestTime:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2024-03-01T12:30:45Z", datetime(2024, 3, 1, 12, 30, 45, tzinfo=UTC)),
            ("2024-03-01t12:30:45z", datetime(2024, 3, 1, 12, 30, 45, tzinfo=UTC)),
            ("2024-03-01T12:30:45z", datetime(2024, 3, 1, 12, 30, 45, tzinfo=UTC)),
            ("2024-03-01t12:30:45Z", datetime(2024, 3, 1, 12, 30, 45, tzinfo=UTC)),
            ("2024-03-01T12:30:45+00:00", datetime(2024, 3, 1, 12, 30, 45, tzinfo=UTC)),
            ("2024-03-01T12:30:45-00:00", datetime(2024, 3, 1, 12, 30, 45, tzinfo=UTC)),
            (
                "2024-03-01T12:30:45+05:30",
                datetime(2024, 3, 1, 12, 30, 45, tzinfo=tz(5, 30)),
            ),
            (
                "2024-03-01T12:30:45-08:00",
                datetime(2024, 3, 1, 12, 30, 45, tzinfo=tz(-8)),
            ),
            (
                "2024-03-01T12:30:45-03:30",
                datetime(2024, 3, 1, 12, 30, 45, tzinfo=tz(-3, -30)),
            ),
            (
                "2024-03-01T12:30:45+23:59",
                datetime(2024, 3, 1, 12, 30, 45, tzinfo=tz(23, 59)),
            ),
            ("2024-03-01T12:30:45.5Z", datetime(2024, 3, 1, 12, 30, 45, 500000, tzinfo=UTC)),
            ("2024-03-01T12:30:45.123Z", datetime(2024, 3, 1, 12, 30, 45, 123000, tzinfo=UTC)),
            (
                "2024-03-01T12:30:45.123456Z",
                datetime(2024, 3, 1, 12, 30, 45, 123456, tzinfo=UTC),
            ),
            (
                "2024-03-01T12:30:45.123456789+01:00",
                datetime(2024, 3, 1, 12, 30, 45, 123456, tzinfo=tz(1)),
            ),
            ("2024-02-29T00:00:00Z", datetime(2024, 2, 29, tzinfo=UTC)),
            ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
            ("9999-12-31T23:59:59Z", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ],
    )
    def test_accepts(self, text: str, expected: datetime) -> None:
        got = make_params({"since": text}).time("since")
        assert got == expected
        assert got.tzinfo is not None
        assert got.utcoffset() == expected.utcoffset()

    def test_offset_is_kept_not_converted(self) -> None:
        got = make_params({"t": "2024-03-01T12:00:00+02:00"}).time("t")
        assert got.hour == 12
        assert got.utcoffset() == timedelta(hours=2)
        assert got == datetime(2024, 3, 1, 10, 0, tzinfo=UTC)

    @pytest.mark.parametrize(
        "text",
        [
            "2024-03-01T12:30:45",  # no timezone
            "2024-03-01T12:30:45.5",  # no timezone
            "2024-03-01 12:30:45Z",  # space instead of T
            "2024-03-01",  # date only
            "12:30:45Z",  # time only
            "2024-02-30T00:00:00Z",  # Feb 30
            "2023-02-29T00:00:00Z",  # not a leap year
            "2024-13-01T00:00:00Z",  # month 13
            "2024-00-10T00:00:00Z",  # month 0
            "2024-04-31T00:00:00Z",  # April 31
            "2024-03-01T24:00:00Z",  # hour 24
            "2024-03-01T12:60:00Z",  # minute 60
            "2024-03-01T12:30:61Z",  # second 61
            "2024-03-01T12:30:45+24:00",  # offset hour out of range
            "2024-03-01T12:30:45+05:60",  # offset minute out of range
            "2024-03-01T12:30:45+0530",  # offset without colon
            "2024-03-01T12:30:45+05",  # offset without minutes
            "2024-03-01T12:30:45.Z",  # empty fraction
            "2024-03-01T12:30:45.1234567890Z",  # more than 9 fraction digits
            "24-03-01T12:30:45Z",  # two-digit year
            "2024-3-1T12:30:45Z",  # unpadded
            " 2024-03-01T12:30:45Z",  # leading space
            "2024-03-01T12:30:45Z ",  # trailing space
            "2024-03-01T12:30:45Z\n",  # trailing newline
            "２０２４-03-01T12:30:45Z",  # full-width digits  # noqa: RUF001
            "",
            "yesterday",
        ],
    )
    def test_refuses_bad_strings(self, text: str) -> None:
        with pytest.raises(funtask.ParamError) as info:
            make_params({"since": text}).time("since")
        assert "since" in str(info.value)
        assert "time" in str(info.value)

    @pytest.mark.parametrize("value", [0, 1709294400, 1.5, True, None, ["2024-03-01T00:00:00Z"]])
    def test_refuses_non_strings(self, value: Any) -> None:
        with pytest.raises(funtask.ParamError, match="time"):
            make_params({"since": value}).time("since")

    def test_refuses_datetime_objects(self) -> None:
        with pytest.raises(funtask.ParamError):
            make_raw_params({"since": datetime(2024, 1, 1, tzinfo=UTC)}).time("since")

    def test_missing_and_default(self) -> None:
        with pytest.raises(funtask.ParamError, match="time"):
            make_params({}).time("since")
        default = datetime(2000, 1, 1, tzinfo=UTC)
        assert make_params({}).time("since", default) is default

    def test_default_never_for_wrong_type(self) -> None:
        with pytest.raises(funtask.ParamError):
            make_params({"since": "nope"}).time("since", datetime(2000, 1, 1, tzinfo=UTC))


# -- ParamError -------------------------------------------------------------


class TestParamError:
    def test_is_value_error(self) -> None:
        assert issubclass(funtask.ParamError, ValueError)
        with pytest.raises(ValueError):
            make_params({}).int("limit")

    @pytest.mark.parametrize(
        ("method", "expected"),
        ACCESSORS,
    )
    def test_names_key_and_type_when_missing(self, method: str, expected: str) -> None:
        with pytest.raises(funtask.ParamError) as info:
            getattr(make_params({}), method)("the_key")
        message = str(info.value)
        assert "the_key" in message
        assert expected in message

    @pytest.mark.parametrize(
        ("method", "expected"),
        ACCESSORS,
    )
    def test_names_key_and_type_when_wrong(self, method: str, expected: str) -> None:
        with pytest.raises(funtask.ParamError) as info:
            getattr(make_params({"the_key": [1]}), method)("the_key")
        message = str(info.value)
        assert "the_key" in message
        assert expected in message

    def test_not_a_funtask_error_subclass_required(self) -> None:
        # It is catchable as the ValueError it is, whatever else it derives from.
        try:
            make_params({"a": "x"}).int("a")
        except ValueError as exc:
            assert isinstance(exc, funtask.ParamError)
        else:  # pragma: no cover
            pytest.fail("no error raised")


# -- Mapping behaviour ------------------------------------------------------


class TestMapping:
    def test_is_mapping(self) -> None:
        params = make_params({"a": 1, "b": "x"})
        assert isinstance(params, Mapping)
        assert len(params) == 2
        assert list(params) == ["a", "b"]
        assert "a" in params
        assert "zzz" not in params
        assert params["a"] == 1
        assert params.get("zzz") is None
        assert dict(params) == {"a": 1, "b": "x"}
        assert dict(params.items()) == {"a": 1, "b": "x"}
        assert list(params.keys()) == ["a", "b"]
        assert list(params.values()) == [1, "x"]

    def test_equality_with_dict(self) -> None:
        assert make_params({"a": 1}) == {"a": 1}

    def test_missing_item_raises_key_error(self) -> None:
        with pytest.raises(KeyError):
            make_params({})["nope"]

    def test_read_only(self) -> None:
        params = make_params({"a": 1})
        with pytest.raises(TypeError):
            params["a"] = 2  # type: ignore[index]
        with pytest.raises(TypeError):
            params["new"] = 2  # type: ignore[index]
        with pytest.raises(TypeError):
            del params["a"]  # type: ignore[attr-defined]
        assert not hasattr(params, "update")
        assert not hasattr(params, "pop")
        assert not hasattr(params, "clear")
        assert dict(params) == {"a": 1}

    def test_source_mapping_is_copied(self) -> None:
        source: dict[str, Any] = {"a": 1}
        params = make_raw_params(source)
        source["a"] = 2
        source["b"] = 3
        assert dict(params) == {"a": 1}

    def test_empty(self) -> None:
        params = make_params({})
        assert len(params) == 0
        assert list(params) == []
        assert len(make_params()) == 0

    def test_repr_shows_values(self) -> None:
        assert "limit" in repr(make_params({"limit": 5}))


class TestRaw:
    def test_raw_equals_data(self) -> None:
        data = {"a": 1, "nested": {"list": [1, 2, {"x": "y"}]}}
        assert make_params(data).raw() == data

    def test_raw_is_a_dict(self) -> None:
        assert type(make_params({"a": 1}).raw()) is dict

    def test_raw_is_a_deep_copy(self) -> None:
        params = make_params({"a": 1, "nested": {"list": [1, 2]}})
        raw = params.raw()
        raw["a"] = 99
        raw["new"] = True
        raw["nested"]["list"].append(3)
        raw["nested"]["extra"] = "x"
        assert params.raw() == {"a": 1, "nested": {"list": [1, 2]}}
        assert params["nested"] == {"list": [1, 2]}

    def test_each_raw_call_is_independent(self) -> None:
        params = make_params({"nested": {"k": [1]}})
        first = params.raw()
        second = params.raw()
        assert first is not second
        assert first["nested"] is not second["nested"]
        assert first["nested"]["k"] is not second["nested"]["k"]


# -- ParamReader ------------------------------------------------------------


class TestReader:
    def test_reader_type(self) -> None:
        assert isinstance(make_params({}).reader(), funtask.ParamReader)

    def test_all_good(self) -> None:
        reader = make_params(
            {"s": "x", "i": 5.0, "f": 2, "b": True, "t": "2024-01-01T00:00:00Z"}
        ).reader()
        assert reader.str("s") == "x"
        assert reader.int("i") == 5
        assert reader.float("f") == 2.0
        assert reader.bool("b") is True
        assert reader.time("t") == datetime(2024, 1, 1, tzinfo=UTC)
        assert reader.err() is None

    def test_no_reads_no_error(self) -> None:
        assert make_params({}).reader().err() is None

    def test_zero_values(self) -> None:
        reader = make_params({}).reader()
        assert reader.str("s") == ""
        assert reader.int("i") == 0
        assert type(reader.int("i2")) is int
        assert reader.float("f") == 0.0
        assert type(reader.float("f2")) is float
        assert reader.bool("b") is False
        assert reader.time("t") == ZERO_TIME
        assert reader.time("t2").tzinfo is not None
        assert reader.time("t3").utcoffset() == timedelta(0)

    def test_zero_values_on_wrong_types(self) -> None:
        reader = make_params(
            {"s": 1, "i": 3.7, "f": True, "b": "yes", "t": "2024-02-30T00:00:00Z"}
        ).reader()
        assert reader.str("s") == ""
        assert reader.int("i") == 0
        assert reader.float("f") == 0.0
        assert reader.bool("b") is False
        assert reader.time("t") == ZERO_TIME
        err = reader.err()
        assert err is not None
        assert str(err) == (
            "missing or invalid parameters: s (expected string), i (expected int), "
            "f (expected float), b (expected bool), t (expected time)"
        )

    def test_err_message_format(self) -> None:
        reader = make_params({"limit": "ten"}).reader()
        reader.time("since")
        reader.int("limit")
        err = reader.err()
        assert isinstance(err, funtask.ParamError)
        assert isinstance(err, ValueError)
        assert str(err) == (
            "missing or invalid parameters: since (expected time), limit (expected int)"
        )

    def test_err_lists_only_bad_keys_in_order(self) -> None:
        reader = make_params({"good": "x", "n": 1}).reader()
        reader.int("b1")
        reader.str("good")
        reader.int("n")
        reader.str("b2")
        reader.bool("b3")
        err = reader.err()
        assert err is not None
        assert str(err) == (
            "missing or invalid parameters: b1 (expected int), b2 (expected string), "
            "b3 (expected bool)"
        )

    def test_single_bad_key(self) -> None:
        reader = make_params({}).reader()
        reader.float("ratio")
        err = reader.err()
        assert err is not None
        assert str(err) == "missing or invalid parameters: ratio (expected float)"

    def test_reads_continue_after_error(self) -> None:
        reader = make_params({"ok": 7}).reader()
        reader.int("missing")
        assert reader.int("ok") == 7

    def test_err_can_be_raised(self) -> None:
        reader = make_params({}).reader()
        reader.str("name")
        err = reader.err()
        assert err is not None
        with pytest.raises(funtask.ParamError, match=r"name \(expected string\)"):
            raise err

    def test_reader_never_raises(self) -> None:
        reader = make_raw_params({"x": object(), "y": math.nan, "z": 10**400}).reader()
        for key in ("x", "y", "z", "missing"):
            reader.str(key)
            reader.int(key)
            reader.float(key)
            reader.bool(key)
            reader.time(key)
        err = reader.err()
        assert err is not None
        # every read fails except int("z"): 10**400 is a perfectly good int
        assert str(err).count("(expected") == 19
        assert "z (expected int)" not in str(err)
        assert "z (expected float)" in str(err)

    def test_independent_readers(self) -> None:
        params = make_params({})
        first = params.reader()
        first.int("a")
        assert params.reader().err() is None
        assert first.err() is not None


# -- property tests ---------------------------------------------------------


@given(st.integers())
def test_any_int_round_trips(value: int) -> None:
    assert make_params({"n": value}).int("n") == value


@given(st.integers(min_value=-(2**53), max_value=2**53))
def test_any_exactly_representable_int_round_trips_as_float(value: int) -> None:
    as_float = float(value)
    assert int(as_float) == value
    got = make_params({"n": as_float}).int("n")
    assert got == value
    assert type(got) is int


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_whole_floats_round_trip_through_int(value: float) -> None:
    assume(value.is_integer())
    assert make_params({"n": value}).int("n") == int(value)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_non_integer_float_is_refused_by_int(value: float) -> None:
    assume(not value.is_integer())
    with pytest.raises(funtask.ParamError):
        make_params({"n": value}).int("n")


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_float_round_trips_through_float(value: float) -> None:
    assert make_params({"x": value}).float("x") == value


@given(st.integers(min_value=-(2**1023), max_value=2**1023))
def test_ints_in_float_range_accepted_by_float(value: int) -> None:
    assert make_params({"x": value}).float("x") == float(value)


@given(st.booleans())
def test_any_bool_refused_by_int_and_float(value: bool) -> None:
    params = make_params({"v": value})
    with pytest.raises(funtask.ParamError):
        params.int("v")
    with pytest.raises(funtask.ParamError):
        params.float("v")
    with pytest.raises(funtask.ParamError):
        params.int("v", 0)
    reader = params.reader()
    assert reader.int("v") == 0
    assert reader.float("v") == 0.0
    assert reader.err() is not None


OFFSETS = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.just(UTC) | OFFSETS,
    )
)
def test_any_aware_datetime_round_trips_through_time(value: datetime) -> None:
    text = value.isoformat()
    got = make_params({"t": text}).time("t")
    assert got == value
    assert got.utcoffset() == value.utcoffset()
    assert got.replace(tzinfo=None) == value.replace(tzinfo=None)


@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)))
def test_naive_datetimes_are_refused(value: datetime) -> None:
    with pytest.raises(funtask.ParamError):
        make_params({"t": value.isoformat()}).time("t")


@given(st.text())
def test_time_never_raises_anything_but_param_error(text: str) -> None:
    try:
        got = make_params({"t": text}).time("t")
    except funtask.ParamError:
        return
    assert got.tzinfo is not None


@given(st.text(), st.text())
def test_str_round_trips(key: str, value: str) -> None:
    assert make_params({key: value}).str(key) == value


if sys.version_info >= (3, 11):

    @given(
        st.datetimes(
            min_value=datetime(1, 1, 2),
            max_value=datetime(9999, 12, 30),
            timezones=st.just(UTC) | OFFSETS,
        )
    )
    def test_parse_agrees_with_fromisoformat(value: datetime) -> None:
        text = value.isoformat().replace("+00:00", "Z")
        assert make_params({"t": text}).time("t") == datetime.fromisoformat(text)
