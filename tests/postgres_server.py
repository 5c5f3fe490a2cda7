"""A real PostgreSQL server for tests and benchmarks: ``initdb`` into a temp dir, listening
on 127.0.0.1 only, stopped (and removed) at the end. Run as the ``postgres`` user when the
tests run as root (PostgreSQL refuses root)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

__all__ = ["PostgresCluster", "db_url", "pg_cluster", "pg_url"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """One throw-away cluster; ``url(db)`` is a DSN for database ``db``."""

    def __init__(self, *, fsync: bool = False) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise RuntimeError("PostgreSQL is not installed: run `make deb` (Debian: postgresql)")
        self.bin = Path(found[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="callkit-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.fsync = fsync
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            os.chmod(self.dir, 0o755)
            shutil.chown(self.dir, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self._as, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def start(self) -> None:
        """initdb and start, waiting until it accepts connections."""
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "callkit", "-E",
            "UTF8", "--no-sync",
        )  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir}"
            f" -c fsync={'on' if self.fsync else 'off'} -c max_connections=50"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-t", "30",
            "-l", str(self.dir / "log"), "start",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server and delete its files."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        """DSN of database ``db`` on this cluster."""
        return f"postgresql://callkit@127.0.0.1:{self.port}/{db}"

    async def create_db(self) -> str:
        """A fresh, empty database; returns its DSN."""
        import asyncpg

        name = "t_" + uuid.uuid4().hex[:12]
        con = await asyncpg.connect(self.url())
        try:
            await con.execute(f"CREATE DATABASE {name}")
        finally:
            await con.close()
        return self.url(name)

    async def drop_db(self, url: str) -> None:
        """Drop a database made by :meth:`create_db` (closing its connections)."""
        import asyncpg

        con = await asyncpg.connect(self.url())
        try:
            await con.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
        finally:
            await con.close()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One PostgreSQL cluster for the whole test session."""
    cluster = PostgresCluster()
    try:
        cluster.start()
    except subprocess.CalledProcessError as exc:
        cluster.stop()
        raise RuntimeError(f"could not start PostgreSQL: {exc.stderr.decode()[-500:]}") from exc
    yield cluster
    cluster.stop()


@pytest.fixture
async def pg_url(pg_cluster: PostgresCluster) -> AsyncIterator[str]:
    """A fresh database on the session's cluster."""
    url = await pg_cluster.create_db()
    yield url
    await pg_cluster.drop_db(url)


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh records database of each backend."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'records.db'}"
        return
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    url = await cluster.create_db()
    yield url
    await cluster.drop_db(url)
