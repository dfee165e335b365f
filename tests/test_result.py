"""Tests for funtask.Result, ok/fail/fail_from_error, TaskError and the error protocols."""

from __future__ import annotations

import dataclasses
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

import funtask

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup


class Coded(Exception):
    """A plain exception that carries only an error code."""

    def __init__(self, code: str, message: str = "coded") -> None:
        super().__init__(message)
        self.error_code = code


class Messaged(Exception):
    """A plain exception that carries only a user message."""

    def __init__(self, user_message: str, message: str = "technical") -> None:
        super().__init__(message)
        self.user_message = user_message


def raise_chain(inner: BaseException, outer: BaseException, *, how: str) -> BaseException:
    """Raise ``outer`` while handling ``inner`` and return what was caught."""
    try:
        try:
            raise inner
        except BaseException as exc:
            if how == "cause":
                raise outer from exc
            if how == "none":
                raise outer from None
            raise outer  # noqa: B904 - implicit __context__ is the point
    except BaseException as caught:
        return caught
    raise AssertionError("unreachable")  # pragma: no cover


# -- Result -----------------------------------------------------------------


class TestResult:
    def test_fields_and_defaults(self) -> None:
        result = funtask.Result(True)
        assert result.success is True
        assert result.message == ""
        assert result.error_code == ""
        assert dict(result.data) == {}
        assert result.last_step == ""
        assert result.cause is None

    def test_field_names_match_spec(self) -> None:
        names = [f.name for f in dataclasses.fields(funtask.Result)]
        assert names[:5] == ["success", "message", "error_code", "data", "last_step"]

    def test_positional_construction(self) -> None:
        result = funtask.Result(False, "boom", "bad_input", {"k": 1}, "step 3")
        assert (result.success, result.message, result.error_code) == (False, "boom", "bad_input")
        assert dict(result.data) == {"k": 1}
        assert result.last_step == "step 3"

    def test_frozen(self) -> None:
        result = funtask.ok("x")
        with pytest.raises(dataclasses.FrozenInstanceError):
            result.message = "y"  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            result.success = False  # type: ignore[misc]
        assert result.message == "x"

    def test_not_hashable(self) -> None:
        with pytest.raises(TypeError):
            hash(funtask.ok("x"))
        with pytest.raises(TypeError):
            hash(funtask.fail("code", "x"))
        with pytest.raises(TypeError):
            _ = {funtask.ok()}

    def test_data_is_copied_in(self) -> None:
        source = {"a": 1}
        result = funtask.Result(True, data=source)
        source["a"] = 2
        source["b"] = 3
        assert dict(result.data) == {"a": 1}

    def test_data_is_read_only(self) -> None:
        result = funtask.Result(True, data={"a": 1})
        with pytest.raises(TypeError):
            result.data["a"] = 2  # type: ignore[index]
        with pytest.raises(TypeError):
            result.data["new"] = 2  # type: ignore[index]
        with pytest.raises(TypeError):
            del result.data["a"]  # type: ignore[attr-defined]
        assert dict(result.data) == {"a": 1}

    def test_default_data_is_read_only(self) -> None:
        result = funtask.ok()
        with pytest.raises(TypeError):
            result.data["a"] = 1  # type: ignore[index]
        assert dict(funtask.ok().data) == {}

    def test_cause_excluded_from_repr(self) -> None:
        exc = RuntimeError("secret-internal-detail")
        result = funtask.fail("code", "public").with_cause(exc)
        assert "secret-internal-detail" not in repr(result)
        assert "cause" not in repr(result)
        assert "public" in repr(result)
        assert "code" in repr(result)

    def test_cause_excluded_from_equality(self) -> None:
        a = funtask.fail("code", "m").with_cause(RuntimeError("a"))
        b = funtask.fail("code", "m").with_cause(ValueError("b"))
        c = funtask.fail("code", "m")
        assert a == b == c

    def test_equality_covers_the_other_fields(self) -> None:
        base = funtask.Result(False, "m", "c", {"k": 1}, "s")
        assert base == funtask.Result(False, "m", "c", {"k": 1}, "s")
        assert base != funtask.Result(True, "m", "c", {"k": 1}, "s")
        assert base != funtask.Result(False, "other", "c", {"k": 1}, "s")
        assert base != funtask.Result(False, "m", "other", {"k": 1}, "s")
        assert base != funtask.Result(False, "m", "c", {"k": 2}, "s")
        assert base != funtask.Result(False, "m", "c", {"k": 1}, "other")

    def test_with_data_returns_new_result(self) -> None:
        original = funtask.ok("done")
        updated = original.with_data("count", 3)
        assert updated is not original
        assert dict(updated.data) == {"count": 3}
        assert dict(original.data) == {}
        assert updated.message == "done"
        assert updated.success is True

    def test_with_data_chains_and_overrides(self) -> None:
        first = funtask.ok().with_data("a", 1)
        second = first.with_data("b", 2).with_data("a", 10)
        assert dict(first.data) == {"a": 1}
        assert dict(second.data) == {"a": 10, "b": 2}

    def test_with_data_result_is_read_only(self) -> None:
        result = funtask.ok().with_data("a", 1)
        with pytest.raises(TypeError):
            result.data["a"] = 2  # type: ignore[index]

    def test_with_data_keeps_cause(self) -> None:
        exc = RuntimeError("x")
        result = funtask.fail("c").with_cause(exc).with_data("k", "v")
        assert result.cause is exc

    def test_with_data_refuses_non_str_key(self) -> None:
        with pytest.raises(TypeError):
            funtask.ok().with_data(1, "v")  # type: ignore[arg-type]

    def test_with_cause_returns_new_result(self) -> None:
        original = funtask.fail("code", "m")
        exc = RuntimeError("x")
        updated = original.with_cause(exc)
        assert updated is not original
        assert updated.cause is exc
        assert original.cause is None
        assert updated.error_code == "code"
        assert updated.message == "m"

    def test_with_cause_none_clears(self) -> None:
        result = funtask.fail("code").with_cause(RuntimeError("x")).with_cause(None)
        assert result.cause is None

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"success": 1},
            {"success": True, "message": 1},
            {"success": True, "error_code": None},
            {"success": True, "last_step": b"x"},
            {"success": True, "data": [("a", 1)]},
        ],
    )
    def test_construction_type_checks(self, kwargs: dict[str, object]) -> None:
        with pytest.raises(TypeError):
            funtask.Result(**kwargs)  # type: ignore[arg-type]


# -- ok / fail --------------------------------------------------------------


class TestOkFail:
    def test_ok(self) -> None:
        result = funtask.ok("all good")
        assert result == funtask.Result(True, "all good")
        assert result.error_code == ""

    def test_ok_default_message(self) -> None:
        assert funtask.ok() == funtask.Result(True, "")

    def test_fail(self) -> None:
        result = funtask.fail("not_found", "order 7 not found")
        assert result.success is False
        assert result.error_code == "not_found"
        assert result.message == "order 7 not found"
        assert result.cause is None

    def test_fail_default_message(self) -> None:
        assert funtask.fail("c").message == ""

    @pytest.mark.parametrize("code", ["", None, 5])
    def test_fail_refuses_empty_or_non_str_code(self, code: object) -> None:
        with pytest.raises(ValueError):
            funtask.fail(code, "m")  # type: ignore[arg-type]


# -- TaskError and the protocols --------------------------------------------


class TestTaskError:
    def test_carries_code_and_message(self) -> None:
        exc = funtask.TaskError("quota_exceeded", "limit 10 reached for tenant 42")
        assert exc.error_code == "quota_exceeded"
        assert str(exc) == "limit 10 reached for tenant 42"
        assert exc.user_message == "limit 10 reached for tenant 42"
        assert isinstance(exc, Exception)

    def test_user_message_separate(self) -> None:
        exc = funtask.TaskError("db", "connection refused on 10.0.0.3", user_message="try later")
        assert str(exc) == "connection refused on 10.0.0.3"
        assert exc.user_message == "try later"

    def test_empty_user_message_is_kept(self) -> None:
        exc = funtask.TaskError("c", "technical", user_message="")
        assert exc.user_message == ""

    @pytest.mark.parametrize("code", ["", None])
    def test_refuses_empty_code(self, code: object) -> None:
        with pytest.raises(ValueError):
            funtask.TaskError(code, "m")  # type: ignore[arg-type]

    def test_not_a_funtask_error(self) -> None:
        # TaskError is raised by user code; it is not one of the library's own errors.
        assert not issubclass(funtask.TaskError, funtask.FuntaskError)

    def test_is_error_coder_and_user_messager(self) -> None:
        exc = funtask.TaskError("c", "m")
        assert isinstance(exc, funtask.ErrorCoder)
        assert isinstance(exc, funtask.UserMessager)


class TestProtocols:
    def test_error_coder_runtime_checkable(self) -> None:
        assert isinstance(Coded("c"), funtask.ErrorCoder)
        assert not isinstance(ValueError("x"), funtask.ErrorCoder)
        assert not isinstance(Coded("c"), funtask.UserMessager)

    def test_user_messager_runtime_checkable(self) -> None:
        assert isinstance(Messaged("hello"), funtask.UserMessager)
        assert not isinstance(ValueError("x"), funtask.UserMessager)
        assert not isinstance(Messaged("hello"), funtask.ErrorCoder)

    def test_any_object_with_the_attribute_matches(self) -> None:
        class Thing:
            error_code = "x"
            user_message = "y"

        assert isinstance(Thing(), funtask.ErrorCoder)
        assert isinstance(Thing(), funtask.UserMessager)


# -- fail_from_error --------------------------------------------------------


class TestFailFromError:
    def test_plain_exception_uses_fallback_and_str(self) -> None:
        exc = ValueError("bad thing")
        result = funtask.fail_from_error(exc, "internal")
        assert result.success is False
        assert result.error_code == "internal"
        assert result.message == "bad thing"
        assert result.cause is exc

    def test_code_from_exception(self) -> None:
        exc = Coded("rate_limited", "slow down")
        result = funtask.fail_from_error(exc, "internal")
        assert result.error_code == "rate_limited"
        assert result.message == "slow down"
        assert result.cause is exc

    def test_task_error(self) -> None:
        exc = funtask.TaskError("db_down", "conn refused 10.0.0.3", user_message="retry later")
        result = funtask.fail_from_error(exc, "internal")
        assert result.error_code == "db_down"
        assert result.message == "retry later"
        assert result.cause is exc

    def test_user_message_preferred_over_str(self) -> None:
        exc = Messaged("please retry", "stack-y technical detail")
        result = funtask.fail_from_error(exc, "internal")
        assert result.message == "please retry"
        assert result.error_code == "internal"

    def test_code_from_cause(self) -> None:
        exc = raise_chain(Coded("upstream"), RuntimeError("wrapper"), how="cause")
        assert exc.__cause__ is not None
        result = funtask.fail_from_error(exc, "internal")
        assert result.error_code == "upstream"
        assert result.message == "wrapper"
        assert result.cause is exc

    def test_code_from_context(self) -> None:
        exc = raise_chain(Coded("upstream"), RuntimeError("during handling"), how="context")
        assert exc.__cause__ is None
        assert exc.__context__ is not None
        result = funtask.fail_from_error(exc, "internal")
        assert result.error_code == "upstream"
        assert result.message == "during handling"

    def test_not_from_suppressed_context(self) -> None:
        exc = raise_chain(Coded("upstream"), RuntimeError("clean"), how="none")
        assert exc.__suppress_context__ is True
        assert exc.__context__ is not None  # still recorded, but suppressed
        result = funtask.fail_from_error(exc, "internal")
        assert result.error_code == "internal"
        assert result.message == "clean"

    def test_user_message_from_cause(self) -> None:
        exc = raise_chain(Messaged("friendly"), RuntimeError("technical"), how="cause")
        result = funtask.fail_from_error(exc, "internal")
        assert result.message == "friendly"
        assert result.error_code == "internal"

    def test_user_message_not_from_suppressed_context(self) -> None:
        exc = raise_chain(Messaged("friendly"), RuntimeError("technical"), how="none")
        assert funtask.fail_from_error(exc, "internal").message == "technical"

    def test_outermost_code_wins(self) -> None:
        exc = raise_chain(Coded("inner"), Coded("outer"), how="cause")
        assert funtask.fail_from_error(exc, "internal").error_code == "outer"

    def test_code_and_message_from_different_exceptions(self) -> None:
        exc = raise_chain(Coded("inner_code"), Messaged("outer message"), how="cause")
        result = funtask.fail_from_error(exc, "internal")
        assert result.error_code == "inner_code"
        assert result.message == "outer message"

    def test_deep_chain(self) -> None:
        exc: BaseException = Coded("deepest")
        for i in range(50):
            exc = raise_chain(exc, RuntimeError(f"level {i}"), how="cause" if i % 2 else "context")
        result = funtask.fail_from_error(exc, "internal")
        assert result.error_code == "deepest"
        assert result.message == "level 49"

    def test_code_from_exception_group_leaf(self) -> None:
        group = ExceptionGroup("several", [ValueError("a"), Coded("leaf_code", "b")])
        result = funtask.fail_from_error(group, "internal")
        assert result.error_code == "leaf_code"
        assert result.cause is group

    def test_code_from_nested_exception_group_leaf(self) -> None:
        group = ExceptionGroup(
            "outer",
            [
                ValueError("a"),
                ExceptionGroup("middle", [KeyError("b"), ExceptionGroup("inner", [Coded("x")])]),
            ],
        )
        assert funtask.fail_from_error(group, "internal").error_code == "x"

    def test_code_from_cause_of_group_leaf(self) -> None:
        leaf = raise_chain(Coded("root"), RuntimeError("leaf"), how="cause")
        group = BaseExceptionGroup("g", [ValueError("a"), leaf])
        assert funtask.fail_from_error(group, "internal").error_code == "root"

    def test_base_exception_group(self) -> None:
        group = BaseExceptionGroup("g", [KeyboardInterrupt(), Coded("in_base_group")])
        assert funtask.fail_from_error(group, "internal").error_code == "in_base_group"

    def test_group_leaf_user_message(self) -> None:
        group = ExceptionGroup("g", [Messaged("nice words")])
        assert funtask.fail_from_error(group, "internal").message == "nice words"

    def test_group_without_codes_uses_fallback(self) -> None:
        group = ExceptionGroup("g", [ValueError("a"), ExceptionGroup("h", [KeyError("b")])])
        result = funtask.fail_from_error(group, "fallback")
        assert result.error_code == "fallback"
        assert result.message == str(group)

    def test_context_cycle_terminates(self) -> None:
        a = RuntimeError("a")
        b = RuntimeError("b")
        a.__context__ = b
        b.__context__ = a
        result = funtask.fail_from_error(a, "fallback")
        assert result.error_code == "fallback"
        assert result.message == "a"

    def test_self_cycle_terminates(self) -> None:
        a = RuntimeError("a")
        a.__context__ = a
        assert funtask.fail_from_error(a, "fallback").error_code == "fallback"

    def test_cause_cycle_terminates(self) -> None:
        a = RuntimeError("a")
        b = RuntimeError("b")
        a.__cause__ = b
        b.__cause__ = a
        assert funtask.fail_from_error(a, "fallback").error_code == "fallback"

    def test_code_found_inside_cycle(self) -> None:
        a = RuntimeError("a")
        b = RuntimeError("b")
        c = Coded("in_cycle")
        a.__context__ = b
        b.__context__ = c
        c.__context__ = a
        assert funtask.fail_from_error(a, "fallback").error_code == "in_cycle"

    def test_fallback_code(self) -> None:
        assert funtask.fail_from_error(OSError("disk"), "io_error").error_code == "io_error"

    def test_exception_kept_as_cause_but_not_in_repr(self) -> None:
        exc = funtask.TaskError("c", "secret token abc123", user_message="public")
        result = funtask.fail_from_error(exc, "internal")
        assert result.cause is exc
        assert "abc123" not in repr(result)

    def test_empty_code_on_exception_falls_back(self) -> None:
        exc = Coded("")
        assert funtask.fail_from_error(exc, "fallback").error_code == "fallback"

    def test_non_str_code_ignored(self) -> None:
        exc = RuntimeError("x")
        exc.error_code = 42  # type: ignore[attr-defined]
        assert funtask.fail_from_error(exc, "fallback").error_code == "fallback"

    def test_cancelled_style_base_exception(self) -> None:
        exc = KeyboardInterrupt()
        result = funtask.fail_from_error(exc, "interrupted")
        assert result.error_code == "interrupted"
        assert result.cause is exc


# -- property tests ---------------------------------------------------------

LINKS = st.sampled_from(["cause", "context", "group"])


@given(
    links=st.lists(LINKS, min_size=0, max_size=12),
    coded_at=st.integers(min_value=0, max_value=12),
)
def test_fail_from_error_finds_the_code_anywhere_in_a_chain(
    links: list[str], coded_at: int
) -> None:
    """Build a chain of plain exceptions linked by cause/context/groups with one coded one."""
    length = len(links) + 1
    coded_at %= length
    # chain[0] is the outermost exception; chain[-1] the innermost.
    chain: list[BaseException] = [
        Coded("the_code", f"e{i}") if i == coded_at else RuntimeError(f"e{i}")
        for i in range(length)
    ]
    outer: BaseException = chain[-1]
    for index in range(length - 2, -1, -1):
        link = links[index]
        current = chain[index]
        if link == "cause":
            current.__cause__ = outer
        elif link == "context":
            current.__context__ = outer
        else:
            current = BaseExceptionGroup(f"g{index}", [ValueError("noise"), outer])
            if index == coded_at:
                # keep the coded exception in the chain: make the group its cause
                chain[index].__cause__ = current
                current = chain[index]
        outer = current
    result = funtask.fail_from_error(outer, "fallback")
    assert result.error_code == "the_code"
    assert result.cause is outer


@given(
    length=st.integers(min_value=1, max_value=10),
    links=st.lists(st.sampled_from(["cause", "context"]), min_size=10, max_size=10),
)
def test_fail_from_error_without_codes_uses_fallback(length: int, links: list[str]) -> None:
    chain = [RuntimeError(f"e{i}") for i in range(length)]
    for index in range(length - 1):
        if links[index] == "cause":
            chain[index].__cause__ = chain[index + 1]
        else:
            chain[index].__context__ = chain[index + 1]
    # close the loop to make sure cycles never hang
    chain[-1].__context__ = chain[0]
    result = funtask.fail_from_error(chain[0], "fallback")
    assert result.error_code == "fallback"
    assert result.message == "e0"


@given(st.dictionaries(st.text(), st.integers() | st.text() | st.none()))
def test_data_round_trips_and_is_independent(data: dict[str, object]) -> None:
    source = dict(data)
    result = funtask.Result(True, data=source)
    source["__extra__"] = "mutated"
    assert dict(result.data) == data
    assert result == funtask.Result(True, data=data)
