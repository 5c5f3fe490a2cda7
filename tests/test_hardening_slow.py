"""A client that stops reading must not stall anybody else (issue 9, defect 2).

The victim floods the sloth (a member of her call who stopped reading) with large relays
while a group invitation in their call and an unrelated 1v1 call ring and time out on
the server's timers. The sloth is disconnected (its queue is bounded) and held as a lost
link; the unrelated calls ring, time out and connect on time; the victim can leave at once.
"""

from __future__ import annotations

import asyncio
import json

from callkit.signaling import ServerConfig, SignalingServer

from .conftest import SDK_APP_ID, SECRET
from .test_server import RawClient, login


async def started(config: ServerConfig) -> SignalingServer:
    server = SignalingServer(SDK_APP_ID, SECRET, config)
    await server.start("127.0.0.1", 0)
    return server


async def timed_no_response(caller: RawClient, callee: RawClient, timeout: float) -> float:
    """``caller`` rings ``callee``, who never answers; seconds until onUserNoResponse."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    reply = await caller.request("call", callees=["callee"], mediaType=1, timeout=timeout)
    assert reply["type"] == "ok", reply
    await callee.event("onCallReceived")
    await caller.event("onUserNoResponse", timeout=10)
    return loop.time() - start


async def test_slow_reader_is_dropped_and_stalls_nobody() -> None:
    server = await started(
        ServerConfig(
            heartbeat=30.0,  # only the writer's bound can catch the sloth
            liveness_timeout=60.0,
            max_send_queue_bytes=512 * 1024,
            send_timeout=3.0,
            resume_grace=3.0,
        )
    )
    url = server.url or ""
    try:
        victim, sloth = await login(url, "victim"), await login(url, "sloth")
        caller, callee = await login(url, "caller"), await login(url, "callee")
        reply = await victim.request("call", callees=["sloth"], mediaType=1, groupId="g")
        call_id = reply["data"]["call"]["callId"]
        await sloth.event("onCallReceived")
        assert (await sloth.request("accept", callId=call_id))["type"] == "ok"
        await victim.event("onCallBegin")
        # from here on the sloth reads nothing; a group invitee in its call will time out on
        # the timer loop, which has to tell the sloth too
        invite = await victim.request("invite", callId=call_id, callees=["ghost"], timeout=1.0)
        assert invite["type"] == "ok"
        sdp = "v=0\r\n" + "a=x-pad:" + "x" * 40_000 + "\r\n"
        relay = {"callId": call_id, "to": "sloth", "kind": "offer"}

        async def flood() -> None:
            for i in range(200):
                await victim.ws.send_str(
                    json.dumps(
                        {
                            "v": 1,
                            "type": "relay",
                            "id": 10_000 + i,
                            **relay,
                            "data": {"sdp": sdp, "type": "offer"},
                        }
                    )
                )
                await asyncio.sleep(0.012)  # under the 100/s rate limit

        flooding = asyncio.create_task(flood())
        await asyncio.sleep(0.5)
        # an unrelated 1v1 call rings and times out on time, then connects on time
        late = await timed_no_response(caller, callee, 1.0)
        assert late < 2.0, late
        await caller.event("onCallCancelled")
        loop = asyncio.get_running_loop()
        start = loop.time()
        reply = await caller.request("call", callees=["callee"], mediaType=1, timeout=5)
        second = reply["data"]["call"]["callId"]
        await callee.event("onCallReceived")
        assert (await callee.request("accept", callId=second))["type"] == "ok"
        await caller.event("onCallBegin")
        assert loop.time() - start < 1.0
        # the victim heard that the ghost did not answer, on time, and keeps being served
        await victim.event("onUserNoResponse", timeout=5)
        await flooding
        for _ in range(100):
            if server.stats.slow_disconnects:
                break
            await asyncio.sleep(0.1)
        assert server.stats.slow_disconnects == 1
        # a lost link: held for a resume (released again once its held buffer overflows)
        for _ in range(50):
            if server.stats.held:
                break
            await asyncio.sleep(0.1)
        assert server.stats.held == 1
        assert "sloth" not in server.online_users()
        # the victim hangs up and closes her socket: the server knows at once
        await victim.close()
        for _ in range(20):
            if "victim" not in server.online_users():
                break
            await asyncio.sleep(0.05)
        assert "victim" not in server.online_users()
        assert server.registry.call_of("victim") is None
        # the sloth's socket was closed by the server; it reads what is left, then the end
        frames, end = 0, None
        while end is None:
            msg = await sloth.ws.receive(timeout=10)
            if msg.type.name == "TEXT":
                frames += 1
            else:
                end = msg.type.name
        assert end in ("CLOSE", "CLOSED", "ERROR")
        assert sloth.ws.close_code in (4008, 1006), sloth.ws.close_code
        await sloth.close()
        # the held sloth leaves the call once the grace is over
        for _ in range(60):
            if not server.held_users():
                break
            await asyncio.sleep(0.1)
        assert server.held_users() == []
        for c in (caller, callee):
            await c.close()
        assert server.stats.internal_errors == 0
    finally:
        await server.stop()
