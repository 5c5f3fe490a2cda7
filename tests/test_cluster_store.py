"""The Redis state store against a real redis-server: several stores in one test act as nodes.

The operations are the pure rules (callstate.py, sessions.py) run through store.py's Tx,
exactly as the server runs them; each node's sink records the frames it got. Covered: a
call across nodes, atomic updates racing from several nodes, every frame of a group call
exactly once and in commit order, a ring timeout that fires once across nodes even when the
arming node is gone, kick and multi-device across nodes, held sessions buffered and resumed
on another node, a dead node's sockets taken over, and a Redis that dies and comes back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from callkit.signaling import protocol as p
from callkit.signaling.callstate import Call, CallRegistry, CallStateError
from callkit.signaling.cluster import RedisStateStore, StoreUnavailable
from callkit.signaling.cluster.link import stop_tasks
from callkit.signaling.cluster.redisstore import merge_users, split_users
from callkit.signaling.codes import ErrorCode
from callkit.signaling.sessions import SessionTable
from callkit.signaling.store import Frame, Tx

from .redis_server import RedisServer


class Node:
    """One node: a RedisStateStore and every frame its sink got."""

    def __init__(self, url: str, node: str, **kwargs: Any) -> None:
        kwargs.setdefault("liveness_ttl", 3.0)
        self.store = RedisStateStore(
            url, node=node, prefix="t", sessions_factory=lambda: SessionTable(resume_grace=2.0),
            op_timeout=0.5, poll=0.05, **kwargs,
        )  # fmt: skip
        self.id = self.store.node  # "A.3f9a1c": the id plus this incarnation
        self.frames: list[Frame] = []
        self.store.set_sink(self.frames.extend)
        self.sids: dict[str, str] = {}  # conn -> session id

    def events(self, conn: str) -> list[str]:
        out = []
        for f in self.frames:
            if f.conn == conn and f.text is not None:
                msg = json.loads(f.text)
                out.append(msg.get("event") or msg["type"])
        return out

    def closes(self, conn: str) -> list[str]:
        return [f.close for f in self.frames if f.conn == conn and f.close is not None]

    async def login(self, user: str, conn: str, **kwargs: Any) -> Any:
        def op(tx: Tx) -> str:
            out = tx.sessions.login(tx.now, user, conn, tx.call_of, node=self.id, **kwargs)
            tx.carry(out)
            assert out.device is not None
            return out.device.session_id

        got = await self.store.apply(op, users=[user])
        self.sids[conn] = got.result
        return got

    async def call(self, conn: str, user: str, callees: list[str], **kwargs: Any) -> Call:
        def op(tx: Tx) -> Call:
            call, notifies = tx.registry.start_call(tx.now, user, callees, 1, **kwargs)
            tx.sessions.took_call(self.sids[conn], call.call_id)
            tx.notify(notifies, user)
            return call

        return (await self.store.apply(op, users=[user, *callees])).result

    async def answer(self, conn: str, user: str, call_id: str, how: str = "accept") -> None:
        def op(tx: Tx) -> None:
            tx.sessions.check_owner(self.sids[conn], call_id)
            notifies = getattr(tx.registry, how)(tx.now, user, call_id)
            out = tx.sessions.answered(self.sids[conn], call_id, how == "accept")
            tx.notify(notifies, user)
            tx.carry(out)

        await self.store.apply(op, users=[user], calls=[call_id])


async def until(predicate: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[list[Node]]:
    made = [Node(redis_url, n) for n in ("A", "B", "C")]
    for node in made:
        await node.store.start()
    yield made
    for node in made:
        await node.store.close()


def test_session_documents_split_per_user_and_merge_back() -> None:
    table = SessionTable()
    reg = CallRegistry()
    call_of = lambda u: None  # noqa: E731
    a = table.login(1.0, "alice", "c1", call_of, node="A", sig_deadline=50.0).device
    table.login(1.0, "bob", "c2", call_of, node="B", multi_device=True)
    table.login(2.0, "bob", "c3", call_of, node="C", multi_device=True)
    table.set_profile("alice", "Alice", "http://a/x.png")
    assert a is not None
    call, _ = reg.start_call(3.0, "alice", ["bob"], 1)
    table.took_call(a.session_id, call.call_id)
    docs = split_users(table.to_json())
    assert sorted(docs) == ["alice", "bob"] and len(docs["bob"]["devices"]) == 2
    again = SessionTable()
    again.load_json(merge_users(json.loads(json.dumps(d)) for d in docs.values()))
    assert again.to_json() == table.to_json()
    assert again.get_timer() == 50.0


async def test_a_call_across_nodes_reaches_each_user_on_its_node(nodes: list[Node]) -> None:
    a, b, c = nodes
    await a.login("alice", "a1")
    await b.login("bob", "b1")
    call = await a.call("a1", "alice", ["bob"])
    await until(lambda: b.events("b1") == ["onCallReceived"], "bob's invitation on node B")
    await b.answer("b1", "bob", call.call_id)
    await until(lambda: "onUserAudioAvailable" in a.events("a1"), "alice's events on A")
    assert a.events("a1") == ["onUserJoin", "onCallBegin", "onUserAudioAvailable"]
    await until(lambda: len(b.events("b1")) == 4, "bob's events on B")
    assert b.events("b1") == ["onCallReceived", "onCallBegin", "onUserJoin", "onUserAudioAvailable"]
    assert not c.frames
    # a user who is not in the call is refused and nothing changes
    with pytest.raises(CallStateError) as refused:
        await c.login("mallory", "c1")
        await c.answer("c1", "mallory", call.call_id, "hangup")
    assert refused.value.code == ErrorCode.REQUEST_REFUSED
    await b.answer("b1", "bob", call.call_id, "hangup")
    await until(lambda: a.events("a1")[-1:] == ["onCallEnd"], "alice's onCallEnd")
    keys = await a.store.link.run(lambda r: r.keys("t:*"))
    assert not [k for k in keys if k.startswith(("t:call:", "t:uc:", "t:room:", "t:timers"))]


async def test_updates_to_one_call_are_atomic_across_nodes(nodes: list[Node]) -> None:
    """Nine callers on three nodes call one callee at once: one rings, eight hear busy."""
    await nodes[0].login("callee", "x")
    for i in range(9):
        await nodes[i % 3].login(f"c{i}", f"k{i}")
    calls = await asyncio.gather(
        *(nodes[i % 3].call(f"k{i}", f"c{i}", ["callee"]) for i in range(9))
    )
    stored = await nodes[0].store.link.run(lambda r: r.keys("t:call:*"))
    ringing = [c for c in calls if "callee" in c.members]
    assert len(ringing) == 1 and len(stored) == 1  # a call whose callee is busy ends at once
    busy = [f for node in nodes for f in node.frames if f.text and "onUserLineBusy" in f.text]
    assert len(busy) == 8
    assert sum(n.store.conflicts for n in nodes) >= 1  # the races were real
    await until(lambda: nodes[0].events("x") == ["onCallReceived"], "one invitation")


async def test_group_frames_arrive_once_in_commit_order(nodes: list[Node]) -> None:
    """A group call over three nodes: each member gets the same frames, in the same order,
    as one registry that ran the same operations."""
    a, b, c = nodes
    where = {"g0": a, "g1": b, "g2": c, "g3": a, "g4": b}
    for user, node in where.items():
        await node.login(user, f"{user}-conn")
    call = await a.call("g0-conn", "g0", ["g1", "g2", "g3", "g4"], group_id="grp")
    await b.answer("g1-conn", "g1", call.call_id)
    await c.answer("g2-conn", "g2", call.call_id)
    await a.answer("g3-conn", "g3", call.call_id, "reject")
    await b.answer("g4-conn", "g4", call.call_id)
    await a.answer("g0-conn", "g0", call.call_id, "hangup")
    await b.answer("g1-conn", "g1", call.call_id, "hangup")
    local = CallRegistry(new_call_id=lambda: call.call_id, new_room_id=lambda: call.room_id)
    _, expected = local.start_call(0, "g0", ["g1", "g2", "g3", "g4"], 1, group_id="grp")
    expected += local.accept(0, "g1", call.call_id) + local.accept(0, "g2", call.call_id)
    expected += local.reject(0, "g3", call.call_id) + local.accept(0, "g4", call.call_id)
    expected += local.hangup(0, "g0", call.call_id) + local.hangup(0, "g1", call.call_id)
    await until(
        lambda: sum(len(n.frames) for n in nodes) == len(expected), f"{len(expected)} frames"
    )
    await asyncio.sleep(0.1)
    assert sum(len(n.frames) for n in nodes) == len(expected)  # nothing twice
    for user, node in where.items():
        want = [n.event for n in expected if n.user_id == user]
        assert node.events(f"{user}-conn") == want, user


async def test_ring_timeout_fires_once_even_if_the_arming_node_died(redis_url: str) -> None:
    a, b, c = (Node(redis_url, n) for n in "ABC")
    for node in (a, b, c):
        await node.store.start()
    try:
        await a.login("alice", "a1")
        await b.login("bob", "b1")
        await a.call("a1", "alice", ["bob"], timeout=0.3)
        await a.store.close()  # the node that armed the timer is gone

        async def poll(node: Node) -> None:
            for _ in range(100):
                await node.store.fire_timers(node.store.now())
                await asyncio.sleep(0.01)

        pollers = [asyncio.create_task(poll(n)) for n in (b, c, b, c)]
        await until(lambda: b.events("b1") == ["onCallReceived", "onCallCancelled"], "timeout")
        await asyncio.gather(*pollers)
        assert b.events("b1") == ["onCallReceived", "onCallCancelled"]
        assert await b.store.link.run(lambda r: r.zcard("t:timers")) == 0
        assert await b.store.link.run(lambda r: r.keys("t:call:*")) == []
    finally:
        for node in (b, c):
            await node.store.close()


async def test_kick_and_multi_device_across_nodes(nodes: list[Node]) -> None:
    a, b, c = nodes
    await a.login("bob", "a-bob")
    await b.login("bob", "b-bob")  # no multi-device: the older device is kicked on node A
    await until(lambda: a.closes("a-bob") == ["kicked"], "the kick on node A")
    assert a.events("a-bob") == ["kicked"]
    await b.login("carol", "b-carol", multi_device=True)
    await c.login("carol", "c-carol", multi_device=True)  # both stay
    await a.login("dave", "a-dave")
    call = await a.call("a-dave", "dave", ["carol"])
    await until(lambda: c.events("c-carol") == ["onCallReceived"], "carol rings on C")
    await until(lambda: b.events("b-carol") == ["onCallReceived"], "carol rings on B")
    await c.answer("c-carol", "carol", call.call_id)  # the first device to answer owns it
    await until(lambda: len(b.events("b-carol")) == 2, "B stops ringing")
    cancelled = json.loads([f.text for f in b.frames if f.conn == "b-carol"][-1] or "")
    assert cancelled["event"] == "onCallCancelled" and cancelled["payload"]["reason"] == 7
    with pytest.raises(CallStateError) as other:
        await b.answer("b-carol", "carol", call.call_id, "hangup")
    assert "another device" in other.value.message


async def test_held_device_is_buffered_and_resumed_on_another_node(nodes: list[Node]) -> None:
    a, b, c = nodes
    await a.login("alice", "a1")
    await b.login("bob", "b1")
    call = await a.call("a1", "alice", ["bob"])
    await b.answer("b1", "bob", call.call_id)
    sid = b.sids["b1"]

    def dropped(tx: Tx) -> None:  # bob's socket on B dropped without a close frame
        tx.carry(tx.sessions.socket_gone(tx.now, "b1", True, tx.now, tx.call_of, node=b.id))

    await b.store.apply(dropped, sessions=[sid])
    await a.answer("a1", "alice", call.call_id, "hangup")  # bob misses this while held
    got = await c.login("bob", "c1", resume=sid)  # he comes back on node C
    assert got.outcomes[0].resumed
    assert [json.loads(t)["event"] for t in got.outcomes[0].replay] == ["onUserLeave", "onCallEnd"]


async def test_frames_for_a_dead_node_wait_for_the_resume(nodes: list[Node]) -> None:
    """B dies (no beats, its entry gone) before any node took it over: bob's device counts as
    a dropped socket at the first frame for it, and his invitation waits for his resume."""
    a, b, c = nodes
    await a.login("alice", "a1")
    await b.login("bob", "b1")
    await stop_tasks(b.store._tasks)
    await a.store.link.run(lambda r: r.zrem("t:nodes", b.id))
    await a.call("a1", "alice", ["bob"])
    got = await c.login("bob", "c1", resume=b.sids["b1"])
    assert got.outcomes[0].resumed
    assert [json.loads(t)["event"] for t in got.outcomes[0].replay] == ["onCallReceived"]


async def test_a_dead_nodes_sockets_are_held_then_released(redis_url: str) -> None:
    a, b = Node(redis_url, "A", liveness_ttl=1.0), Node(redis_url, "B", liveness_ttl=1.0)
    for node in (a, b):
        await node.store.start()
    try:
        await a.login("alice", "a1")
        await b.login("bob", "b1")
        call = await a.call("a1", "alice", ["bob"])
        await b.answer("b1", "bob", call.call_id)
        await stop_tasks(b.store._tasks)  # B dies: no more beats, no clean leave
        await until(lambda: a.store.takeovers == [b.id], "A to take over dead node B", 10)
        doc = json.loads(await a.store.link.run(lambda r: r.get("t:user:bob")))
        assert doc["devices"][0]["conn"] is None  # held for a resume
        # had B only stalled, its next beat finds it was taken for dead (it closes its sockets)
        assert await b.store.liveness.beat() is False
        assert await b.store.liveness.beat() is True
        assert a.events("a1") == ["onUserJoin", "onCallBegin", "onUserAudioAvailable"]

        async def poll() -> None:
            deadline = time.monotonic() + 10
            while "onCallEnd" not in a.events("a1") and time.monotonic() < deadline:
                await a.store.fire_timers(a.store.now())
                await asyncio.sleep(0.01)

        await poll()  # the 2 s grace runs out: bob leaves, alice's call ends
        assert a.events("a1")[-2:] == ["onUserLeave", "onCallEnd"]
    finally:
        await a.store.close()
        await b.store.close()


async def test_redis_lost_gives_a_clear_error_and_the_node_reconnects(
    own_redis: RedisServer,
) -> None:
    node = Node(own_redis.url, "A")
    lost_state: list[bool] = []
    node.store.on_state_lost = lambda: lost_state.append(True)
    await node.store.start()
    try:
        await node.login("alice", "a1")
        own_redis.kill()
        with pytest.raises(StoreUnavailable) as lost:
            await node.login("bob", "a2")
        assert lost.value.code == ErrorCode.STORE_UNAVAILABLE == -1406
        assert f"127.0.0.1:{own_redis.port}" in lost.value.message
        assert "not applied" in lost.value.message
        assert await node.store.get_timer() is not None  # the timer loop keeps polling
        own_redis.start()  # an empty Redis (no persistence) on the same port
        await until(lambda: bool(lost_state), "the node to notice the lost state", 10)
        await node.login("alice", "a3")
        await node.login("bob", "a4")
        await node.call("a3", "alice", ["bob"])
        await until(lambda: node.events("a4") == ["onCallReceived"], "delivery after reconnect")
        assert node.store.link.up and node.store.link.losses == 1
    finally:
        await node.store.close()


def test_frames_are_plain_json_lists() -> None:
    """What travels on a node channel is [conn, text, close] per frame (docs/cluster.md)."""
    frame = Frame("A", "c1", p.Kicked().encode(), "kicked")
    assert json.loads(json.dumps([[frame.conn, frame.text, frame.close]])) == [
        ["c1", '{"v":1,"type":"kicked"}', "kicked"]
    ]


async def test_an_operation_is_two_round_trips_and_timers_are_read_once_per_poll(
    nodes: list[Node],
) -> None:
    """A request costs the read script and the commit script, by SHA-1 (no script text, no
    separate session lookup); the timer sets are read at most once per ``poll``, however
    many requests wake the timer loop, and a deadline this node committed counts at once."""
    a, b, _ = nodes

    async def calls(name: str) -> int:
        stats = await a.store.link.run(lambda r: r.info("commandstats"))
        return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))

    await a.login("alice", "a1")
    await b.login("bob", "b1")
    before = {n: await calls(n) for n in ("evalsha", "eval", "mget", "zrange")}
    await a.store.get_timer()  # fills this node's view of the timer sets
    call = await a.call("a1", "alice", ["bob"], timeout=0.02)
    deadline = call.members["bob"].deadline
    assert deadline is not None
    for _ in range(20):  # every request wakes the timer loop: no read per wake
        due = await a.store.get_timer()
        assert due is not None and due <= deadline
    # the session id is resolved inside the read script (no commit: nothing changes)
    await b.store.apply(lambda tx: None, sessions=[b.sids["b1"]], fire_due=False)
    after = {n: await calls(n) for n in before}
    assert after["evalsha"] - before["evalsha"] == 2 + 1  # the call (read + commit), b's read
    assert after["eval"] == before["eval"] and after["mget"] == before["mget"]
    assert after["zrange"] - before["zrange"] <= 2 * 2  # two sets a read; at most two reads
    await asyncio.sleep(0.3)
    await a.store.fire_timers(a.store.now())
    await until(lambda: b.events("b1")[-1:] == ["onCallCancelled"], "the ring timeout on B")


async def test_frames_for_this_node_reach_its_sockets_while_its_subscription_is_down(
    nodes: list[Node],
) -> None:
    """A PUBLISH that reaches no subscriber is lost (pub/sub keeps nothing): while a node's
    own subscription is reconnecting (Redis restarted), the frames its own commits make for
    its own sockets (replies, a local callee's invitation) would vanish. The commit tells
    which channels nobody heard; this node's frames are then handed over directly, once (the
    other tests' exact event lists show none is handed over twice while it is subscribed)."""
    a, b, _ = nodes
    await a.login("alice", "a1")
    await a.login("bob", "a2")
    await b.login("carol", "b1")
    await stop_tasks([a.store._tasks[0]])  # node A's frames task (RedisStateStore.start)
    call = await a.call("a1", "alice", ["bob", "carol"])
    assert a.events("a2") == ["onCallReceived"]  # handed over at the commit
    assert a.store.frames_delivered_locally == 1
    await until(lambda: b.events("b1") == ["onCallReceived"], "carol's invitation on node B")
    assert b.store.frames_delivered_locally == 0
    await a.answer("a2", "bob", call.call_id)
    assert a.events("a2")[:2] == ["onCallReceived", "onCallBegin"]
    assert a.events("a2").count("onCallBegin") == 1
    assert a.store.frames_delivered_locally == 2
