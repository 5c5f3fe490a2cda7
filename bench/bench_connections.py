"""How many connections the service holds: N logged-in WebSockets plus M idle TCP sockets
(pre-login, under the handshake deadline), then a probe's ping latency and the server's RSS.

    .venv/bin/python bench/bench_connections.py --logins 2000 --idle 2000

Every held WebSocket is read by its own task, as a real client's would be: aiohttp answers the
server's pings only inside ``receive()``, and the server drops a client that leaves its pings
unanswered for 5 s (``ServerConfig.liveness_timeout``). Without the readers, the sockets logged
in more than 5 s before the end of the set-up were dropped, so at 2,000 logins and more (over
5 s of set-up) the probe, the first socket, was dead: the run never printed its figures. It
now also reports how many held sockets the server closed during the run (0 expected).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time

import aiohttp

from callkit.signaling.usersig import gen_user_sig

SERVER = """
import asyncio, sys
from callkit.signaling import ServerConfig, SignalingServer
from callkit.signaling.limits import ensure_open_files
async def main():
    n = int(sys.argv[1])
    cfg = ServerConfig(max_connections=n, max_connections_per_ip=n, handshake_timeout=60)
    problem = ensure_open_files(cfg.max_connections)
    assert problem is None, problem
    server = SignalingServer(1400000001, "bench-secret", cfg)
    await server.start("127.0.0.1", 0)
    print(server.port, flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


async def drain(ws: aiohttp.ClientWebSocketResponse, replies: asyncio.Queue[dict] | None) -> None:
    """Read ``ws`` until it closes (aiohttp pongs the server's pings in ``receive``); text
    frames go to ``replies`` when given."""
    while True:
        msg = await ws.receive()
        if msg.type is aiohttp.WSMsgType.TEXT:
            if replies is not None:
                replies.put_nowait(json.loads(msg.data))
        elif msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.ERROR,
        ):
            return


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--logins", type=int, default=2000)
    ap.add_argument("--idle", type=int, default=2000)
    args = ap.parse_args()
    need = args.logins + args.idle + 200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, need)), hard))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVER, str(need), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    port = int(await proc.stdout.readline())
    url = f"ws://127.0.0.1:{port}/ws"
    rss0 = rss_mb(proc.pid)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    sockets = []
    readers: list[asyncio.Task[None]] = []
    replies: asyncio.Queue[dict] = asyncio.Queue()
    t0 = time.perf_counter()
    for i in range(args.logins):
        ws = await http.ws_connect(url, autoping=True)
        user = f"u{i}"
        sig = gen_user_sig(1400000001, "bench-secret", user, 3600)
        await ws.send_str(
            json.dumps({"v": 1, "type": "login", "id": 1, "sdkAppId": 1400000001,
                        "userId": user, "userSig": sig})
        )  # fmt: skip
        reply = json.loads((await ws.receive(timeout=10)).data)
        assert reply["type"] == "ok", reply
        sockets.append(ws)
        readers.append(asyncio.create_task(drain(ws, replies if i == 0 else None)))
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(args.idle)]
    setup = time.perf_counter() - t0
    probe = sockets[0]
    lat = []
    for n in range(100):
        t = time.perf_counter()
        await probe.send_str(json.dumps({"v": 1, "type": "ping", "id": 100 + n}))
        while True:
            frame = await asyncio.wait_for(replies.get(), 10)
            if frame.get("id") == 100 + n:
                break
        lat.append((time.perf_counter() - t) * 1000)
    dropped = sum(1 for r in readers if r.done())
    lat.sort()
    print(
        f"held {args.logins} logged-in WebSockets + {args.idle} idle TCP connections "
        f"(set up in {setup:.1f} s); probe ping p50 {statistics.median(lat):.1f} ms, "
        f"p99 {lat[98]:.1f} ms; server RSS {rss0:.0f} -> {rss_mb(proc.pid):.0f} MB; "
        f"{dropped} held WebSocket(s) closed by the server during the run"
    )
    for _, w in idle:
        w.close()
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    await http.close()
    proc.kill()
    await proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
