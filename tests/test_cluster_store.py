"""The Redis call store against a real redis-server: several links in one test act as nodes.

Atomic per-call updates across nodes, messages published inside the commit (in commit
order, to the node hosting each session, or buffered for a held one), a ringing timeout
that fires once across nodes even when the arming node is gone, node liveness, and a Redis
that dies and comes back (a clear -1406 error, then the nodes reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from callkit.signaling.callstate import Call, CallRegistry, CallStateError, Notify
from callkit.signaling.cluster import (
    Keys,
    NodeLiveness,
    RedisCallStore,
    RedisLink,
    SharedTimers,
    StoreUnavailable,
)
from callkit.signaling.cluster.devices import Device
from callkit.signaling.codes import ErrorCode

from .redis_server import RedisServer

KEYS = Keys("t")


def render(n: Notify, call: Call | None, profiles: dict[str, dict[str, str]]) -> str:
    return json.dumps({"event": n.event, "user": n.user_id, "payload": n.payload})


class Node:
    """One "node": its own Redis link, store, and what its channel received."""

    def __init__(self, url: str, node_id: str) -> None:
        self.id = node_id
        self.link = RedisLink(url, op_timeout=0.5)
        self.store = RedisCallStore(self.link, KEYS, max_outbox=4)
        self.got: list[dict[str, Any]] = []
        self.reconnects = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        ready = asyncio.Event()
        self._task = asyncio.create_task(
            self.link.subscribe(
                KEYS.node_channel(self.id), self._on, self._reconnected, ready=ready
            )
        )
        await asyncio.wait_for(ready.wait(), 5)
        await self.link.run(lambda r: r.zadd(KEYS.nodes, {self.id: time.time() + 60}))

    async def _on(self, text: str) -> None:
        env = json.loads(text)
        self.got.append({"session": env["s"], **json.loads(env["t"])})

    async def _reconnected(self) -> None:
        self.reconnects += 1

    async def login(self, user: str, session: str, held: bool = False) -> None:
        rec = Device(self.id, held=held).to_json()
        await self.link.run(lambda r: r.hset(KEYS.devices(user), session, rec))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.link.close()

    def events(self, user: str) -> list[str]:
        return [m["event"] for m in self.got if m["user"] == user]


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
        await node.start()
    yield made
    for node in made:
        await node.stop()


def call_op(caller: str, callees: list[str], now: float, timeout: float = 30.0) -> Any:
    return lambda tx: tx.registry.start_call(now, caller, callees, 1, timeout=timeout)


def test_call_round_trips_through_json() -> None:
    reg = CallRegistry()
    call, _ = reg.start_call(1.0, "a", ["b", "c"], 2, group_id="g", timeout=5, user_data="x")
    reg.accept(2.0, "b", call.call_id)
    reg.set_device(3.0, "a", call.call_id, audio=False)
    doc = json.loads(json.dumps(call.to_json()))
    again = Call.from_json(doc)
    assert again == call and list(again.members) == list(call.members)
    other = CallRegistry()
    other.load([again])
    assert other.call_of("c") is again and other.get_timer() == 6.0
    assert [n.event for n in other.handle_timer(6.0)][:2] == ["onCallCancelled", "onUserNoResponse"]


async def test_a_call_across_nodes_reaches_each_user_on_its_node(nodes: list[Node]) -> None:
    a, b, _ = nodes
    await a.login("alice", "s-alice")
    await b.login("bob", "s-bob")
    started = await a.store.apply(
        100.0, call_op("alice", ["bob"], 100.0), render, users=["alice", "bob"]
    )
    call_id = started.result.call_id
    await until(lambda: b.events("bob") == ["onCallReceived"], "bob's invitation on node B")
    await b.store.apply(
        101.0, lambda tx: (None, tx.registry.accept(101.0, "bob", call_id)), render, users=["bob"]
    )
    await until(lambda: "onUserAudioAvailable" in a.events("alice"), "alice's events on A")
    assert a.events("alice") == ["onUserJoin", "onCallBegin", "onUserAudioAvailable"]
    await until(lambda: len(b.events("bob")) == 4, "bob's events on B")
    assert b.events("bob") == [
        "onCallReceived",
        "onCallBegin",
        "onUserJoin",
        "onUserAudioAvailable",
    ]
    assert all(m["session"] == "s-alice" for m in a.got)
    # a request from a user who is not a member is refused and changes nothing
    with pytest.raises(CallStateError) as refused:
        await a.store.apply(
            102.0, lambda tx: (None, tx.registry.hangup(102.0, "mallory", call_id)), render,
            users=["mallory"], calls=[call_id],
        )  # fmt: skip
    assert refused.value.code == ErrorCode.REQUEST_REFUSED
    await b.store.apply(
        103.0, lambda tx: (None, tx.registry.hangup(103.0, "bob", call_id)), render, users=["bob"]
    )
    await until(lambda: a.events("alice")[-1:] == ["onCallEnd"], "alice's onCallEnd")
    left = await a.link.run(lambda r: r.keys("t:*"))
    assert sorted(left) == ["t:dev:alice", "t:dev:bob", "t:nodes"]  # no call, index or timer


async def test_updates_to_one_call_are_atomic_across_nodes(nodes: list[Node]) -> None:
    """Ten callers on three nodes call one callee at once: one rings, nine get busy; then
    accept and cancel race from two nodes: exactly one wins."""
    for i, node in enumerate(nodes):
        await node.login(f"u{i}", f"s{i}")
    callers = [f"c{i}" for i in range(10)]
    results = await asyncio.gather(
        *(
            nodes[i % 3].store.apply(
                10.0, call_op(c, ["callee"], 10.0), render, users=[c, "callee"]
            )
            for i, c in enumerate(callers)
        )
    )
    rang = [r for r in results if any(n.event == "onCallReceived" for n in r.notifies)]
    busy = [r for r in results if any(n.event == "onUserLineBusy" for n in r.notifies)]
    assert len(rang) == 1 and len(busy) == 9
    assert await nodes[0].link.run(lambda r: r.keys("t:call:*")) == [
        f"t:call:{rang[0].result.call_id}"
    ]
    assert sum(n.store.conflicts for n in nodes) >= 1  # the races were real
    call_id = rang[0].result.call_id
    caller = rang[0].result.caller_id

    async def attempt(node: Node, op: Any) -> str:
        try:
            await node.store.apply(11.0, op, render, users=["callee", caller])
            return "ok"
        except CallStateError as exc:
            return f"refused {int(exc.code)}"

    outcome = await asyncio.gather(
        attempt(nodes[1], lambda tx: (None, tx.registry.accept(11.0, "callee", call_id))),
        attempt(nodes[2], lambda tx: (None, tx.registry.hangup(11.0, caller, call_id))),
    )
    assert sorted(outcome)[0] == "ok"
    doc = await nodes[0].link.run(lambda r: r.get(f"t:call:{call_id}"))
    if outcome == ["ok", "ok"]:  # accept first, then the caller left the connected call
        assert doc is None
    else:
        assert outcome.count("ok") == 1


async def test_messages_of_one_call_arrive_in_commit_order(nodes: list[Node]) -> None:
    """A group call over three nodes: every member gets every event once, in the order of
    a single registry that ran the same operations."""
    a, b, c = nodes
    users = {"g0": a, "g1": b, "g2": c, "g3": a, "g4": b}
    for user, node in users.items():
        await node.login(user, f"s-{user}")
    local = CallRegistry(new_room_id=lambda: 77, new_call_id=lambda: "call-1")
    ops: list[tuple[Node, Any, list[str]]] = [
        (a, lambda reg: reg.start_call(1.0, "g0", ["g1", "g2", "g3", "g4"], 1, group_id="grp", room_id=77), ["g0", "g1", "g2", "g3", "g4"]),  # noqa: E501
        (b, lambda reg: (None, reg.accept(2.0, "g1", "call-1")), ["g1"]),
        (c, lambda reg: (None, reg.accept(3.0, "g2", "call-1")), ["g2"]),
        (a, lambda reg: (None, reg.reject(4.0, "g3", "call-1")), ["g3"]),
        (b, lambda reg: (None, reg.set_device(5.0, "g1", "call-1", audio=False)), ["g1"]),
        (c, lambda reg: (None, reg.accept(6.0, "g4", "call-1")), ["g4"]),
        (a, lambda reg: (None, reg.hangup(7.0, "g0", "call-1")), ["g0"]),
        (b, lambda reg: (None, reg.hangup(8.0, "g1", "call-1")), ["g1"]),
    ]  # fmt: skip
    expected: list[Notify] = []
    for _, op, _ in ops:
        _, notifies = op(local)
        expected += notifies
    for node in nodes:
        node.store.registry_factory = lambda: CallRegistry(new_call_id=lambda: "call-1")
    for step, (node, op, scope) in enumerate(ops):
        await node.store.apply(step + 1.0, lambda tx, op=op: op(tx.registry), render, users=scope)
    total = len(expected)
    await until(lambda: sum(len(n.got) for n in nodes) == total, f"{total} messages")
    for user, node in users.items():
        want = [(n.event, n.payload) for n in expected if n.user_id == user]
        got = [(m["event"], m["payload"]) for m in node.got if m["user"] == user]
        for (ev, pl), (gev, gpl) in zip(want, got, strict=True):
            assert ev == gev
            assert {k: v for k, v in pl.items() if k != "roomID"} == {
                k: v for k, v in gpl.items() if k != "roomID"
            }


async def test_ring_timeout_fires_once_across_nodes_even_if_the_arming_node_died(
    redis_url: str,
) -> None:
    a, b, c = (Node(redis_url, n) for n in "ABC")
    for node in (a, b, c):
        await node.start()
    try:
        await b.login("bob", "s-bob")
        await a.login("alice", "s-alice")
        now = time.time()
        await a.store.apply(
            now, call_op("alice", ["bob"], now, timeout=0.3), render, users=["alice", "bob"]
        )
        await a.stop()  # the node that armed the timer is gone
        await b.link.run(lambda r: r.hset(KEYS.devices("alice"), "s-alice", Device("C").to_json()))
        fired: list[str] = []

        def fire_on(node: Node) -> Any:
            async def fire(call_id: str, when: float) -> None:
                got = await node.store.apply(when, lambda tx: (None, []), render, calls=[call_id])
                fired.extend(f"{node.id}:{n.event}" for n in got.notifies)
                if call_id not in got.calls:
                    await timers.drop_if_gone(call_id, KEYS.call(call_id))

            return fire

        timers = SharedTimers(b.link, KEYS.timers, poll=0.02)
        pollers = [
            asyncio.create_task(
                SharedTimers(n.link, KEYS.timers, poll=0.02).run(time.time, fire_on(n))
            )
            for n in (b, c, b, c)
        ]
        await until(lambda: len(b.events("bob")) == 2 and len(c.events("alice")) == 2, "timeout")
        await asyncio.sleep(0.2)  # any second firing would show up by now
        for task in pollers:
            task.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
        assert b.events("bob") == ["onCallReceived", "onCallCancelled"]
        assert c.events("alice") == ["onUserNoResponse", "onCallCancelled"]
        assert sorted(e.split(":")[1] for e in fired) == [
            "onCallCancelled", "onCallCancelled", "onUserNoResponse",
        ]  # fmt: skip
        assert await b.link.run(lambda r: r.zcard(KEYS.timers)) == 0
    finally:
        for node in (b, c):
            await node.stop()


async def test_held_session_messages_are_buffered_and_bounded(nodes: list[Node]) -> None:
    a, b, _ = nodes
    await a.login("alice", "s-alice")
    await b.login("bob", "s-bob", held=True)  # bob's socket dropped; he may resume anywhere
    got = await a.store.apply(1.0, call_op("alice", ["bob"], 1.0), render, users=["alice", "bob"])
    call_id = got.result.call_id
    await a.store.apply(
        2.0, lambda tx: (None, tx.registry.accept(2.0, "bob", call_id)), render, users=["bob"]
    )
    box = await a.link.run(lambda r: r.lrange(KEYS.outbox("s-bob"), 0, -1))
    assert [json.loads(t)["event"] for t in box] == [
        "onCallReceived", "onCallBegin", "onUserJoin", "onUserAudioAvailable",
    ]  # fmt: skip
    assert not b.got
    # one more than max_outbox (4): the store reports the overflow; the node releases bob
    more = await a.store.apply(
        3.0, lambda tx: (None, tx.registry.hangup(3.0, "alice", call_id)), render, users=["alice"]
    )
    assert more.overflowed == [("bob", "s-bob")]


async def test_a_dead_nodes_sessions_are_buffered_not_lost(nodes: list[Node]) -> None:
    a, b, _ = nodes
    await a.login("alice", "s-alice")
    await b.login("bob", "s-bob")
    await b.link.run(lambda r: r.zadd(KEYS.nodes, {"B": time.time() - 1}))  # B lapsed
    await a.store.apply(1.0, call_op("alice", ["bob"], 1.0), render, users=["alice", "bob"])
    assert await a.link.run(lambda r: r.llen(KEYS.outbox("s-bob"))) == 1
    await asyncio.sleep(0.1)
    assert not b.got


async def test_node_liveness_and_one_claim_per_dead_node(redis_url: str) -> None:
    links = [RedisLink(redis_url) for _ in range(3)]
    clock = [1000.0]
    live = [
        NodeLiveness(link, KEYS, f"n{i}", ttl=3.0, wall_clock=lambda: clock[0])
        for i, link in enumerate(links)
    ]
    try:
        for node in live:
            await node.beat()
        assert await live[0].alive() == {"n0", "n1", "n2"}
        clock[0] += 2.0
        await live[0].beat()
        await live[1].beat()
        clock[0] += 2.0  # n2 last beat 4 s ago with a 3 s ttl
        assert await live[0].alive() == {"n0", "n1"}
        claims = await asyncio.gather(live[0].claim_dead(), live[1].claim_dead())
        assert sorted(c[0][0] for c in claims if c) == ["n2"] and sum(map(len, claims)) == 1
        assert claims[0] + claims[1] == [("n2", 1003.0)]
    finally:
        for link in links:
            await link.close()


async def test_redis_lost_gives_a_clear_error_and_the_node_reconnects(
    own_redis: RedisServer,
) -> None:
    node = Node(own_redis.url, "A")
    await node.start()
    try:
        await node.login("alice", "s-alice")
        await node.login("bob", "s-bob")
        own_redis.kill()
        with pytest.raises(StoreUnavailable) as lost:
            await node.store.apply(1.0, call_op("alice", ["bob"], 1.0), render, users=["alice"])
        assert lost.value.code == ErrorCode.STORE_UNAVAILABLE == -1406
        assert f"127.0.0.1:{own_redis.port}" in lost.value.message
        assert "not applied" in lost.value.message
        assert not node.link.up and node.link.losses == 1
        own_redis.start()  # an empty Redis (no persistence) on the same port
        await until(lambda: node.reconnects == 1, "the subscription to come back", 10)
        await node.link.run(lambda r: r.zadd(KEYS.nodes, {"A": time.time() + 60}))
        await node.login("alice", "s-alice")
        await node.login("bob", "s-bob")
        await node.store.apply(2.0, call_op("alice", ["bob"], 2.0), render, users=["alice", "bob"])
        await until(lambda: node.events("bob") == ["onCallReceived"], "delivery after reconnect")
        assert node.link.up
    finally:
        await node.stop()
