"""The command line: ``funtask`` / ``python -m funtask``, ``dead-letters list|replay``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from funtask.__main__ import main
from funtask._deadletters import write_dead_letter
from funtask._replay import replay_dead_letters

from _support import CallbackReceiver

REPO = Path(__file__).resolve().parent.parent


def body(job_id: str, success: bool = True) -> dict[str, Any]:
    if success:
        return {"jobId": job_id, "success": True, "message": "ok", "duration": "1s"}
    return {
        "jobId": job_id,
        "success": False,
        "duration": "1s",
        "error": {"code": "boom", "message": "it broke"},
    }


def meta(url: str, attempts: int = 5) -> dict[str, Any]:
    return {
        "task": "t",
        "callbackUrl": url,
        "attempts": attempts,
        "lastError": "HTTP 500",
        "createdAt": "2026-01-01T00:00:00Z",
    }


async def fill(directory: Path) -> None:
    await write_dead_letter(directory, "a", body("a"), meta("https://hooks.example.com/a?s=1"))
    await write_dead_letter(directory, "b/c", body("b/c", False), meta("https://h.example/b"))
    await write_dead_letter(directory, "sync", body("sync"), meta("", attempts=0))


async def test_replay_removes_only_delivered_letters(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    await fill(tmp_path)
    receiver = CallbackReceiver(lambda request: 500 if "b" in str(request.url) else 204)
    report = await replay_dead_letters(
        str(tmp_path), to=None, timeout=5, transport=receiver.transport()
    )
    assert [p.name for p in report.delivered] == ["a.json"]
    assert [(p.name, why) for p, why in report.failed] == [("b%2Fc.json", "HTTP 500")]
    assert [p.name for p, _ in report.skipped] == ["sync.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b%2Fc.json", "sync.json"]
    urls = dict(zip(receiver.urls, receiver.payloads, strict=True))
    assert urls["https://hooks.example.com/a?s=1"] == body("a")  # deadLetter stripped
    assert urls["https://h.example/b"] == body("b/c", False)


async def test_replay_to_one_url_signs_when_asked(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    await fill(tmp_path)
    receiver = CallbackReceiver()
    report = await replay_dead_letters(
        str(tmp_path),
        to="https://replay.example.com/in",
        timeout=5,
        signing_secret="s3cret",
        transport=receiver.transport(),
    )
    assert len(report.delivered) == 3
    assert list(tmp_path.iterdir()) == []
    assert set(receiver.urls) == {"https://replay.example.com/in"}
    assert all(a.request.headers["webhook-signature"].startswith("v1,") for a in receiver.attempts)


def test_cli_list_and_replay(tmp_path: Path) -> None:
    trio.run(fill, tmp_path)
    listing = subprocess.run(
        [sys.executable, "-m", "funtask", "dead-letters", "list", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert listing.returncode == 0
    assert "3 dead letter(s)" in listing.stdout
    assert "jobId='b/c'" in listing.stdout
    assert "s=1" not in listing.stdout  # query strings are never shown
    receiver = CallbackReceiver()
    with receiver.listen() as url, pytest.raises(SystemExit) as exit_info:
        main(["dead-letters", "replay", str(tmp_path), "--to", url])
    assert exit_info.value.code == 0
    assert sorted(payload["jobId"] for payload in receiver.payloads) == ["a", "b/c", "sync"]
    assert list(tmp_path.iterdir()) == []


def test_cli_rejects_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["dead-letters", "list", str(tmp_path / "nope")])
    assert exit_info.value.code == 2


def test_cli_replay_needs_a_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["dead-letters", "replay", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--to" in capsys.readouterr().err


def help_text(args: list[str]) -> str:
    done = subprocess.run(
        [*args, "--help"], capture_output=True, text=True, cwd=REPO, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_module_help_names_python_m_funtask() -> None:
    assert help_text([sys.executable, "-m", "funtask"]).startswith("usage: python -m funtask [")
    serve = help_text([sys.executable, "-m", "funtask", "serve"])
    assert serve.startswith("usage: python -m funtask serve [")


def test_console_script_help_names_funtask() -> None:
    script = Path(sys.executable).with_name("funtask")
    if not script.exists():
        pytest.skip(f"the console script is not installed beside {sys.executable}")
    assert help_text([str(script)]).startswith("usage: funtask [")
    assert help_text([str(script), "dead-letters"]).startswith("usage: funtask dead-letters [")


def test_main_defaults_to_the_console_script_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: funtask [")
