"""Engines ride out server restarts and long outages (issue 9, "also seen"): one onError per
drop, onCallEnd when the server no longer knows the call, reconnecting for as long as the
engine is not destroyed (not only for the resume grace)."""

from __future__ import annotations

import asyncio

import pytest

from callkit import CallMediaType
from callkit.media import ToneSource
from callkit.signaling import ServerConfig, SignalingServer

from .conftest import SDK_APP_ID, SECRET
from .test_reconnect import connected_call, engine_via

pytestmark = pytest.mark.loopback


async def wait_online(server: SignalingServer, users: set[str], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not users <= set(server.online_users()) and loop.time() < deadline:
        await asyncio.sleep(0.1)
    assert users <= set(server.online_users()), server.online_users()


async def test_restart_ends_the_call_with_oncallend_and_long_outages_are_ridden_out() -> None:
    server = SignalingServer(SDK_APP_ID, SECRET)
    url = await server.start("127.0.0.1", 0)
    port = server.port or 0
    alice, ra = await engine_via(url, "alice", audio_source=ToneSource(440, -20))
    bob, rb = await engine_via(url, "bob", audio_source=ToneSource(660, -20))
    try:
        await connected_call(alice, ra, bob, rb)
        # killed and restarted after 2 s: its state is gone
        await server.stop()
        await asyncio.sleep(2.0)
        # the restarted service announces a 2 s resume grace (login reply): the long outage
        # below outlasts it (and the 2 s backoff cap) in 5 s rather than 12 s with the 9 s one
        short = ServerConfig(resume_grace=2.0)
        server = SignalingServer(SDK_APP_ID, SECRET, short)
        await server.start("127.0.0.1", port)
        for rec in (ra, rb):
            end = await rec.wait_for("onCallEnd", timeout=10)
            assert set(end) == {"roomID", "callMediaType", "callRole", "totalTime"}
            assert [e["code"] for e in rec.of("onError")] == [-1401]  # once for the drop
        await wait_online(server, {"alice", "bob"}, 10)
        assert alice.call_state.value == bob.call_state.value == "idle"
        # down for 5 s, past the grace: the engines keep trying and come back by themselves
        for engine in (alice, bob):
            assert engine._client is not None and engine._client.resume_grace == 2.0
        await server.stop()
        await asyncio.sleep(5.0)
        server = SignalingServer(SDK_APP_ID, SECRET, short)
        await server.start("127.0.0.1", port)
        await wait_online(server, {"alice", "bob"}, 10)
        for engine, rec in ((alice, ra), (bob, rb)):
            assert engine._client is not None and engine._client.reconnects == 2
            assert [e["code"] for e in rec.of("onError")] == [-1401, -1401]  # one per drop
        await alice.call("bob", CallMediaType.AUDIO)
        await rb.wait_for("onCallReceived", count=2)
        await bob.accept()
        await ra.wait_for("onCallBegin", count=2)
        await alice.hangup()
        await rb.wait_for("onCallEnd", count=2)
    finally:
        await asyncio.gather(alice.destroy(), bob.destroy())
        await server.stop()
