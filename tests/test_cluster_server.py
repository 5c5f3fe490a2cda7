"""Three in-process SignalingServers over one real redis-server, spoken to over real sockets.

A user on node A calls a user on node B; a group spread over three nodes gets every event
exactly once, in order; a ring timeout fires exactly once; kick, multi-device and resume
work across nodes; a hostile client on one node cannot reach a call on another; Redis
killed and restarted mid-test gives a clear -1406 error and the nodes reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from callkit.signaling import SignalingServer

from .cluster_nodes import NodeSpread
from .conftest import SDK_APP_ID, sig
from .redis_server import RedisServer
from .test_server import RawClient


async def login(server: SignalingServer, user: str, **fields: Any) -> RawClient:
    client = await RawClient.connect(server.url or "")
    reply = await client.request(
        "login", sdkAppId=SDK_APP_ID, userId=user, userSig=sig(user), **fields
    )
    assert reply["type"] == "ok", reply
    client.session_id = reply["data"]["sessionId"]  # type: ignore[attr-defined]
    return client


async def events(client: RawClient, quiet: float = 0.3) -> list[str]:
    """Every event that arrives until ``quiet`` seconds pass without one."""
    got = [f["event"] for f in client.inbox if f.get("type") == "event"]
    client.inbox.clear()
    while True:
        try:
            frame = await client.recv(quiet)
        except (asyncio.TimeoutError, TimeoutError):
            return got
        if frame.get("type") == "event":
            got.append(frame["event"])


@pytest.fixture
async def three(node_spread: NodeSpread) -> AsyncIterator[list[SignalingServer]]:
    yield node_spread.servers


async def test_a_user_on_node_a_calls_a_user_on_node_b(three: list[SignalingServer]) -> None:
    a, b, _ = three
    alice, bob = await login(a, "alice"), await login(b, "bob")
    reply = await alice.request("call", callees=["bob"], mediaType=1)
    call_id = reply["data"]["call"]["callId"]
    received = await bob.event("onCallReceived")
    assert received["payload"]["callerId"] == "alice" and received["callId"] == call_id
    assert (await bob.request("accept", callId=call_id))["type"] == "ok"
    assert (await alice.event("onCallBegin"))["payload"]["callRole"] == 1
    # relays cross nodes too, and only between members
    offer = {"sdp": "v=0", "type": "offer"}
    reply = await alice.request("relay", callId=call_id, to="bob", kind="offer", data=offer)
    assert reply["type"] == "ok"
    frame = await bob.recv()
    while frame["type"] != "relayed":
        frame = await bob.recv()
    assert frame["fromUser"] == "alice" and frame["data"] == offer
    eve = await login(three[2], "eve")
    for to in ("alice", "bob"):
        reply = await eve.request("relay", callId=call_id, to=to, kind="offer", data=offer)
        assert reply["code"] == -1203
    assert (await eve.request("hangup", callId=call_id))["code"] == -1203
    assert (await alice.request("hangup", callId=call_id))["type"] == "ok"
    assert "onCallEnd" in await events(bob)
    for c in (alice, bob, eve):
        await c.close()


async def test_group_over_three_nodes_gets_each_event_once_in_order(
    three: list[SignalingServer],
) -> None:
    users = ["g0", "g1", "g2", "g3", "g4", "g5"]
    clients = {u: await login(three[i % 3], u) for i, u in enumerate(users)}
    reply = await clients["g0"].request("call", callees=users[1:], mediaType=1, groupId="grp")
    call_id = reply["data"]["call"]["callId"]
    for u in users[1:]:
        await clients[u].event("onCallReceived")
    for u in ("g1", "g2", "g3"):
        assert (await clients[u].request("accept", callId=call_id))["type"] == "ok"
    assert (await clients["g4"].request("reject", callId=call_id))["type"] == "ok"
    assert (await clients["g5"].request("accept", callId=call_id))["type"] == "ok"
    assert (await clients["g1"].request("hangup", callId=call_id))["type"] == "ok"
    got = {u: await events(c) for u, c in clients.items()}
    # the caller: each joiner once, in the order they joined, the reject, then g1 leaving
    g0 = [e for e in got["g0"] if e in ("onUserJoin", "onUserReject", "onUserLeave")]
    joins = ["onUserJoin"] * 3
    assert g0 == [*joins, "onUserReject", "onUserJoin", "onUserLeave"]
    assert got["g0"].count("onCallBegin") == 1
    assert got["g1"][-1] == "onCallEnd" and got["g4"] == ["onCallCancelled"]
    for u in ("g2", "g3", "g5"):
        assert got[u].count("onCallBegin") == 1 and got[u][-1] == "onUserLeave", (u, got[u])
    for c in clients.values():
        await c.close()


async def test_ring_timeout_fires_exactly_once_across_nodes(three: list[SignalingServer]) -> None:
    a, b, c = three
    alice, bob, carol = await login(a, "alice"), await login(b, "bob"), await login(c, "carol")
    reply = await alice.request("call", callees=["bob", "carol"], mediaType=1, timeout=0.5)
    assert reply["type"] == "ok"
    await bob.event("onCallReceived")
    await carol.event("onCallReceived")
    await asyncio.sleep(1.0)  # every node polls the shared timer set meanwhile
    assert await events(bob) == ["onCallCancelled"]
    assert await events(carol) == ["onCallCancelled"]
    got = await events(alice)
    assert got.count("onUserNoResponse") == 2 and got.count("onCallCancelled") == 1
    for cl in (alice, bob, carol):
        await cl.close()


async def test_kick_multi_device_and_resume_across_nodes(three: list[SignalingServer]) -> None:
    a, b, c = three
    old = await login(a, "bob")
    new = await login(b, "bob")  # no multi-device: the device on node A is kicked
    frame = await old.recv()
    assert frame["type"] == "kicked"
    closed = await old.ws.receive(timeout=5)
    assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await old.close()
    phone = await login(b, "carol", multiDevice=True)
    laptop = await login(c, "carol", multiDevice=True)
    caller = await login(a, "dave")
    call_id = (await caller.request("call", callees=["carol"], mediaType=1))["data"]["call"][
        "callId"
    ]
    await phone.event("onCallReceived")
    await laptop.event("onCallReceived")
    assert (await laptop.request("accept", callId=call_id))["type"] == "ok"
    stop = await phone.event("onCallCancelled")
    assert stop["payload"]["reason"] == 7  # answered on another device
    reply = await phone.request("hangup", callId=call_id)
    assert reply["code"] == -1203 and "another device" in reply["message"]
    # a session id is only good for its own user, on any node
    thief = await RawClient.connect(c.url or "")
    reply = await thief.request(
        "login", sdkAppId=SDK_APP_ID, userId="eve", userSig=sig("eve"),
        resume=laptop.session_id,  # type: ignore[attr-defined]
    )  # fmt: skip
    assert reply["type"] == "ok" and reply["data"]["resumed"] is False
    for cl in (new, phone, laptop, caller, thief):
        await cl.close()


async def test_redis_killed_and_restarted_gives_a_clear_error_then_recovers(
    own_redis: RedisServer,
) -> None:
    spread = NodeSpread(own_redis.url)
    await spread.start()
    a, b, _ = spread.servers
    try:
        alice, bob = await login(a, "alice"), await login(b, "bob")
        own_redis.kill()
        reply = await alice.request("call", callees=["bob"], mediaType=1)
        assert reply["type"] == "error" and reply["code"] == -1406
        assert f"127.0.0.1:{own_redis.port}" in reply["message"]
        assert "not applied" in reply["message"]
        own_redis.start()  # empty: the nodes lost every device and call; they close sockets
        for old in (alice, bob):
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError, AssertionError):
                while True:
                    await old.recv(10)
            assert old.ws.closed
            await old.close()
        alice, bob = await login(a, "alice"), await login(b, "bob")
        reply = await alice.request("call", callees=["bob"], mediaType=1)
        assert reply["type"] == "ok", reply
        await bob.event("onCallReceived")
        for cl in (alice, bob):
            await cl.close()
        assert all(s.stats.internal_errors == 0 for s in spread.servers)
    finally:
        await spread.stop()


async def test_admin_views_see_the_whole_cluster(three: list[SignalingServer]) -> None:
    """GET /calls and GET /users/{id} on any node show calls and users of the other nodes
    (they read the shared store, not the node's own sockets); still admin-only."""
    a, b, c = three
    alice, bob = await login(a, "alice"), await login(b, "bob")
    assert (await alice.request("selfInfo", nickname="Alice", avatarUrl=""))["type"] == "ok"
    reply = await alice.request("call", callees=["bob"], mediaType=1)
    call_id = reply["data"]["call"]["callId"]
    await bob.event("onCallReceived")
    assert (await bob.request("accept", callId=call_id))["type"] == "ok"
    admin = {"Authorization": f"Bearer {sig('administrator')}"}
    base = (c.url or "").replace("ws://", "http://").removesuffix("/ws")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/calls", headers=admin) as resp:
            assert resp.status == 200
            calls = await resp.json()
        async with http.get(f"{base}/users/bob", headers=admin) as resp:
            assert resp.status == 200
            bob_info = await resp.json()
        async with http.get(f"{base}/users/alice", headers=admin) as resp:
            alice_info = await resp.json()
        async with http.get(f"{base}/users/nobody", headers=admin) as resp:
            assert resp.status == 404
        async with http.get(
            f"{base}/calls", headers={"Authorization": f"Bearer {sig('bob')}"}
        ) as r:
            assert r.status == 401
    assert [call["callId"] for call in calls] == [call_id]
    assert sorted(m["userId"] for m in calls[0]["members"]) == ["alice", "bob"]
    assert bob_info["online"] is True and bob_info["callId"] == call_id
    assert alice_info["nickname"] == "Alice" and alice_info["callId"] == call_id
    assert c.online_users() == []  # node C itself hosts nobody
    for client in (alice, bob):
        await client.close()
