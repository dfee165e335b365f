"""JSON log lines (``--log-format json``) and the job log adapter behind them."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import httpx
import pytest
from trio.testing import MockClock

import funtask
from funtask.__main__ import main
from funtask._logjson import JSONFormatter
from funtask.testing import make_run, open_test_client

from _support import (
    TOKEN,
    CallbackReceiver,
    build_server,
    wait_idle,
    worker_env,
    worker_process,
)

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Lines(logging.Handler):
    """Collects every record formatted as a JSON line."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JSONFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def documents(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture
def lines() -> object:
    handler = Lines()
    logger = logging.getLogger("funtask")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)


def test_plain_record_has_exactly_the_four_members() -> None:
    record = logging.LogRecord("funtask.server", logging.INFO, __file__, 1, "a %s", ("b",), None)
    record.created = 1767261600.123456
    document = json.loads(JSONFormatter().format(record))
    assert document == {
        "time": "2026-01-01T10:00:00.123Z",
        "level": "INFO",
        "logger": "funtask.server",
        "message": "a b",
    }


def test_no_other_extras_and_exceptions_are_text() -> None:
    logger = logging.getLogger("funtask.test-json")
    handler = Lines()
    logger.addHandler(handler)
    try:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.error("failed", exc_info=True, extra={"password": "hunter2"})
    finally:
        logger.removeHandler(handler)
    (document,) = handler.documents()
    assert set(document) == {"time", "level", "logger", "message", "exception"}
    assert "RuntimeError: boom" in str(document["exception"])
    assert "hunter2" not in handler.lines[0]
    assert "\n" not in handler.lines[0]


def test_job_records_carry_task_and_job_id_without_the_text_prefix(lines: Lines) -> None:
    run = make_run(task="export", job_id="order 100%d")
    run.log.info("wrote %d rows", 3)
    run.log.warning("50% done")  # no args: the text is never %-formatted
    documents = lines.documents()
    assert [d["message"] for d in documents] == ["wrote 3 rows", "50% done"]
    for document in documents:
        assert document["task"] == "export"
        assert document["jobId"] == "order 100%d"
        assert TIME.match(str(document["time"]))


def test_text_format_keeps_the_prefix_and_a_percent_in_a_job_id_is_safe(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="funtask")
    run = make_run(task="export", job_id="100%d %s")
    run.log.info("wrote %d rows", 3)
    run.log.info("plain 50%")
    assert [r.getMessage() for r in caplog.records] == [
        "[export 100%d %s] wrote 3 rows",
        "[export 100%d %s] plain 50%",
    ]
    assert all(r.filename == Path(__file__).name for r in caplog.records)  # the real caller


async def test_server_job_records_are_json_with_job_id(
    autojump_clock: MockClock, tmp_path: Path, lines: Lines
) -> None:
    server = build_server(tmp_path, instance_id="worker-7")

    @server.task
    async def breaks(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        raise RuntimeError("kaput")

    async with open_test_client(server) as client:
        await client.post("/run/greet", json={"jobId": "g-1"})
        await client.post("/run/breaks", json={"jobId": "b-1"})
    documents = lines.documents()
    job_records = [d for d in documents if d.get("jobId") in ("g-1", "b-1")]
    assert {d["jobId"] for d in job_records} == {"g-1", "b-1"}
    assert all(not str(d["message"]).startswith("[") for d in job_records)
    panic = [d for d in job_records if d["level"] == "ERROR"]
    assert panic and "RuntimeError: kaput" in str(panic[0]["exception"])
    assert all(d["task"] in ("greet", "breaks") for d in job_records)
    assert all(d["instance"] == "worker-7" for d in job_records)


async def test_callback_and_dead_letter_records_carry_the_job(
    autojump_clock: MockClock, tmp_path: Path, lines: Lines
) -> None:
    receiver = CallbackReceiver(500)
    server = build_server(
        tmp_path,
        instance_id="worker-8",
        callback_allowlist=["https://hooks.example.com"],
        callback_retries=2,
    )
    async with open_test_client(server, callback_transport=receiver.transport()) as client:
        await client.post(
            "/run/greet",
            json={"jobId": "cb-1", "callbackUrl": "https://hooks.example.com/done?secret=x"},
        )
        await wait_idle(client, "greet")
    callback_records = [d for d in lines.documents() if d["logger"] == "funtask.callbacks"]
    assert len(callback_records) == 3  # two failed attempts, then the dead letter kept
    for document in callback_records:
        assert (document["task"], document["jobId"], document["instance"]) == (
            "greet",
            "cb-1",
            "worker-8",
        )
        assert "secret" not in str(document["message"])
        assert not str(document["message"]).startswith("[")


async def test_cli_log_format_json_writes_one_object_per_line(tmp_path: Path) -> None:
    args = [
        sys.executable, "-m", "funtask", "serve", "examples.counter:server",
        "--bind", "127.0.0.1:0", "--log-format", "json",
    ]  # fmt: skip
    env = worker_env(FUNTASK_AUTH_TOKEN=TOKEN, FUNTASK_DEAD_LETTER_DIR=str(tmp_path))
    pattern = r'"message": "server .* listening on (http://[^\s",]+)'
    async with worker_process(args, env=env, pattern=pattern) as worker:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=worker.url, headers=headers) as client:
            await client.post("/run/fail-demo", json={"jobId": "json-1"})
        await worker.exit_after(worker.sigterm(), 60)
    documents = [json.loads(line) for line in worker.lines if line.strip()]
    assert all(TIME.match(d["time"]) for d in documents), worker.log()
    assert all({"time", "level", "logger", "message"} <= set(d) for d in documents)
    job_records = [d for d in documents if d.get("jobId") == "json-1"]
    assert job_records, worker.log()
    assert all(d["task"] == "fail-demo" for d in job_records)
    assert any("demo_error" in d["message"] for d in job_records)


def test_cli_refuses_an_unknown_log_format_or_level(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["serve", "examples.counter:server", "--log-format", "xml"])
    assert caught.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        main(["--log-level", "loud", "serve", "examples.counter:server"])
    assert caught.value.code == 2
    assert "unknown level 'loud'" in capsys.readouterr().err
