"""Nodes that die: real ``callkit serve`` processes (tests/cluster.py), one killed with SIGKILL
while engines given every node's URL are logged in there."""

from __future__ import annotations

import pytest

from callkit import CallMediaType

from .cluster import Cluster
from .helpers import engine_at, wait_until


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
