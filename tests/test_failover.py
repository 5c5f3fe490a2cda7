"""An engine given several service URLs: login at the first that answers, and on a lost link
move to the next URL (round robin) and resume there.

These nodes are in-memory servers (no shared state): the next node does not know the session,
so the engine must behave exactly as when the service forgot the call (onCallEnd /
onCallCancelled) and stay logged in at the new node. With Redis-backed nodes the resume
succeeds and the call survives (tests/test_cluster_failover.py).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from callkit import CallEngine, CallError, CallMediaType
from callkit.media import ToneSource
from callkit.signaling import SignalingServer

from .conftest import SDK_APP_ID, SECRET, sig
from .helpers import engine_at, wait_until


def dead_url() -> str:
    """A ws:// URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"ws://127.0.0.1:{port}/ws"


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        ([], "url list is empty: give at least one URL"),
        ((), "url list is empty: give at least one URL"),
        (42, "url must be a string or a list of strings, got int"),
        ({"ws://a/ws"}, "url must be a string or a list of strings, got set"),
        (["ws://127.0.0.1:1/ws", 3], "every url must be a non-empty string, got 3"),
        (["ws://127.0.0.1:1/ws", ""], "every url must be a non-empty string, got ''"),
    ],
)
def test_bad_url_argument_is_refused(urls: Any, message: str) -> None:
    with pytest.raises(CallError) as info:
        CallEngine(urls)
    assert info.value.code == -1202 and info.value.message == message


def test_one_url_or_a_list() -> None:
    assert CallEngine("ws://127.0.0.1:1/ws").urls == ["ws://127.0.0.1:1/ws"]
    both = CallEngine(("ws://127.0.0.1:1/ws", "ws://127.0.0.1:2/ws"))
    assert both.urls == ["ws://127.0.0.1:1/ws", "ws://127.0.0.1:2/ws"]
    assert both.url == "ws://127.0.0.1:1/ws"  # the first, before init


async def test_first_url_down_at_init_logs_in_at_the_second(server: SignalingServer) -> None:
    down = dead_url()
    engine, _ = await engine_at([down, server.url], "alice")
    try:
        assert engine.url == server.url
        assert server.online_users() == ["alice"]
    finally:
        await engine.destroy()


async def test_no_url_answers_names_every_url() -> None:
    first, second = dead_url(), dead_url()
    engine = CallEngine([first, second])
    with pytest.raises(CallError) as info:
        await engine.init(SDK_APP_ID, "alice", sig("alice"))
    assert info.value.code == -1405
    for url in (first, second):
        port = url.split(":")[2].split("/")[0]
        assert f"127.0.0.1:{port}" in info.value.message, info.value.message
    await engine.destroy()


async def test_refused_login_does_not_try_the_next_url(server: SignalingServer) -> None:
    accepted = 0

    def count(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.transport.abort()

    listener = await asyncio.start_server(count, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    engine = CallEngine([server.url, f"ws://127.0.0.1:{port}/ws"])
    try:
        with pytest.raises(CallError) as info:
            await engine.init(SDK_APP_ID, "alice", "not-a-valid-sig")
        assert info.value.code == -1201 and "login refused" in info.value.message
        assert accepted == 0  # the same service would refuse it at every node
    finally:
        await engine.destroy()
        listener.close()
        await listener.wait_closed()


async def two_nodes() -> tuple[SignalingServer, SignalingServer]:
    nodes = (SignalingServer(SDK_APP_ID, SECRET), SignalingServer(SDK_APP_ID, SECRET))
    for node in nodes:
        await node.start("127.0.0.1", 0)
    return nodes


async def test_ringing_call_on_a_stopped_node_is_cancelled_and_users_move_on() -> None:
    a, b = await two_nodes()
    urls = [a.url, b.url]
    alice, ra = await engine_at(urls, "alice")
    bob, rb = await engine_at(urls, "bob")
    try:
        await alice.call("bob", CallMediaType.AUDIO)
        await rb.wait_for("onCallReceived")
        await a.stop()
        # node b never heard of the session: the call is forgotten, as after the grace
        assert await ra.wait_for("onCallCancelled", timeout=10) == {"userId": "alice"}
        assert await rb.wait_for("onCallCancelled", timeout=10) == {"userId": "bob"}
        await wait_until(lambda: sorted(b.online_users()) == ["alice", "bob"], "both at node b")
        assert alice.url == bob.url == b.url
        assert alice.call_state.value == bob.call_state.value == "idle"
        assert [e["code"] for e in ra.of("onError")] == [-1401]  # the lost link, once
        # logged in at b for real: a new call works there
        await alice.call("bob", CallMediaType.AUDIO)
        await rb.wait_for("onCallReceived", count=2)
        assert len(b.registry.calls) == 1
        await alice.hangup()
        await rb.wait_for("onCallCancelled", count=2)
    finally:
        await alice.destroy()
        await bob.destroy()
        await b.stop()


@pytest.mark.loopback
async def test_connected_call_on_a_stopped_node_ends_and_users_move_on() -> None:
    a, b = await two_nodes()
    urls = [a.url, b.url]
    alice, ra = await engine_at(urls, "alice", audio_source=ToneSource(440, -20))
    bob, rb = await engine_at(urls, "bob", audio_source=ToneSource(660, -20))
    try:
        await alice.call("bob", CallMediaType.AUDIO)
        await rb.wait_for("onCallReceived")
        await bob.accept()
        await ra.wait_for("onCallBegin")
        await rb.wait_for("onCallBegin")
        await a.stop()
        for rec in (ra, rb):
            end = await rec.wait_for("onCallEnd", timeout=10)
            assert set(end) == {"roomID", "callMediaType", "callRole", "totalTime"}
        await wait_until(lambda: sorted(b.online_users()) == ["alice", "bob"], "both at node b")
        assert alice.peers == {} and bob.peers == {}
        assert ra.names().count("onCallEnd") == rb.names().count("onCallEnd") == 1
    finally:
        await alice.destroy()
        await bob.destroy()
        await b.stop()
