"""A cluster of real ``callkit serve`` processes for tests and benchmarks.

``Cluster(nodes=3, redis=True)`` starts a throw-away ``redis-server`` (tests/redis_server.py:
127.0.0.1, free port, temp dir, no persistence) and N ``callkit serve --redis URL --node-id
nodeI`` processes, each on its own free port (kept across restarts), and waits until each
answers ``/health``. ``redis=False`` gives N independent in-memory nodes. ``await
cluster.kill(i)`` sends SIGKILL (no goodbye to anyone), ``await cluster.restart(i)`` starts
that node again on the same port; everything stops at the end of ``async with``, also when the
test failed. A node's stdout and stderr go to a log file in the cluster's temp dir, whose tail
is quoted when the node fails to start.

    async with Cluster(nodes=3) as cluster:
        engine = CallEngine(cluster.urls, ...)      # every node's URL, this user's first
        await cluster.kill(0)
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from callkit.testing import SDK_APP_ID, SECRET_KEY

from .redis_server import RedisServer

__all__ = ["Cluster", "ServeNode"]

#: seconds a node may take to answer /health after it was started
START_TIMEOUT = 20.0
#: runs callkit's CLI in this interpreter (the venv), whatever PATH says
CLI = "import sys; from callkit.cli import main; sys.exit(main())"


def free_port() -> int:
    """A TCP port nothing listens on right now on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeNode:
    """One ``callkit serve`` process on 127.0.0.1:``port`` (the same port on every start)."""

    def __init__(
        self, node_id: str, log_dir: Path, *, redis_url: str | None, extra: list[str]
    ) -> None:
        self.node_id = node_id
        self.port = free_port()
        self.redis_url = redis_url
        self.extra = list(extra)
        self.log_path = log_dir / f"{node_id}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT/ws``."""
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def args(self) -> list[str]:
        args = [
            "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--sdk-app-id", str(SDK_APP_ID), "--secret-key", SECRET_KEY, "--db", "none",
        ]  # fmt: skip
        if self.redis_url is not None:
            args += ["--redis", self.redis_url, "--node-id", self.node_id]
        return args + self.extra

    async def start(self) -> None:
        """Start the process and wait until ``/health`` answers (raises with the log tail)."""
        if self.running:
            return
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts}: {' '.join(self.args())}\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", CLI, *self.args(), stdout=log, stderr=log
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    async with http.get(f"http://127.0.0.1:{self.port}/health") as resp:
                        if resp.status == 200:
                            return
                if self.proc.returncode is not None or loop.time() > deadline:
                    await self.kill()
                    raise RuntimeError(
                        f"callkit serve ({self.node_id}, port {self.port}) did not come up "
                        f"within {START_TIMEOUT:.0f} s; its log ends with:\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """SIGKILL: the process dies without closing a socket or telling anyone."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def stop(self) -> None:
        """SIGINT (a clean shutdown), SIGKILL after 5 s."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self.proc.wait(), 5.0)
        except asyncio.TimeoutError:
            await self.kill()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Cluster:
    """Redis (optional) and N ``callkit serve`` nodes; see the module docstring."""

    def __init__(self, nodes: int = 3, *, redis: bool = True, extra: list[str] | None = None):
        if nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {nodes}")
        self.dir = Path(tempfile.mkdtemp(prefix="callkit-cluster-"))
        self.redis: RedisServer | None = RedisServer() if redis else None
        redis_url = self.redis.url if self.redis is not None else None
        self.nodes = [
            ServeNode(f"node{i}", self.dir, redis_url=redis_url, extra=extra or [])
            for i in range(nodes)
        ]

    @property
    def urls(self) -> list[str]:
        """Every node's URL, in node order."""
        return [n.url for n in self.nodes]

    def urls_from(self, first: int) -> list[str]:
        """Every node's URL, starting at node ``first`` (so a user logs in there)."""
        urls = self.urls
        return urls[first:] + urls[:first]

    async def start(self) -> Cluster:
        try:
            if self.redis is not None:
                await asyncio.to_thread(self.redis.start)
            await asyncio.gather(*(n.start() for n in self.nodes))
        except BaseException:
            await self.stop()
            raise
        return self

    async def kill(self, index: int) -> None:
        """SIGKILL node ``index``."""
        await self.nodes[index].kill()

    async def restart(self, index: int) -> None:
        """Start node ``index`` again (same port, same node id)."""
        await self.nodes[index].start()

    async def stop(self) -> None:
        """Stop every node, then Redis; remove the temp dir. Never raises."""
        await asyncio.gather(*(n.stop() for n in self.nodes), return_exceptions=True)
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.redis.stop)
        shutil.rmtree(self.dir, ignore_errors=True)

    async def __aenter__(self) -> Cluster:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        await self.stop()
        return None
