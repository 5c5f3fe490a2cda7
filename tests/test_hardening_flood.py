"""Floods and held-session memory (issue 9, "also seen"): over-rate frames are dropped unread,
persistent flooders are disconnected, idle bystanders stay and are answered promptly, an
unrelated call rings, times out and connects on time; held sessions are bounded in bytes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time

from callkit.signaling import ServerConfig, SignalingServer

from .conftest import SDK_APP_ID, SECRET
from .test_hardening_slow import timed_no_response
from .test_server import RawClient, login


async def started(config: ServerConfig) -> SignalingServer:
    server = SignalingServer(SDK_APP_ID, SECRET, config)
    await server.start("127.0.0.1", 0)
    return server


async def keep_reading(client: RawClient) -> None:
    """What an idle client does: read (and so answer pings) until its socket ends."""
    with contextlib.suppress(Exception):
        while not client.ws.closed:
            msg = await client.ws.receive()
            if msg.type.name in ("CLOSE", "CLOSED", "ERROR"):
                return


async def test_flood_is_dropped_flooders_go_bystanders_stay() -> None:
    server = await started(ServerConfig())
    url = server.url or ""
    try:
        flooders = [await login(url, f"flood{i}") for i in range(6)]
        idle = [await login(url, f"idle{i}") for i in range(10)]
        readers = [asyncio.create_task(keep_reading(c)) for c in idle]
        prober = await login(url, "prober")
        caller, callee = await login(url, "caller"), await login(url, "callee")
        sent = [0]
        frame = json.dumps({"v": 1, "type": "ping", "id": 1, "pad": "x" * 200})

        async def flood(client: RawClient) -> None:
            with contextlib.suppress(Exception):
                for _ in range(200_000):
                    await client.ws.send_str(frame)
                    sent[0] += 1
                    if sent[0] % 50 == 0:
                        await asyncio.sleep(0)

        start = time.monotonic()
        floods = [asyncio.create_task(flood(c)) for c in flooders]
        latencies = []
        for _ in range(40):  # a bystander's requests keep being answered promptly
            t0 = time.monotonic()
            assert (await prober.request("ping"))["type"] == "ok"
            latencies.append(time.monotonic() - t0)
            await asyncio.sleep(0.02)
        late = await timed_no_response(caller, callee, 1.0)  # timers fire on time
        assert late < 2.0, late
        await caller.event("onCallCancelled")
        t0 = time.monotonic()
        reply = await caller.request("call", callees=["callee"], mediaType=1, timeout=5)
        await callee.event("onCallReceived")
        accept = await callee.request("accept", callId=reply["data"]["call"]["callId"])
        assert accept["type"] == "ok"
        await caller.event("onCallBegin")
        assert time.monotonic() - t0 < 1.0
        for _ in range(100):
            if server.stats.flooders == 6:
                break
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - start
        assert server.stats.flooders == 6  # every persistent flooder was disconnected
        await asyncio.wait_for(asyncio.gather(*floods), 10)
        for c in flooders:  # each reads its replies, then the server's close
            end = "TEXT"
            while end == "TEXT":
                end = (await c.ws.receive(timeout=5)).type.name
            assert end in ("CLOSE", "CLOSED", "ERROR")
            assert c.ws.close_code in (1008, 1006), c.ws.close_code  # 1006: aborted after 1 s
        online = set(server.online_users())
        assert {f"idle{i}" for i in range(10)} <= online  # no innocent idle client dropped
        assert not {f"flood{i}" for i in range(6)} & online
        assert server.stats.internal_errors == 0
        p99 = sorted(latencies)[int(len(latencies) * 0.99) - 1]
        print(
            f"\nflood: {sent[0]} frames from 6 sockets in {elapsed:.1f} s "
            f"({sent[0] / elapsed:.0f}/s); {server.stats.rate_limited} dropped unread; "
            f"bystander ping p50 {statistics.median(latencies) * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms; 1 s ring timed out after {late:.2f} s"
        )
        assert p99 < 1.0
        for c in (*idle, prober, caller, callee, *flooders):
            await c.close()
        for t in readers:
            t.cancel()
    finally:
        await server.stop()


async def test_held_sessions_are_bounded_in_bytes() -> None:
    cfg = ServerConfig(resume_grace=30.0, heartbeat=30.0, liveness_timeout=60.0)
    server = await started(cfg)
    url = server.url or ""
    try:
        pairs = []
        for i in range(20):
            feeder, held = await login(url, f"feeder{i}"), await login(url, f"held{i}")
            reply = await feeder.request("call", callees=[f"held{i}"], mediaType=1)
            call_id = reply["data"]["call"]["callId"]
            await held.event("onCallReceived")
            await held.request("accept", callId=call_id)
            await feeder.event("onCallBegin")
            pairs.append((feeder, held, call_id))
        for session in list(server._sockets.values()):  # the held users' links drop
            if (session.user_id or "").startswith("held"):
                session.transport.abort()
        for _ in range(50):
            if len(server.held_users()) == 20:
                break
            await asyncio.sleep(0.1)
        assert len(server.held_users()) == 20
        sdp = "v=0\r\n" + "a=x:" + "y" * 40_000 + "\r\n"
        peak = 0
        for _ in range(10):  # 10 x 40 KB each: more than the 256 KiB a held session keeps
            for i, (feeder, _, call_id) in enumerate(pairs):
                reply = await feeder.request(
                    "relay",
                    callId=call_id,
                    to=f"held{i}",
                    kind="offer",
                    data={"sdp": sdp, "type": "offer"},
                )
                assert reply["type"] in ("ok", "error")
            held = [d for d in server.sessions.devices.values() if d.held]
            peak = max(peak, sum(s.outbox_bytes for s in held))
            assert all(s.outbox_bytes <= cfg.max_held_bytes for s in held)
        print(f"\nheld: 20 sessions awaiting resume peaked at {peak / 1e6:.2f} MB of messages")
        assert peak <= 20 * cfg.max_held_bytes
        # overflowing the bound released them: they left their calls, the feeders were told
        for _ in range(50):
            if not server.held_users():
                break
            await asyncio.sleep(0.1)
        assert server.held_users() == []
        for feeder, _, _ in pairs:
            await feeder.event("onCallEnd")
            await feeder.close()
    finally:
        await server.stop()
