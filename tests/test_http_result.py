"""GET /result/{jobId}: one percent-encoded segment, never a redirect."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from trio.testing import MockClock

from funtask.testing import open_test_client

from _support import build_server

# Ids that a slash-merging or trailing-slash router would redirect or split.
AWKWARD_IDS = ["/abs", "a//b", "//x", "a/", "/", "a/./b", "a/../b", "%2F", "x/"]


@pytest.mark.parametrize("job_id", AWKWARD_IDS)
async def test_awkward_job_id_round_trips(
    autojump_clock: MockClock, tmp_path: Path, job_id: str
) -> None:
    server = build_server(tmp_path)
    async with open_test_client(server) as client:
        ran = await client.post("/run/greet", json={"jobId": job_id})
        assert ran.status_code == 200
        assert ran.json()["jobId"] == job_id
        stored = await client.get("/result/" + quote(job_id, safe=""), follow_redirects=False)
    assert stored.status_code == 200, stored.text
    assert stored.json() == ran.json()


@pytest.mark.parametrize("job_id", AWKWARD_IDS)
async def test_awkward_missing_job_id_is_404_not_a_redirect(
    autojump_clock: MockClock, tmp_path: Path, job_id: str
) -> None:
    server = build_server(tmp_path)
    async with open_test_client(server) as client:
        response = await client.get("/result/" + quote(job_id, safe=""), follow_redirects=False)
    assert response.status_code == 404
    assert response.json() == {"error": "result not found"}


@pytest.mark.parametrize("path", ["/result//abs", "/result/a//b", "/result/a/", "/result//"])
async def test_raw_slashes_under_result_never_redirect(
    autojump_clock: MockClock, tmp_path: Path, path: str
) -> None:
    server = build_server(tmp_path)
    async with open_test_client(server) as client:
        response = await client.get(path, follow_redirects=False)
    assert response.status_code == 404
    assert "location" not in response.headers
