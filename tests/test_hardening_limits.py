"""Connection limits that hold (issue 9, defect 4): slowloris, caps, open files, log floods."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from callkit.signaling import ServerConfig, SignalingServer
from callkit.signaling.limits import ConnectionCounter, RepeatFilter, ensure_open_files

from .conftest import SDK_APP_ID, SECRET
from .test_server import login


async def started(config: ServerConfig) -> SignalingServer:
    server = SignalingServer(SDK_APP_ID, SECRET, config)
    await server.start("127.0.0.1", 0)
    return server


async def open_idle(port: int, n: int, source: str = "127.0.0.1", send: bytes = b"") -> list:
    """``n`` TCP connections that send ``send`` (e.g. half a request) and then nothing."""
    conns = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        if send:
            writer.write(send)
        conns.append((reader, writer))
    return conns


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """What the server sent before closing the connection (raises on timeout)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(4096), timeout):
            data += chunk
    return data


async def test_slowloris_sockets_are_closed_and_real_clients_get_in() -> None:
    server = await started(
        ServerConfig(handshake_timeout=0.5, max_connections=60, max_connections_per_ip=60)
    )
    try:
        port = server.port or 0
        half = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"  # never finished
        loris = await open_idle(port, 25, send=half) + await open_idle(port, 25)
        assert server._guard is not None and server._guard.counter.total == 50
        start = time.monotonic()
        await asyncio.gather(*(closed_by_server(r, 5) for r, _ in loris))
        assert time.monotonic() - start < 3
        assert server._guard.counter.total == 0
        alice = await login(server.url or "", "alice")  # a real client gets in and stays
        await asyncio.sleep(0.8)
        assert (await alice.request("ping"))["type"] == "ok"
        await alice.close()
        for _, w in loris:
            w.close()
    finally:
        await server.stop()


async def test_connection_caps_count_before_login_and_per_ip() -> None:
    server = await started(
        ServerConfig(max_connections=15, max_connections_per_ip=10, handshake_timeout=30)
    )
    try:
        port = server.port or 0
        idle = await open_idle(port, 10)  # TCP only: no upgrade, no login
        refused = await open_idle(port, 1)  # (keep the writer: dropping it closes the socket)
        refusal = await closed_by_server(refused[0][0], 5)
        assert refusal.startswith(b"HTTP/1.1 503") and b"too many connections" in refusal
        more = await open_idle(port, 5, source="127.0.0.2")  # another address: admitted
        assert server._guard is not None and server._guard.counter.total == 15
        refused += await open_idle(port, 1, source="127.0.0.3")  # the total cap
        assert (await closed_by_server(refused[1][0], 5)).startswith(b"HTTP/1.1 503")
        assert server.stats.refused_connections == 2
        for _, w in idle + more:
            w.close()
        for _ in range(50):
            if server._guard.counter.total == 0:
                break
            await asyncio.sleep(0.05)
        assert server._guard.counter.total == 0
        alice = await login(server.url or "", "alice")
        await alice.close()
    finally:
        await server.stop()


def test_counter_and_repeat_filter() -> None:
    c = ConnectionCounter(3, 2)
    assert c.admit("a") is None and c.admit("a") is None
    assert "from a" in (c.admit("a") or "")
    assert c.admit("b") is None
    assert "more than 3" in (c.admit("c") or "")
    c.release("a")
    assert c.admit("c") is None and c.per_ip == {"a": 1, "b": 1, "c": 1}
    now = [0.0]
    f = RepeatFilter(10.0, clock=lambda: now[0])
    rec = logging.LogRecord("x", logging.ERROR, "", 0, "boom", None, None)
    assert [f.filter(rec) for _ in range(100)].count(True) == 1
    now[0] = 11.0
    rec2 = logging.LogRecord("x", logging.ERROR, "", 0, "boom", None, None)
    assert f.filter(rec2) and "99 similar messages suppressed" in rec2.getMessage()


SERVE_LOW_FD = textwrap.dedent(
    """
    import asyncio, resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    from callkit.signaling import ServerConfig, SignalingServer

    async def main():
        server = SignalingServer(1, "k", ServerConfig(max_connections=1000, handshake_timeout=1.5))
        await server.start("127.0.0.1", 0)
        print(server.port, flush=True)
        await asyncio.sleep(float(sys.argv[1]))
        await server.stop()

    asyncio.run(main())
    """
)


async def test_fd_exhaustion_logs_once_per_interval_and_recovers() -> None:
    """An embedded server whose open-file limit is too low: 200 idle sockets exhaust it;
    stderr gets a few lines, not one traceback per accept; the deadline frees the sockets."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVE_LOW_FD, "6",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    port = int(await asyncio.wait_for(proc.stdout.readline(), 20))
    socks = []
    for _ in range(200):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port)), 2
            )
        socks.append(s)
    await asyncio.sleep(3.0)  # idle sockets hit the 1.5 s deadline; accepting resumes
    for s in socks:
        s.close()
    await asyncio.sleep(0.5)
    _, writer = await asyncio.open_connection("127.0.0.1", port)  # accepted again
    writer.close()
    stderr = await asyncio.wait_for(proc.stderr.read(), 30)
    await proc.wait()
    assert len(stderr) < 20_000, (len(stderr), stderr[-2000:])
    assert stderr.count(b"out of system resource") <= 3, stderr[-2000:]


def test_serve_raises_its_open_file_limit_or_says_what_to_raise() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 10_064:
        pytest.fail(f"this test needs a hard open-file limit >= 10064, have {hard}")

    def low(limit_hard: int):  # type: ignore[no-untyped-def]
        return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, limit_hard))

    env = {**os.environ, "CALLKIT_SECRET_KEY": "k"}
    # a hard limit too low for the default 10,000 connections: a clear error at start-up
    done = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "callkit"), "serve", "--port", "0"],
        preexec_fn=low(512), capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "need 10064 open files" in done.stderr and "ulimit -Hn" in done.stderr
    # a hard limit that allows it: the soft limit is raised
    code = (
        "import resource; from callkit.signaling.limits import ensure_open_files as e; "
        "print(e(10000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], preexec_fn=low(hard), capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert out.stdout.split() == ["None", "10064"], out
    assert ensure_open_files(10) is None
