"""destroy() is idempotent and leaves no task, socket or peer connection behind."""

from __future__ import annotations

import asyncio
import os

import pytest

from callkit import CallEngine, CallError, CallMediaType
from callkit.media import TestPatternSource, ToneSource
from callkit.recorder import EventRecorder
from callkit.signaling import SignalingServer

from .conftest import LOOPBACK, SDK_APP_ID, sig

pytestmark = pytest.mark.loopback


def open_sockets() -> set[str]:
    """This process's socket file descriptors (Linux: /proc/self/fd -> 'socket:[inode]')."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


async def settle(check, what: str, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until ``check()`` is true; fail naming ``what`` and the last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if value is True:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{what} after {timeout} s: {value}")
        await asyncio.sleep(0.05)


async def test_destroy_mid_call_is_idempotent_and_leaves_nothing_running(
    server: SignalingServer,
) -> None:
    await asyncio.sleep(0.1)
    tasks_before = set(asyncio.all_tasks())
    sockets_before = open_sockets()
    engines: list[CallEngine] = []
    recs: list[EventRecorder] = []
    for user, freq in (("alice", 440), ("bob", 660)):
        engine = CallEngine(
            server.url or "",
            ice_addresses=LOOPBACK,
            audio_source=ToneSource(freq, -20),
            video_source=TestPatternSource(160, 120, 15),
        )
        recs.append(EventRecorder(engine, user))
        await engine.init(SDK_APP_ID, user, sig(user))
        engines.append(engine)
    alice, bob = engines
    ra, rb = recs
    await alice.call("bob", CallMediaType.VIDEO)
    await rb.wait_for("onCallReceived")
    await bob.accept()
    await ra.wait_for(
        "onUserVoiceVolumeChanged", lambda p: p["volumeMap"].get("bob", 0) > 0, timeout=10
    )
    assert list(alice.peers) == ["bob"] and list(bob.peers) == ["alice"]
    pcs = [alice.peers["bob"].pc, bob.peers["alice"].pc]
    assert len(open_sockets() - sockets_before) >= 4  # 2 websockets + UDP for media
    assert set(asyncio.all_tasks()) - tasks_before

    # destroy mid-call: the other side sees the leave; twice, and concurrently, is harmless
    await asyncio.gather(alice.destroy(), alice.destroy())
    await alice.destroy()
    await rb.wait_for("onCallEnd")
    assert rb.names()[-2:] == ["onUserLeave", "onCallEnd"]
    assert alice.peers == {} and alice._client is None and alice.call_state.value == "idle"
    with pytest.raises(CallError) as err:
        await alice.call("bob", CallMediaType.AUDIO)
    assert err.value.code == -1201
    await bob.destroy()
    await bob.destroy()
    assert bob.peers == {} and bob._client is None
    assert all(pc.connectionState == "closed" for pc in pcs)
    await settle(lambda: server.online_users() == [] or server.online_users(), "users still online")

    def leftovers() -> bool | list[str]:
        left = [
            t
            for t in asyncio.all_tasks() - tasks_before
            if not t.done() and t is not asyncio.current_task()
        ]
        return True if not left else [repr(t.get_coro()) for t in left]

    await settle(leftovers, "tasks still running")
    await settle(
        lambda: open_sockets() <= sockets_before or sorted(open_sockets() - sockets_before),
        "sockets still open",
    )
    assert server.idle()
    assert ra.of("onError") == [] and rb.of("onError") == []


async def test_destroy_while_signaling_is_down_is_quick(server: SignalingServer) -> None:
    """A dead link does not make destroy wait for a hangup reply."""
    tasks_before = set(asyncio.all_tasks())
    engine = CallEngine(server.url or "", ice_addresses=LOOPBACK)
    rec = EventRecorder(engine, "carol")
    await engine.init(SDK_APP_ID, "carol", sig("carol"))
    other = CallEngine(server.url or "", ice_addresses=LOOPBACK)
    rec_other = EventRecorder(other, "dave")
    await other.init(SDK_APP_ID, "dave", sig("dave"))
    await engine.call("dave", CallMediaType.AUDIO)
    await rec_other.wait_for("onCallReceived")
    await other.accept()
    await rec.wait_for("onCallBegin")
    client = engine._client
    assert client is not None and client._ws is not None
    transport = client._ws._response.connection.transport  # type: ignore[union-attr]
    assert transport is not None
    transport.abort()  # the link drops; the engine starts reconnecting
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await engine.destroy()
    assert loop.time() - start < 3
    await other.destroy()
    left = [
        t
        for t in asyncio.all_tasks() - tasks_before
        if not t.done() and t is not asyncio.current_task()
    ]
    for _ in range(100):
        if not left:
            break
        await asyncio.sleep(0.05)
        left = [t for t in left if not t.done()]
    assert not left, left
