"""Call setups per second with no database, SQLite and PostgreSQL (one run), and webhook
delivery latency (event -> receiver's 2xx) p50 / p99.

A real SignalingServer on 127.0.0.1 and raw WebSocket clients (no media): ``--pairs`` caller
/ callee pairs each run call -> onCallReceived -> accept -> onCallBegin -> hangup ->
onCallEnd in a loop for ``--calls`` calls. PostgreSQL is a throw-away cluster started by the
script (``initdb`` into a temp dir, fsync on). Run:

    python bench/bench_records.py [--pairs 8] [--calls 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from callkit.signaling import ServerConfig, SignalingServer  # noqa: E402
from callkit.signaling.usersig import gen_user_sig  # noqa: E402
from tests.postgres_server import PostgresCluster  # noqa: E402
from tests.webhook_receiver import WebhookReceiver  # noqa: E402

SDK_APP_ID = 1400000001
SECRET = "bench-secret"
HOOK_SECRET = "bench-hook-secret"


class Client:
    """A logged-in raw WebSocket client."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = 0
        self.inbox: list[dict[str, Any]] = []

    async def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.ids += 1
        rid = self.ids
        await self.ws.send_str(json.dumps({"v": 1, "type": kind, "id": rid, **fields}))
        while True:
            frame = json.loads((await self.ws.receive(timeout=10)).data)
            if frame.get("id") == rid and frame["type"] in ("ok", "error"):
                assert frame["type"] == "ok", frame
                return frame
            self.inbox.append(frame)

    async def event(self, name: str) -> dict[str, Any]:
        for i, frame in enumerate(self.inbox):
            if frame.get("event") == name:
                return self.inbox.pop(i)
        while True:
            frame = json.loads((await self.ws.receive(timeout=10)).data)
            if frame.get("event") == name:
                return frame
            self.inbox.append(frame)


async def login(http: aiohttp.ClientSession, url: str, user: str) -> Client:
    client = Client(await http.ws_connect(url))
    sig = gen_user_sig(SDK_APP_ID, SECRET, user)
    await client.request("login", sdkAppId=SDK_APP_ID, userId=user, userSig=sig)
    return client


async def pair_loop(a: Client, b: Client, callee: str, calls: int, setups: list[float]) -> None:
    for _ in range(calls):
        t0 = time.perf_counter()
        reply = await a.request("call", callees=[callee], mediaType=1)
        call_id = reply["data"]["call"]["callId"]
        await b.event("onCallReceived")
        await b.request("accept", callId=call_id)
        await a.event("onCallBegin")
        setups.append(time.perf_counter() - t0)
        await a.request("hangup", callId=call_id)
        await a.event("onCallEnd")
        await b.event("onCallEnd")


async def run(db: str | None, pairs: int, calls: int, hook: WebhookReceiver | None) -> dict:
    server = SignalingServer(
        SDK_APP_ID,
        SECRET,
        ServerConfig(rate_per_s=10_000, rate_burst=10_000),
        db=db,
        webhooks=[hook.url] if hook else None,
        webhook_secret=HOOK_SECRET if hook else None,
    )
    url = await server.start("127.0.0.1", 0)
    setups: list[float] = []
    async with aiohttp.ClientSession() as http:
        clients = [
            (await login(http, url, f"a{i}"), await login(http, url, f"b{i}")) for i in range(pairs)
        ]
        t0 = time.perf_counter()
        await asyncio.gather(
            *(pair_loop(a, b, f"b{i}", calls, setups) for i, (a, b) in enumerate(clients))
        )
        elapsed = time.perf_counter() - t0
        await server.records.flush(60)
        flushed = time.perf_counter() - t0
        if hook is not None:
            expected = pairs * calls * 5  # start, join, 2 leaves, end
            await hook.wait_for(lambda r: len(r.delivered()) >= expected, timeout=120)
        for a, b in clients:
            await a.ws.close()
            await b.ws.close()
    lag = server.loop_lag.worst
    await server.stop()
    return {
        "setups_per_s": pairs * calls / elapsed,
        "setup_p50_ms": statistics.median(setups) * 1000,
        "setup_p99_ms": statistics.quantiles(setups, n=100)[98] * 1000,
        "written_after_s": flushed - elapsed,
        "worst_loop_lag_ms": lag * 1000,
    }


def latencies(hook: WebhookReceiver) -> tuple[float, float]:
    first = {}
    for a in hook.attempts:
        if a.status == 200 and a.event_id not in first:
            first[a.event_id] = a.at * 1000 - a.body["CallbackTs"]
    values = sorted(first.values())
    return statistics.median(values), statistics.quantiles(values, n=100)[98]


async def main(pairs: int, calls: int) -> None:
    cluster = PostgresCluster(fsync=True)
    cluster.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pg = await cluster.create_db()
            pg_hooks = await cluster.create_db()
            modes = [
                ("no database", None),
                ("SQLite", f"sqlite://{tmp}/bench.db"),
                ("PostgreSQL", pg),
            ]
            print(f"{pairs} pairs x {calls} calls each (call -> accept -> begin -> hangup)")
            for name, db in modes:
                r = await run(db, pairs, calls, None)
                print(
                    f"  {name:12s} {r['setups_per_s']:7.1f} setups/s  setup p50 "
                    f"{r['setup_p50_ms']:5.1f} ms p99 {r['setup_p99_ms']:5.1f} ms  records "
                    f"written {r['written_after_s'] * 1000:5.0f} ms after the last call  "
                    f"worst loop lag {r['worst_loop_lag_ms']:4.0f} ms"
                )
            print("webhook delivery latency (event -> receiver's 200), one receiver:")
            for name, db in (("SQLite", f"sqlite://{tmp}/hooks.db"), ("PostgreSQL", pg_hooks)):
                hook = WebhookReceiver(HOOK_SECRET)
                await hook.start()
                r = await run(db, pairs, calls, hook)
                p50, p99 = latencies(hook)
                await hook.stop()
                print(
                    f"  {name:12s} {r['setups_per_s']:7.1f} setups/s with webhooks  "
                    f"{len(hook.delivered())} events  latency p50 {p50:5.1f} ms  p99 {p99:6.1f} ms"
                )
    finally:
        cluster.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    asyncio.run(main(args.pairs, args.calls))
