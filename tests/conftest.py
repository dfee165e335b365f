"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from _redis import RedisServer, redis_process


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisServer]:
    """One ``redis-server`` for the whole session (skipped when it is not installed)."""
    with redis_process() as server:
        yield server


@pytest.fixture
def redis_server(redis_session: RedisServer) -> Iterator[RedisServer]:
    """The session's ``redis-server``, running and empty at the start of the test."""
    if redis_session.process is None:  # a previous test stopped it
        redis_session.start()
    redis_session.flush()
    yield redis_session
    if redis_session.process is None:
        redis_session.start()
