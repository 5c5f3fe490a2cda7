"""A real Redis server for tests, cluster harnesses and benchmarks: Debian's ``redis-server``
on 127.0.0.1, a free port, a temp dir, no persistence (``--save '' --appendonly no``),
stopped (and its dir removed) at the end.

``RedisServer().start()`` / ``.kill()`` (SIGKILL) / ``.start()`` again on the same port /
``.stop()``; ``.url`` is ``redis://127.0.0.1:PORT/0``. Fixtures: ``redis_proc`` (one per
session), ``redis_url`` (that server, flushed before each test), ``own_redis`` (a private
server a test may kill and restart).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "own_redis", "redis_proc", "redis_url"]

REDIS_SERVER = "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One throw-away ``redis-server`` process (see the module docstring)."""

    def __init__(self, port: int | None = None) -> None:
        if shutil.which(REDIS_SERVER) is None:
            raise RuntimeError(
                "redis-server is not installed: run `make deb` (Debian: redis-server)"
            )
        self.port = port or _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="callkit-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start (again, on the same port) and wait until it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port),
                "--dir", str(self.dir), "--save", "", "--appendonly", "no",
                "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self._answers():
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server (its data is gone: no persistence) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """Stop the server and delete its dir."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def flush(self) -> None:
        """FLUSHALL (between tests sharing one server)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"FLUSHALL\r\n")
            if not s.recv(16).startswith(b"+OK"):
                raise RuntimeError("FLUSHALL failed")


@pytest.fixture(scope="session")
def redis_proc() -> Iterator[RedisServer]:
    """One redis-server for the whole test session."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_proc: RedisServer) -> str:
    """The session's Redis, empty."""
    redis_proc.flush()
    return redis_proc.url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A private redis-server for one test (it may kill and restart it)."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
