"""A request stuck on a slow store (Redis under load) does not stop the socket's reader: its
pings and pongs are still read, so neither the service nor the client drops the link; and a
client that piles requests behind the stuck one makes the service hold at most 4 of them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from callkit.client import SignalingClient
from callkit.signaling import ServerConfig, SignalingServer
from callkit.signaling import protocol as p
from callkit.signaling.callstate import CallStateError
from callkit.signaling.codes import ErrorCode
from callkit.signaling.requestqueue import RequestQueue
from callkit.signaling.store import Applied, MemoryStore, Tx

from .conftest import SDK_APP_ID, SECRET, sig
from .test_server import login


class StallingStore(MemoryStore):
    """The in-process store, except that the next ``stall`` applies first wait ``seconds``
    and the next ``unreachable`` timer firings fail as if Redis were down."""

    def __init__(self) -> None:
        super().__init__()
        self.stall = 0
        self.seconds = 0.0
        self.applies = 0
        self.unreachable = 0
        self.firings = 0

    async def fire_timers(self, now: float) -> Applied[None]:
        self.firings += 1
        if self.unreachable > 0:
            self.unreachable -= 1
            raise CallStateError(ErrorCode.STORE_UNAVAILABLE, "the store is unreachable")
        return await super().fire_timers(now)

    async def apply(self, op: Callable[[Tx], Any], **keys: Any) -> Any:
        self.applies += 1
        if self.stall > 0:
            self.stall -= 1
            await asyncio.sleep(self.seconds)
        return await super().apply(op, **keys)


async def stalling_server(config: ServerConfig | None = None) -> SignalingServer:
    server = SignalingServer(SDK_APP_ID, SECRET, config, store=StallingStore())
    await server.start("127.0.0.1", 0)
    return server


def store_of(server: SignalingServer) -> StallingStore:
    assert isinstance(server.store, StallingStore)
    return server.store


async def linked(url: str, user: str, lost: list[str], pushes: list[p.Message]) -> SignalingClient:
    client = SignalingClient(url, pushes.append, lost.append, on_lost=lost.append)
    await client.connect(sdk_app_id=SDK_APP_ID, user_id=user, user_sig=sig(user))
    return client


async def test_a_request_stalled_7_s_on_the_store_keeps_its_socket() -> None:
    # defaults: the service drops a socket silent for 5 s, the client a service silent for 6 s
    server = await stalling_server()
    lost: list[str] = []
    pushes: list[p.Message] = []
    alice = await linked(server.url or "", "alice", lost, [])
    bob = await linked(server.url or "", "bob", lost, pushes)
    try:
        (session,) = [s for s in server._sockets.values() if s.user_id == "alice"]
        store_of(server).stall, store_of(server).seconds = 1, 7.0
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        data = await alice.request(p.Call, callees=["bob"], media_type=1)
        assert loop.time() - t0 >= 7.0
        assert data["call"]["callId"]
        for _ in range(100):
            if pushes:
                break
            await asyncio.sleep(0.02)
        assert [(m.event, m.call_id) for m in pushes if isinstance(m, p.Event)] == [
            ("onCallReceived", data["call"]["callId"])
        ]
        # its pings and pongs were read while the request waited
        assert session.last_seen > t0 + 3.0
        assert lost == [] and alice.reconnects == bob.reconnects == 0 and alice.connected
        assert server.stats.silent_disconnects == 0 and session in server._sockets.values()
    finally:
        await alice.close()
        await bob.close()
        await server.stop()


async def test_a_flood_behind_a_stalled_request_is_not_read_and_grows_nothing() -> None:
    """Requests piled behind one stalled on the store: at most 4 are held, then the socket
    is not read (aiohttp pauses the transport: TCP pushes back); it is not dropped as
    silent meanwhile, and afterwards every request runs, in order."""
    server = await stalling_server(ServerConfig(heartbeat=0.5, liveness_timeout=1.0))
    alice = await login(server.url or "", "alice")
    try:
        store = store_of(server)
        applies = store.applies
        store.stall, store.seconds = 1, 2.5
        (session,) = server._sockets.values()
        assert session.requests is not None
        pad = "x" * 60_000  # unknown fields are ignored: 60 frames of 60 kB, 3.6 MB
        frames = [json.dumps({"v": 1, "type": "ping", "id": i, "pad": pad}) for i in range(1, 61)]

        async def flood() -> None:
            for frame in frames:
                await alice.send_raw(frame)

        sender = asyncio.ensure_future(flood())
        await asyncio.sleep(1.5)  # well into the stall
        assert session.requests.in_flight == 4 and session.requests.full
        assert not session.transport.is_reading()  # the rest waits in the kernel
        assert store.applies - applies == 1
        order = []
        while len(order) < len(frames):
            frame = await alice.recv(timeout=10.0)
            assert frame["type"] == "ok", frame
            order.append(frame["id"])
            assert session.requests.in_flight <= 4
        await asyncio.wait_for(sender, 5)
        assert order == list(range(1, 61))
        assert store.applies - applies == 60
        assert server.stats.silent_disconnects == 0 and session in server._sockets.values()
        assert (await alice.request("ping"))["type"] == "ok"
    finally:
        await alice.close()
        await server.stop()


async def test_requests_run_in_order_and_a_closed_socket_finishes_its_own() -> None:
    """A hangup sent right after a stalled call, then the socket closed: both still apply, in
    order (the call exists when the hangup runs), and the user is gone afterwards."""
    server = await stalling_server()
    alice = await login(server.url or "", "alice")
    bob = await login(server.url or "", "bob")
    try:
        store_of(server).stall, store_of(server).seconds = 1, 1.0
        await alice.send_raw(json.dumps({"v": 1, "type": "call", "id": 1, "callees": ["bob"],
                                         "mediaType": 1}))  # fmt: skip
        await alice.send_raw(json.dumps({"v": 1, "type": "hangup", "id": 2, "callId": "x"}))
        first = await alice.recv(timeout=5.0)
        assert first["id"] == 1 and first["type"] == "ok", first
        second = await alice.recv(timeout=5.0)
        assert second["id"] == 2 and second["type"] == "error"  # "x" is no call of hers
        call_id = first["data"]["call"]["callId"]
        store_of(server).stall = 1
        await alice.send_raw(json.dumps({"v": 1, "type": "hangup", "id": 3, "callId": call_id}))
        await alice.close()  # while the hangup waits on the store
        ended = await asyncio.wait_for(bob.event("onCallCancelled"), 5)
        assert ended["callId"] == call_id
        assert server.registry.calls == {}
    finally:
        await bob.close()
        await server.stop()


async def test_the_request_queue_bound_and_order() -> None:
    seen: list[int] = []
    gate = asyncio.Event()

    async def handle(n: int) -> None:
        await gate.wait()
        seen.append(n)
        if n == 2:
            raise RuntimeError("a handler bug does not stop the queue")

    queue: RequestQueue[int] = RequestQueue(handle, 3)
    for n in (1, 2, 3):
        await queue.put(n)
    assert queue.in_flight == 3 and queue.full
    fourth = asyncio.ensure_future(queue.put(4))
    await asyncio.sleep(0.05)
    assert not fourth.done() and queue.in_flight == 3  # waits for room, holds nothing more
    gate.set()
    await asyncio.wait_for(fourth, 2)
    await asyncio.wait_for(queue.drain(), 2)
    assert seen == [1, 2, 3, 4] and queue.in_flight == 0 and not queue.full
    await queue.put(5)
    await asyncio.wait_for(queue.drain(), 2)
    assert seen == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="limit must be >= 1, got 0"):
        RequestQueue(handle, 0)
    with pytest.raises(ValueError, match="max_requests_in_flight must be >= 1, got 0"):
        ServerConfig(max_requests_in_flight=0)


async def test_timers_the_store_cannot_fire_are_retried_not_counted_as_bugs() -> None:
    """A ring timeout due while the store is unreachable fires once it is back; the failed
    attempts are no internal errors (nothing logged at ERROR) and do not spin."""
    server = await stalling_server()
    alice = await login(server.url or "", "alice")
    bob = await login(server.url or "", "bob")
    try:
        store = store_of(server)
        store.unreachable = 3
        reply = await alice.request("call", callees=["bob"], mediaType=1, timeout=0.3)
        assert reply["type"] == "ok"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while server.registry.calls and loop.time() - t0 < 5:
            await asyncio.sleep(0.05)
        assert server.registry.calls == {}  # bob never answered: the timeout fired
        assert store.unreachable == 0 and 4 <= store.firings <= 10
        assert server.stats.internal_errors == 0
    finally:
        await alice.close()
        await bob.close()
        await server.stop()
