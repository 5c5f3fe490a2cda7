"""The state store interface, with the in-memory store: operations through a Tx, frames in
order to the sink, due timers first, a refusal that still sends what was due, held devices
buffered, and the timers of both rule books fired through the store."""

from __future__ import annotations

import asyncio
import json

import pytest

from callkit.signaling import protocol as p
from callkit.signaling.callstate import CallRegistry, CallStateError
from callkit.signaling.codes import ErrorCode
from callkit.signaling.records.tracker import Cause
from callkit.signaling.sessions import SessionTable
from callkit.signaling.store import Batch, Frame, MemoryStore, Tx


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make_store(**table: object) -> tuple[MemoryStore, Clock, list[Frame], list[list[Batch]]]:
    clock = Clock()
    store = MemoryStore(
        CallRegistry(new_call_id=lambda: "call1", new_room_id=lambda: 5),
        SessionTable(resume_grace=9.0, **table),  # type: ignore[arg-type]
        clock,
    )
    frames: list[Frame] = []
    batches: list[list[Batch]] = []
    store.set_sink(frames.extend)
    store.set_observer(lambda b: batches.append(list(b)))
    return store, clock, frames, batches


def events(frames: list[Frame], conn: str) -> list[str]:
    out = []
    for f in frames:
        if f.conn == conn and f.text is not None:
            msg = json.loads(f.text)
            out.append(msg.get("event") or msg["type"])
    return out


async def login(store: MemoryStore, user: str, conn: str, **kw: object) -> str:
    def op(tx: Tx) -> str:
        out = tx.sessions.login(tx.now, user, conn, tx.call_of, **kw)  # type: ignore[arg-type]
        tx.carry(out)
        assert out.device is not None
        return out.device.session_id

    return (await store.apply(op, users=[user])).result


async def test_a_call_through_the_store_sends_the_reply_then_the_events_in_order() -> None:
    store, _, frames, batches = make_store()
    alice = await login(store, "alice", "c1")
    await login(store, "bob", "c2")

    def call(tx: Tx) -> str:
        made, notifies = tx.registry.start_call(tx.now, "alice", ["bob"], 1)
        tx.sessions.took_call(alice, made.call_id)
        tx.post("", "c1", p.Reply(id=1, data={"callId": made.call_id}))
        tx.notify(notifies, "alice")
        return made.call_id

    applied = await store.apply(call, users=["alice", "bob"])
    assert applied.result == "call1" and "call1" in applied.calls
    assert events(frames, "c1") == ["ok"]
    assert events(frames, "c2") == ["onCallReceived"]
    received = json.loads(frames[-1].text or "")
    assert received["call"]["members"][0]["nickname"] == ""  # the snapshot carries profiles
    (batch,) = batches[-1]
    assert batch.notifies == applied.batches[0].notifies
    assert (batch.actor, batch.cause, list(batch.calls)) == ("alice", Cause.NORMAL, ["call1"])


async def test_due_timeouts_fire_first_and_still_go_out_when_the_operation_is_refused() -> None:
    store, clock, frames, _ = make_store()
    await login(store, "alice", "c1")
    await login(store, "bob", "c2")
    await store.apply(lambda tx: tx.notify(tx.registry.start_call(0, "alice", ["bob"], 1)[1]))
    assert await store.get_timer() == 30.0
    clock.t = 31.0
    frames.clear()

    def late_accept(tx: Tx) -> None:
        tx.notify(tx.registry.accept(tx.now, "bob", "call1"), "bob")

    with pytest.raises(CallStateError) as err:
        await store.apply(late_accept, calls=["call1"])
    assert err.value.code == ErrorCode.REQUEST_REFUSED
    assert events(frames, "c1") == ["onUserNoResponse", "onCallCancelled"]
    assert events(frames, "c2") == ["onCallCancelled"]


async def test_kick_closes_the_old_socket_after_its_notice() -> None:
    store, _, frames, _ = make_store()
    await login(store, "bob", "c1")
    frames.clear()
    applied = await store.apply(lambda tx: tx.carry(tx.sessions.login(0, "bob", "c2", tx.call_of)))
    assert frames == [Frame("", "c1", p.Kicked().encode(), "kicked")]
    assert [len(o.kicked) for o in applied.outcomes] == [1]


async def test_held_devices_are_buffered_and_the_grace_fires_through_the_store() -> None:
    store, clock, frames, _ = make_store(max_held_messages=2)
    alice = await login(store, "alice", "c1")
    await login(store, "bob", "c2")

    def call(tx: Tx) -> None:
        made, notifies = tx.registry.start_call(tx.now, "alice", ["bob"], 1)
        tx.sessions.took_call(alice, made.call_id)
        tx.notify(notifies, "alice")

    await store.apply(call)
    await store.apply(lambda tx: tx.carry(tx.sessions.socket_gone(0, "c1", True, 0, tx.call_of)))
    assert store.sessions.devices[alice].held
    frames.clear()
    relay = p.Relayed(call_id="call1", from_user="bob", kind="offer", data={})
    await store.apply(lambda tx: [tx.send(alice, relay) for _ in range(2)])
    assert frames == [] and len(store.sessions.devices[alice].outbox) == 2
    applied = await store.apply(lambda tx: tx.send(alice, relay))
    assert applied.overflowed == [alice]
    assert await store.get_timer() == 9.0
    clock.t = 9.0
    fired = await store.fire_timers(clock.t)
    assert [d.session_id for o in fired.outcomes for d in o.released] == [alice]
    assert events(frames, "c2") == ["onCallCancelled"]  # alice never came back: cancelled
    assert store.registry.is_idle()


class CountingStore(MemoryStore):
    """The in-memory store, counting operations and the keys each one named."""

    def __init__(self) -> None:
        super().__init__(sessions=SessionTable(resume_grace=9.0))
        self.keys: list[dict[str, list[object]]] = []
        self.life: list[str] = []

    async def start(self) -> None:
        self.life.append("start")

    async def close(self) -> None:
        self.life.append("close")

    async def apply(self, op, **keys):  # type: ignore[no-untyped-def,override]
        self.keys.append({k: list(v) for k, v in keys.items() if k != "fire_due"})
        return await super().apply(op, **keys)


async def test_the_server_changes_state_only_through_its_store() -> None:
    from callkit.signaling import SignalingServer

    from .conftest import SDK_APP_ID, SECRET
    from .test_server import login

    store = CountingStore()
    server = SignalingServer(SDK_APP_ID, SECRET, store=store)
    url = await server.start()
    assert store.life == ["start"]
    try:
        alice, bob = await login(url, "alice"), await login(url, "bob")
        assert server.sessions is store.sessions and server.registry is store.registry
        assert [k["users"] for k in store.keys] == [["alice"], ["bob"]]
        reply = await alice.request("call", callees=["bob"], mediaType=1)
        call_id = reply["data"]["call"]["callId"]
        assert store.keys[-1]["users"] == ["alice", "bob"]
        await bob.event("onCallReceived")
        await bob.request("accept", callId=call_id)
        assert store.keys[-1] == {"users": ["bob"], "calls": [call_id], "rooms": []}
        offer = {"type": "offer", "sdp": "v=0\r\n"}
        await alice.request("relay", callId=call_id, to="bob", kind="offer", data=offer)
        assert store.keys[-1] == {"users": ["alice", "bob"], "calls": [call_id]}
        await bob.close()
        for _ in range(50):
            if store.registry.call_of("bob") is None:
                break
            await asyncio.sleep(0.05)
        assert store.registry.call_of("bob") is None  # the clean close went through the store
        assert len(store.keys) == 6
        await alice.close()
    finally:
        await server.stop()
    assert server.idle() and store.life == ["start", "close"]
