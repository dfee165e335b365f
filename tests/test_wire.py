"""The wire helpers: RFC 3339 timestamps and generated jobIds."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from hypothesis import example, given
from hypothesis import strategies as st

from funtask._request import new_job_id
from funtask._wire import rfc3339


def _reference(wall: float) -> str:
    moment = datetime.fromtimestamp(wall, timezone.utc)
    text = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


@given(st.floats(min_value=0, max_value=2**33, allow_nan=False))
@example(1_700_000_000.0)
@example(1_700_000_000.9999995)
@example(1_700_000_000.0000005)
@example(1_700_000_000.0005)
@example(1_700_000_000.000999)
@example(1_699_999_999.9999999)
def test_rfc3339_matches_datetime(wall: float) -> None:
    assert rfc3339(wall) == _reference(wall)


def test_rfc3339_shapes() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"
    assert rfc3339(1_700_000_000.0001) == "2023-11-14T22:13:20.000Z"


def test_new_job_ids_are_uuid4_text() -> None:
    seen = set()
    for _ in range(2000):
        job_id = new_job_id()
        parsed = uuid.UUID(job_id)
        assert str(parsed) == job_id
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        seen.add(job_id)
    assert len(seen) == 2000
