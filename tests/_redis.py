"""A real ``redis-server`` for the tests: started on a free port, never persisted.

Tests never reach a Redis they did not start. Outside CI a missing
``redis-server`` skips the Redis tests with the reason; in CI (``CI`` set) it
is an error, since ``.ci/run`` installs Debian's package.

Use the ``redis_server`` fixture (one server per test session; every test
starts on an empty database), or :func:`redis_cluster` for the cluster path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

REDIS_SERVER: Final = shutil.which("redis-server")
REDIS_CLI: Final = shutil.which("redis-cli")
START_TIMEOUT: Final = 10.0  # seconds


def require_redis() -> str:
    """The path of ``redis-server``; skip the test (fail it in CI) when there is none."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        reason = "redis-server and redis-cli are not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return REDIS_SERVER


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _ping(port: int) -> bool:
    """True when a Redis on ``port`` answers PING (a bare RESP exchange, no client library)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on a fixed port, which tests can stop and restart."""

    def __init__(self, port: int, directory: Path, *extra: str) -> None:
        self.port = port
        self.directory = directory
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of this server."""
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server (again, on the same port) and wait until it answers PING."""
        assert self.process is None, "already running"
        command = [
            require_redis(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--maxmemory-policy",
            "noeviction",
            *self.extra,
        ]
        log = open(self.directory / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        with log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"redis-server on port {self.port} did not start; "
                    f"see {self.directory}/redis-{self.port}.log"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (SIGKILL: nothing is persisted anyway) and wait for it."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)

    def restart(self) -> None:
        """Stop and start again on the same port (the data is gone: no persistence)."""
        self.stop()
        self.start()

    def cli(self, *args: str) -> str:
        """Run ``redis-cli`` against this server and return its output."""
        assert REDIS_CLI is not None
        done = subprocess.run(
            [REDIS_CLI, "-p", str(self.port), *args],
            capture_output=True,
            check=True,
            timeout=10,
            text=True,
        )
        return done.stdout.strip()

    def flush(self) -> None:
        """Empty every database."""
        self.cli("FLUSHALL")


@contextlib.contextmanager
def redis_process(*extra: str) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` on a free port, in a temporary directory."""
    require_redis()
    with tempfile.TemporaryDirectory(prefix="funtask-redis-") as directory:
        server = RedisServer(free_port(), Path(directory), *extra)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def redis_cluster(nodes: int = 3) -> Iterator[list[RedisServer]]:
    """A Redis Cluster of ``nodes`` masters built with ``redis-cli --cluster create``."""
    require_redis()
    assert REDIS_CLI is not None
    with tempfile.TemporaryDirectory(prefix="funtask-cluster-") as directory:
        servers = []
        try:
            for index in range(nodes):
                node_dir = Path(directory, str(index))
                node_dir.mkdir()
                server = RedisServer(
                    free_cluster_port(),
                    node_dir,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout",
                    "2000",
                )
                server.start()
                servers.append(server)
            subprocess.run(
                [
                    REDIS_CLI,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{s.port}" for s in servers),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                check=True,
                timeout=30,
            )
            deadline = time.monotonic() + START_TIMEOUT
            while "cluster_state:ok" not in servers[0].cli("CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the test cluster did not reach cluster_state:ok")
                time.sleep(0.05)
            yield servers
        finally:
            for server in servers:
                server.stop()
