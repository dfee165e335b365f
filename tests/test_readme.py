"""The README's examples work as written: copied into a new project, its tests pass."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx

README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLES = README.parent / "examples"


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)


def test_readme_testing_section_passes_in_a_new_project(tmp_path: Path) -> None:
    (worker,) = _blocks(_section("Writing tasks"), "python")
    testing = _section("Testing your tasks")
    (config,) = _blocks(testing, "toml")
    (test_file,) = _blocks(testing, "python")
    assert len(config.strip().splitlines()) == 2
    (tmp_path / "worker.py").write_text(worker, encoding="utf-8")
    (tmp_path / "test_worker.py").write_text(test_file, encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text(config, encoding="utf-8")
    # A new project: none of funtask's variables set, nothing of this repo on the path.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUNTASK_", "PYTEST_"))}
    env.pop("PYTHONPATH", None)
    finished = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert re.search(r"\b3 passed\b", finished.stdout), finished.stdout
    # The temporary dead-letter dirs are gone, and nothing was written beside the project.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == [
        "pyproject.toml",
        "test_worker.py",
        "worker.py",
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_example_receiver_prints_callbacks_and_answers_204() -> None:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-u", str(EXAMPLES / "receiver.py"), f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert "receiving callbacks on" in process.stdout.readline()
        response = httpx.post(
            f"http://127.0.0.1:{port}/done",
            json={"jobId": "j1", "success": True},
            headers={"webhook-id": "msg_1"},
            timeout=10,
        )
        assert response.status_code == 204
    finally:
        process.kill()
        output, _ = process.communicate(timeout=10)
    assert "POST /done {'webhook-id': 'msg_1'}\n" in output
    assert '{"jobId":"j1","success":true}\n' in output
