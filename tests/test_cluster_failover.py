"""Nodes that die: real ``callkit serve`` processes (tests/cluster.py), one killed with SIGKILL
while engines given every node's URL are logged in there."""

from __future__ import annotations

import asyncio

import pytest

from callkit import CallEngine, CallMediaType
from callkit.media import ToneSource
from callkit.recorder import EventRecorder
from callkit.testing import wait_hears

from .cluster import Cluster
from .helpers import connect, engine_at, wait_until


async def test_killed_in_memory_node_forgets_the_call_and_engines_move_on() -> None:
    async with Cluster(nodes=2, redis=False) as cluster:
        alice, ra = await engine_at(cluster.urls, "alice")
        bob, rb = await engine_at(cluster.urls, "bob")
        try:
            assert alice.url == bob.url == cluster.nodes[0].url
            await alice.call("bob", CallMediaType.AUDIO)
            await rb.wait_for("onCallReceived")
            await cluster.kill(0)
            # node1 shares nothing with node0: the call is gone, as after the resume grace
            assert await ra.wait_for("onCallCancelled", timeout=10) == {"userId": "alice"}
            assert await rb.wait_for("onCallCancelled", timeout=10) == {"userId": "bob"}
            assert [e["code"] for e in ra.of("onError")] == [-1401]
            await wait_until(
                lambda: (
                    alice.url == bob.url == cluster.nodes[1].url
                    and alice._client is not None
                    and alice._client.connected
                    and bob._client is not None
                    and bob._client.connected
                ),
                "both logged in at node1",
            )
            # the killed node comes back on its port; the engines stay where they are and
            # a new call works at node1
            await cluster.restart(0)
            await alice.call("bob", CallMediaType.AUDIO)
            await rb.wait_for("onCallReceived", count=2)
            await alice.hangup()
            await rb.wait_for("onCallCancelled", count=2)
        finally:
            await alice.destroy()
            await bob.destroy()


async def test_a_node_that_cannot_start_says_why() -> None:
    cluster = Cluster(nodes=1, redis=False, extra=["--no-such-option"])
    with pytest.raises(RuntimeError) as info:
        await cluster.start()
    assert "did not come up" in str(info.value)
    assert "unrecognized arguments: --no-such-option" in str(info.value)
    assert not cluster.nodes[0].running and not cluster.dir.exists()


@pytest.mark.loopback
async def test_kill_9_of_a_redis_node_mid_call_loses_nothing() -> None:
    tones = {"alice": 440, "bob": 550, "carol": 660}
    async with Cluster(nodes=3, redis=True) as cluster:
        engines: dict[str, tuple[CallEngine, EventRecorder]] = {}
        try:
            for i, user in enumerate(tones):  # alice at node0, bob at node1, carol at node2
                engines[user] = await engine_at(
                    cluster.urls_from(i), user, audio_source=ToneSource(tones[user], -20)
                )
            (alice, ra), (bob, rb), (carol, rc) = engines.values()
            assert [e.url for e, _ in engines.values()] == cluster.urls

            # a 1v1 call across nodes; kill alice's node
            await connect(alice, ra, bob, rb)
            await wait_hears(alice, "bob", -20)
            await wait_hears(bob, "alice", -20)
            seen_by_bob = rb.names()
            await cluster.kill(0)
            await assert_moved_and_resumed(alice, ra, cluster.nodes[1].url)
            await wait_hears(bob, "alice", -20)  # media never depended on the dead node
            await wait_hears(alice, "bob", -20)
            # past the resume grace (9 s from the kill): still in the call, nobody told anything
            await asyncio.sleep(10.0)
            assert rb.names() == seen_by_bob, rb.names()[len(seen_by_bob) :]
            assert [n for n in ra.names() if n != "onError"][-1] != "onCallEnd"
            assert alice.call_state.value == bob.call_state.value == "connected"

            # the killed node comes back: nothing lost, the call ends normally
            await cluster.restart(0)
            await bob.hangup()
            end = await ra.wait_for("onCallEnd", timeout=10)
            assert end["totalTime"] >= 10
            await rb.wait_for("onCallEnd", timeout=10)
            assert ra.names().count("onCallEnd") == rb.names().count("onCallEnd") == 1

            # a group call over the three nodes (alice now at node1); kill carol's node2
            ra.clear()
            rb.clear()
            await alice.group_call(["bob", "carol"], "g1", CallMediaType.AUDIO)
            for engine, rec in ((bob, rb), (carol, rc)):
                await rec.wait_for("onCallReceived")
                await engine.accept()
            for listener, speaker in (
                (alice, "carol"), (bob, "carol"), (carol, "alice"), (carol, "bob")
            ):  # fmt: skip
                await wait_hears(listener, speaker, -20)
            seen = {"alice": ra.names(), "bob": rb.names()}
            await cluster.kill(2)
            await assert_moved_and_resumed(carol, rc, cluster.nodes[0].url)
            for listener, speaker in ((alice, "carol"), (bob, "carol"), (carol, "bob")):
                await wait_hears(listener, speaker, -20)
            await asyncio.sleep(2.0)
            assert {"alice": ra.names(), "bob": rb.names()} == seen
            assert carol.call_state.value == "connected"
            await carol.hangup()
            await ra.wait_for("onUserLeave", lambda p: p["userId"] == "carol", timeout=10)
            await rb.wait_for("onUserLeave", lambda p: p["userId"] == "carol", timeout=10)
            await alice.hangup()
            await rb.wait_for("onCallEnd", timeout=10)
        finally:
            for engine, _ in engines.values():
                await engine.destroy()


async def assert_moved_and_resumed(engine: CallEngine, rec: EventRecorder, url: str) -> None:
    """``engine`` lost its node: one onError -1401, then it resumed at ``url`` (the next)."""
    client = engine._client
    assert client is not None
    await wait_until(lambda: client.reconnects == 1 and client.connected, "a resume", 9.0)
    assert engine.url == url
    assert [e["code"] for e in rec.of("onError")][-1:] == [-1401]
    assert engine.call_state.value == "connected"
