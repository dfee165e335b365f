"""An uncaught ParamError is the caller's mistake: code invalid_params, no traceback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from trio.testing import MockClock

import funtask
from funtask.testing import open_test_client

from _support import build_server


def _server(tmp_path: Path) -> funtask.Server:
    server = build_server(tmp_path)

    @server.task
    async def typed(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("reading params")
        return funtask.ok(str(params.int("limit")))

    @server.task
    async def collected(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        reader = params.reader()
        reader.time("since")
        reader.int("limit")
        if (error := reader.err()) is not None:
            raise error
        return funtask.ok()

    @server.task
    def threaded(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        return funtask.ok(params.str("name"))

    return server


@pytest.mark.parametrize(
    ("task", "params", "message", "step"),
    [
        ("typed", {}, "missing parameter 'limit' (expected int)", "reading params"),
        ("typed", {"limit": 3.7}, None, "reading params"),
        ("collected", {"limit": "x"}, None, None),
        ("threaded", {"name": 5}, None, None),
    ],
)
async def test_uncaught_param_error_fails_with_invalid_params(
    autojump_clock: MockClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    task: str,
    params: dict[str, object],
    message: str | None,
    step: str | None,
) -> None:
    server = _server(tmp_path)
    caplog.set_level(logging.DEBUG, logger="funtask")
    async with open_test_client(server) as client:
        response = await client.post(f"/run/{task}", json={"params": params})
        health = (await client.get("/health")).json()
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is False
    error = body["error"]
    assert error["code"] == "invalid_params"
    assert error["message"]  # names the key and what was expected
    if message is not None:
        assert error["message"] == message
    assert error.get("step") == step
    assert health["tasks"][task]["results"][0]["error"] == error
    job_records = [r for r in caplog.records if r.name.startswith("funtask")]
    assert not [r for r in job_records if r.levelno >= logging.WARNING]
    assert not [r for r in job_records if r.levelno >= logging.INFO and r.exc_info]
    assert any("invalid parameters" in r.getMessage() for r in job_records)


def test_param_error_carries_its_code_for_fail_from_error() -> None:
    error = funtask.ParamError("missing parameter: limit", [("limit", "int")])
    assert isinstance(error, funtask.ErrorCoder)
    result = funtask.fail_from_error(error, "fallback")
    assert (result.error_code, result.message) == ("invalid_params", "missing parameter: limit")
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = error
    assert funtask.fail_from_error(wrapped, "fallback").error_code == "invalid_params"
