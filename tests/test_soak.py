"""Soak: 500 logged-in WebSocket clients (250 pairs) place and end calls for 30 s, no errors;
and 120 clients spread over three Redis-backed nodes for 10 s.

Signaling only (raw aiohttp WebSocket clients, no media), loopback only, bounded in time and
count. Prints the throughput and latency percentiles it measured.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import random
import statistics
import time
from typing import Any

import aiohttp
import pytest

from callkit.signaling import ServerConfig, SignalingServer

from .cluster_nodes import NodeSpread
from .conftest import SDK_APP_ID, SECRET, sig

CLIENTS = 500
DURATION = 30.0
#: pause between two calls of a pair (seconds, uniform), to keep the pace realistic
PAUSE = (0.3, 0.9)
TIMEOUT = 10.0

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


class SoakClient:
    """A minimal protocol client: replies by id, events queued by name."""

    def __init__(self, user: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.user = user
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: dict[str, asyncio.Queue[dict[str, Any]]] = collections.defaultdict(
            asyncio.Queue
        )
        self.frames = 0
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            self.frames += 1
            frame = json.loads(msg.data)
            if frame["type"] in ("ok", "error"):
                future = self.pending.pop(frame.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(frame)
            elif frame["type"] == "event":
                self.events[frame["event"]].put_nowait(frame)

    async def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        rid = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = future
        await self.ws.send_str(json.dumps({"v": 1, "type": type_, "id": rid, **fields}))
        frame = await asyncio.wait_for(future, TIMEOUT)
        if frame["type"] != "ok":
            raise AssertionError(f"{self.user}: {type_} refused: {frame}")
        return frame

    async def event(self, name: str) -> dict[str, Any]:
        return await asyncio.wait_for(self.events[name].get(), TIMEOUT)

    def leftover_events(self) -> list[str]:
        return [name for name, q in self.events.items() for _ in range(q.qsize())]

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self.reader, return_exceptions=True)


class Measure:
    def __init__(self) -> None:
        self.request_ms: list[float] = []
        self.ring_ms: list[float] = []
        self.calls = 0
        self.errors: list[str] = []

    @staticmethod
    def percentiles(values: list[float]) -> str:
        q = statistics.quantiles(values, n=100, method="inclusive")
        return (
            f"p50 {q[49]:.1f} ms, p95 {q[94]:.1f} ms, p99 {q[98]:.1f} ms, max {max(values):.1f} ms"
        )


async def timed(m: Measure, coro: Any) -> dict[str, Any]:
    start = time.perf_counter()
    frame = await coro
    m.request_ms.append((time.perf_counter() - start) * 1000)
    return frame  # type: ignore[no-any-return]


async def pair_loop(a: SoakClient, b: SoakClient, until: float, m: Measure, seed: int) -> None:
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(rng.uniform(0, PAUSE[1]))  # spread the starts
    n = 0
    while loop.time() < until:
        caller, callee = (a, b) if n % 2 == 0 else (b, a)
        n += 1
        try:
            start = time.perf_counter()
            reply = await timed(
                m, caller.request("call", callees=[callee.user], mediaType=rng.choice([1, 2]))
            )
            call_id = reply["data"]["call"]["callId"]
            received = await callee.event("onCallReceived")
            m.ring_ms.append((time.perf_counter() - start) * 1000)
            assert received["callId"] == call_id
            if rng.random() < 0.2:  # sometimes the callee rejects
                await timed(m, callee.request("reject", callId=call_id))
                await callee.event("onCallCancelled")
                await caller.event("onUserReject")
                await caller.event("onCallCancelled")
            else:
                await timed(m, callee.request("accept", callId=call_id))
                await caller.event("onCallBegin")
                await caller.event("onUserJoin")
                await caller.event("onUserAudioAvailable")  # the callee joined with mic on
                await callee.event("onCallBegin")
                await callee.event("onUserJoin")
                await callee.event("onUserAudioAvailable")
                ender, other = (caller, callee) if rng.random() < 0.5 else (callee, caller)
                await timed(m, ender.request("hangup", callId=call_id))
                await other.event("onUserLeave")
                await other.event("onCallEnd")
                await ender.event("onCallEnd")
            m.calls += 1
        except (AssertionError, asyncio.TimeoutError, ConnectionError, RuntimeError) as exc:
            m.errors.append(f"{caller.user}->{callee.user}: {type(exc).__name__}: {exc}")
            return
        await asyncio.sleep(rng.uniform(*PAUSE))


async def connect(http: aiohttp.ClientSession, url: str, user: str) -> SoakClient:
    ws = await http.ws_connect(url)
    client = SoakClient(user, ws)
    await client.request("login", sdkAppId=SDK_APP_ID, userId=user, userSig=sig(user))
    return client


async def test_soak_500_clients_place_and_end_calls(error_log: Any) -> None:
    server = SignalingServer(SDK_APP_ID, SECRET, ServerConfig())
    url = await server.start("127.0.0.1", 0)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    clients: list[SoakClient] = []
    m = Measure()
    try:
        t0 = time.perf_counter()
        users = [f"soak{i:03d}" for i in range(CLIENTS)]
        for batch in range(0, CLIENTS, 50):
            clients += await asyncio.gather(
                *(connect(http, url, u) for u in users[batch : batch + 50])
            )
        setup = time.perf_counter() - t0
        assert len(server.online_users()) == CLIENTS

        loop = asyncio.get_running_loop()
        messages_before = server.stats.messages
        frames_before = sum(c.frames for c in clients)
        start = time.perf_counter()
        until = loop.time() + DURATION
        pairs = [(clients[i], clients[i + 1]) for i in range(0, CLIENTS, 2)]
        await asyncio.wait_for(
            asyncio.gather(*(pair_loop(a, b, until, m, i) for i, (a, b) in enumerate(pairs))),
            DURATION + 3 * TIMEOUT,
        )
        elapsed = time.perf_counter() - start
        inbound = server.stats.messages - messages_before
        outbound = sum(c.frames for c in clients) - frames_before

        assert m.errors == [], m.errors[:5]
        assert server.stats.internal_errors == 0 and server.stats.errors_sent == 0
        assert server.stats.rate_limited == 0
        assert server.registry.calls == {}
        assert len(server.online_users()) == CLIENTS  # nobody was dropped by the heartbeat
        assert m.calls >= CLIENTS // 2 * 10, m.calls  # every pair kept calling
        leftovers = [(c.user, c.leftover_events()) for c in clients if c.leftover_events()]
        assert leftovers == []
        print(
            f"\nsoak: {CLIENTS} clients logged in in {setup:.1f} s; {m.calls} calls in "
            f"{elapsed:.1f} s ({m.calls / elapsed:.0f} calls/s); server received "
            f"{inbound / elapsed:.0f} msgs/s and sent {outbound / elapsed:.0f} frames/s"
        )
        print(f"soak: request -> reply {Measure.percentiles(m.request_ms)}")
        print(f"soak: call -> callee's onCallReceived {Measure.percentiles(m.ring_ms)}")
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        await http.close()
        deadline = asyncio.get_running_loop().time() + 5
        while not server.idle() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        idle = server.idle()
        await server.stop()
    assert idle
    assert not [r for r in error_log.records if r.name.startswith("callkit.signaling")]
    logging.getLogger("callkit.signaling").debug("soak done")


#: the cluster variant: fewer clients for less time (every request is a Redis transaction
#: and the three nodes share this process's one core with the clients)
CLUSTER_CLIENTS = 120
CLUSTER_DURATION = 10.0


async def test_soak_clients_over_three_redis_nodes(redis_url: str, error_log: Any) -> None:
    """The soak against three Redis-backed nodes: client i on node i % 3, so every pair's
    calls cross nodes. No errors; afterwards Redis holds no call, index or device."""
    spread = NodeSpread(redis_url)
    await spread.start()
    urls = [s.url or "" for s in spread.servers]
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    clients: list[SoakClient] = []
    m = Measure()
    try:
        users = [f"soak{i:03d}" for i in range(CLUSTER_CLIENTS)]
        for batch in range(0, CLUSTER_CLIENTS, 30):
            clients += await asyncio.gather(
                *(connect(http, urls[i % 3], users[i]) for i in range(batch, batch + 30))
            )
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        until = loop.time() + CLUSTER_DURATION
        pairs = [(clients[i], clients[i + 1]) for i in range(0, CLUSTER_CLIENTS, 2)]
        await asyncio.wait_for(
            asyncio.gather(*(pair_loop(a, b, until, m, i) for i, (a, b) in enumerate(pairs))),
            CLUSTER_DURATION + 3 * TIMEOUT,
        )
        elapsed = time.perf_counter() - start
        assert m.errors == [], m.errors[:5]
        for server in spread.servers:
            assert server.stats.internal_errors == 0 and server.stats.errors_sent == 0
        assert m.calls >= CLUSTER_CLIENTS // 2 * 3, m.calls  # every pair kept calling
        leftovers = [(c.user, c.leftover_events()) for c in clients if c.leftover_events()]
        assert leftovers == []
        print(
            f"\nsoak over 3 Redis nodes: {CLUSTER_CLIENTS} clients, {m.calls} calls in "
            f"{elapsed:.1f} s ({m.calls / elapsed:.0f} calls/s)"
        )
        print(f"soak (3 nodes): request -> reply {Measure.percentiles(m.request_ms)}")
        print(f"soak (3 nodes): call -> callee's onCallReceived {Measure.percentiles(m.ring_ms)}")
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        await http.close()
        link = spread.servers[0].store.link  # type: ignore[attr-defined]
        deadline = asyncio.get_running_loop().time() + 5
        left: list[str] = ["?"]
        while left and asyncio.get_running_loop().time() < deadline:
            keys = await link.run(lambda r: r.keys("ck:*"))
            left = [k for k in keys if k.startswith(("ck:call:", "ck:uc:", "ck:user:"))]
            await asyncio.sleep(0.05)
        await spread.stop()
    assert left == []
    assert not [r for r in error_log.records if r.name.startswith("callkit.signaling")]
