"""Signaling outages: the service holds a dropped session, the engine reconnects and resumes.

A small TCP proxy on 127.0.0.1 sits between one engine and the real server; ``cut()`` resets
every connection through it and refuses new ones until ``restore()``. Media is peer to peer,
so a connected call keeps flowing while signaling is down.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from callkit import CallEngine, CallMediaType
from callkit.media import ToneSource
from callkit.recorder import EventRecorder
from callkit.signaling import ServerConfig, SignalingServer
from callkit.testing import FakeClock

from .conftest import LOOPBACK, SDK_APP_ID, SECRET, sig
from .test_server import RawClient

pytestmark = pytest.mark.loopback


class TcpProxy:
    """Forwards 127.0.0.1:port to a target port; can reset all links and refuse new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = True
        self.accepted = 0
        self._links: set[tuple[asyncio.Transport, asyncio.Transport]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> "TcpProxy":
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        link = (writer.transport, up_writer.transport)
        self._links.add(link)  # type: ignore[arg-type]
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer)),
            asyncio.ensure_future(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for t in pumps:
            t.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        self._tasks.difference_update(pumps)
        self._links.discard(link)  # type: ignore[arg-type]
        for w in (writer, up_writer):
            w.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            writer.write(data)
            await writer.drain()

    def cut(self) -> None:
        """Reset every link (both ends see a dropped TCP connection) and refuse new ones."""
        self.up = False
        for a, b in list(self._links):
            a.abort()
            b.abort()

    def restore(self) -> None:
        self.up = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def engine_via(url: str, user: str, **kwargs: Any) -> tuple[CallEngine, EventRecorder]:
    engine = CallEngine(url, ice_addresses=LOOPBACK, **kwargs)
    rec = EventRecorder(engine, user)
    await engine.init(SDK_APP_ID, user, sig(user))
    return engine, rec


def volumes_of(rec: EventRecorder, user: str, since: float) -> list[int]:
    return [
        e.payload["volumeMap"].get(user, 0)
        for e in rec.events
        if e.event == "onUserVoiceVolumeChanged" and e.at >= since
    ]


async def connected_call(
    alice: CallEngine, ra: EventRecorder, bob: CallEngine, rb: EventRecorder
) -> None:
    await alice.call("bob", CallMediaType.AUDIO)
    await rb.wait_for("onCallReceived")
    await bob.accept()
    await ra.wait_for("onCallBegin")
    await rb.wait_for("onCallBegin")
    await ra.wait_for(
        "onUserVoiceVolumeChanged", lambda p: p["volumeMap"].get("bob", 0) > 0, timeout=10
    )
    await rb.wait_for(
        "onUserVoiceVolumeChanged", lambda p: p["volumeMap"].get("alice", 0) > 0, timeout=10
    )


async def test_call_survives_a_five_second_signaling_outage(server: SignalingServer) -> None:
    proxy = await TcpProxy(server.port or 0).start()
    alice, ra = await engine_via(proxy.url(), "alice", audio_source=ToneSource(440, -20))
    bob, rb = await engine_via(server.url or "", "bob", audio_source=ToneSource(660, -20))
    try:
        await connected_call(alice, ra, bob, rb)
        loop = asyncio.get_running_loop()
        proxy.cut()
        cut_at = loop.time()  # the recorder stamps events with time.monotonic() too
        await asyncio.sleep(1.0)
        assert server.held_users() == ["alice"]  # the service holds alice's session
        # while alice is away, bob closes his microphone: the event waits for alice
        await bob.close_microphone()
        await asyncio.sleep(4.0)
        during_a = volumes_of(ra, "bob", cut_at + 0.5)
        during_b = volumes_of(rb, "alice", cut_at + 0.5)
        proxy.restore()
        # media never stopped: both sides kept hearing each other (bob's mic closed at ~1 s)
        assert len(during_b) >= 10 and min(during_b) > 0, during_b
        assert len(during_a) >= 3 and max(during_a) > 0, during_a
        await ra.wait_for("onUserAudioAvailable", lambda p: not p["isAudioAvailable"], timeout=10)
        assert ra.of("onUserAudioAvailable") == [
            {"userId": "bob", "isAudioAvailable": True},  # joined with the microphone on
            {"userId": "bob", "isAudioAvailable": False},
        ]
        assert loop.time() - cut_at < 8
        for _ in range(50):  # the held events arrive before the login reply ends the resume
            if alice._client is not None and alice._client.reconnects == 1:
                break
            await asyncio.sleep(0.1)
        assert alice._client is not None and alice._client.reconnects == 1
        assert server.stats.resumed == 1 and server.held_users() == []
        # one onError -1401 when alice's link dropped; nothing for bob
        assert [e["code"] for e in ra.of("onError")] == [-1401] and rb.of("onError") == []
        assert alice.call_state.value == bob.call_state.value == "connected"
        # the call goes on and ends normally
        await alice.hangup()
        await rb.wait_for("onCallEnd")
        end_a = await ra.wait_for("onCallEnd")
        assert end_a["totalTime"] >= 5
        assert rb.names()[-2:] == ["onUserLeave", "onCallEnd"]
        assert [n for n in ra.names() if n != "onError"] == [
            "onUserJoin",
            "onCallBegin",
            "onUserAudioAvailable",
            "onUserAudioAvailable",
            "onCallEnd",
        ]
        assert server.registry.calls == {}
    finally:
        await alice.destroy()
        await bob.destroy()
        await proxy.close()


async def test_call_ends_cleanly_when_signaling_never_comes_back() -> None:
    server = SignalingServer(SDK_APP_ID, SECRET, ServerConfig(heartbeat=1.0, resume_grace=3.0))
    url = await server.start("127.0.0.1", 0)
    proxy = await TcpProxy(server.port or 0).start()
    alice, ra = await engine_via(proxy.url(), "alice", audio_source=ToneSource(440, -20))
    bob, rb = await engine_via(url, "bob", audio_source=ToneSource(660, -20))
    try:
        await connected_call(alice, ra, bob, rb)
        loop = asyncio.get_running_loop()
        proxy.cut()
        cut_at = loop.time()
        error = await ra.wait_for("onError", timeout=10)
        assert error["code"] == -1401 and "reconnecting" in error["msg"], error
        # after the resume grace the service ended alice's part: the engine ends it too
        end = await ra.wait_for("onCallEnd", timeout=10)
        assert set(end) == {"roomID", "callMediaType", "callRole", "totalTime"}
        await rb.wait_for("onCallEnd", timeout=10)
        assert loop.time() - cut_at < 5
        assert rb.names()[-2:] == ["onUserLeave", "onCallEnd"]
        assert [e for e in ra.names() if e == "onError"] == ["onError"]  # once per drop
        assert alice.call_state.value == "idle" and alice.peers == {}
        assert bob.call_state.value == "idle" and bob.peers == {}
        assert server.registry.calls == {} and server.held_users() == []
        # the engine keeps trying (with backoff, capped at 2 s) past the 3 s grace; the
        # network comes back after 5 s and it logs in again by itself
        await asyncio.sleep(5.0 - (loop.time() - cut_at))
        proxy.restore()
        deadline = loop.time() + 10
        while "alice" not in server.online_users() and loop.time() < deadline:
            await asyncio.sleep(0.1)
        assert "alice" in server.online_users()
        assert alice._client is not None and alice._client.reconnects == 1
        await alice.call("bob", CallMediaType.AUDIO)
        await rb.wait_for("onCallReceived", count=2)
        await alice.hangup()
        assert [e for e in ra.names() if e == "onError"] == ["onError"]
    finally:
        await alice.destroy()
        await bob.destroy()
        await proxy.close()
        await server.stop()


async def raw_login(url: str, user: str, **extra: Any) -> tuple[RawClient, dict[str, Any]]:
    client = await RawClient.connect(url)
    reply = await client.request(
        "login", sdkAppId=SDK_APP_ID, userId=user, userSig=sig(user), **extra
    )
    assert reply["type"] == "ok", reply
    return client, reply["data"]


def abort(client: RawClient) -> None:
    """Drop the TCP connection without a WebSocket close frame."""
    transport = client.ws._response.connection.transport  # type: ignore[union-attr]
    assert transport is not None
    transport.abort()


async def test_resume_replays_held_events_before_the_reply() -> None:
    server = SignalingServer(SDK_APP_ID, SECRET, ServerConfig(resume_grace=5.0))
    url = await server.start("127.0.0.1", 0)
    try:
        alice, _ = await raw_login(url, "alice")
        bob, login = await raw_login(url, "bob")
        assert login["resumed"] is False and login["call"] is None
        assert login["resumeGrace"] == 5.0 and isinstance(login["sessionId"], str)
        call_id = (await alice.request("call", callees=["bob"], mediaType=1))["data"]["call"][
            "callId"
        ]
        await bob.event("onCallReceived")
        await bob.request("accept", callId=call_id)
        await alice.event("onCallBegin")
        abort(bob)
        await bob.http.close()
        for _ in range(50):
            if server.held_users() == ["bob"]:
                break
            await asyncio.sleep(0.02)
        assert server.held_users() == ["bob"] and server.online_users() == ["alice"]
        info = server.user_info("bob")
        assert info is not None and info["online"] is False and info["callId"] == call_id
        # the call goes on without bob's socket; what happens meanwhile is kept for him
        assert (await alice.request("device", callId=call_id, audio=False))["type"] == "ok"
        assert (
            await alice.request(
                "relay",
                callId=call_id,
                to="bob",
                kind="offer",
                data={"sdp": "v=0", "type": "offer"},
            )
        )["type"] == "ok"
        # someone else logging in as bob on another socket without the token would kick it;
        # bob resumes with his session id instead
        bob2 = await RawClient.connect(url)
        rid = 1
        await bob2.ws.send_str(
            json.dumps(
                {
                    "v": 1,
                    "type": "login",
                    "id": rid,
                    "sdkAppId": SDK_APP_ID,
                    "userId": "bob",
                    "userSig": sig("bob"),
                    "resume": login["sessionId"],
                }
            )
        )
        frames = [await bob2.recv() for _ in range(3)]
        assert [f["type"] for f in frames] == ["event", "relayed", "ok"]
        assert frames[0]["event"] == "onUserAudioAvailable"
        assert frames[0]["payload"] == {"userId": "alice", "isAudioAvailable": False}
        assert frames[1]["data"] == {"sdp": "v=0", "type": "offer"}
        data = frames[2]["data"]
        assert data["resumed"] is True and data["sessionId"] == login["sessionId"]
        assert data["call"]["callId"] == call_id
        assert server.held_users() == [] and server.stats.resumed == 1
        # a second resume with the same token while bob2 is online takes the session over
        bob3, again = await raw_login(url, "bob", resume=login["sessionId"])
        assert again["resumed"] is True
        msg = await bob2.ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert bob2.ws.close_code == 4001
        assert (await bob3.request("hangup", callId=call_id))["type"] == "ok"
        await alice.event("onCallEnd")
        await bob3.event("onCallEnd")
        for c in (alice, bob2, bob3):
            await c.close()
        await asyncio.sleep(0.1)
        assert server.idle(), (server.online_users(), server.held_users())
    finally:
        await server.stop()


async def test_dropped_socket_leaves_the_call_after_the_grace() -> None:
    """Real sockets, fake clock: the grace is counted on the server's rule clock, so the
    rule is checked to the tenth of a second without sleeping through it."""
    clock = FakeClock()
    server = SignalingServer(SDK_APP_ID, SECRET, ServerConfig(resume_grace=1.5), clock=clock)
    clock.attach(server)
    url = await server.start("127.0.0.1", 0)

    async def drop(client: RawClient) -> None:
        abort(client)
        await client.http.close()
        for _ in range(100):
            if server.held_users() == ["bob"]:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("bob's dropped session was not held")

    try:
        alice, _ = await raw_login(url, "alice")
        bob, login = await raw_login(url, "bob")
        call_id = (await alice.request("call", callees=["bob"], mediaType=1))["data"]["call"][
            "callId"
        ]
        await bob.event("onCallReceived")
        await bob.request("accept", callId=call_id)
        await alice.event("onCallBegin")
        await drop(bob)
        await clock.advance(1.4)
        assert server.held_users() == ["bob"] and server.registry.call_of("bob") is not None
        await clock.advance(0.1)
        leave = await alice.event("onUserLeave", timeout=5)
        assert leave["payload"] == {"userId": "bob"}
        await alice.event("onCallEnd")
        assert server.held_users() == []
        # too late: the session is gone, a resume becomes a fresh login
        bob2, again = await raw_login(url, "bob", resume=login["sessionId"])
        assert again["resumed"] is False and again["call"] is None
        # a ringing callee whose socket drops becomes "no response" after the grace too
        reply = await alice.request("call", callees=["bob"], mediaType=1)
        assert reply["type"] == "ok"
        await bob2.event("onCallReceived")
        await drop(bob2)
        await clock.advance(1.4)
        assert server.registry.call_of("bob") is not None
        await clock.advance(0.1)
        assert (await alice.event("onUserNoResponse", timeout=5))["payload"] == {"userId": "bob"}
        await alice.close()
        for _ in range(50):
            if server.idle():
                break
            await asyncio.sleep(0.02)
        assert server.idle()
    finally:
        await server.stop()


async def test_engine_logs_in_again_after_a_server_restart() -> None:
    """The service restarts on the same port (its state is gone): engines come back with a
    fresh session by themselves. A call does not survive: the shutdown cancels it for the
    parties it can still reach, and a party that learns it only on reconnecting ends it with
    onCallCancelled. Every engine gets one onError -1401 when its link drops."""
    server = SignalingServer(SDK_APP_ID, SECRET)
    url = await server.start("127.0.0.1", 0)
    port = server.port or 0
    idle, r_idle = await engine_via(url, "idle")
    busy, r_busy = await engine_via(url, "busy")
    peer, r_peer = await engine_via(url, "peer")
    try:
        await busy.call("peer", CallMediaType.AUDIO)
        await r_peer.wait_for("onCallReceived")
        await server.stop()
        await asyncio.sleep(0.5)
        server = SignalingServer(SDK_APP_ID, SECRET)
        await server.start("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5

        def back() -> bool:  # the server counts a login before the engine reads its reply
            clients = [e._client for e in (idle, busy, peer)]
            return len(server.online_users()) == 3 and all(
                c is not None and c.reconnects >= 1 for c in clients
            )

        while not back() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert sorted(server.online_users()) == ["busy", "idle", "peer"]
        for engine in (idle, busy, peer):
            assert engine._client is not None and engine._client.reconnects == 1
        for rec in (r_idle, r_busy, r_peer):
            assert [e["code"] for e in rec.of("onError")] == [-1401], rec.names()
        for rec in (r_busy, r_peer):  # told by the server, or by the engine on coming back
            await rec.wait_for("onCallCancelled")
            assert rec.of("onCallCancelled") == rec.of("onCallCancelled")[:1], rec.names()
        assert busy.call_state.value == peer.call_state.value == "idle"
        await peer.call("idle", CallMediaType.AUDIO)
        await r_idle.wait_for("onCallReceived")
        await idle.reject()
        await r_peer.wait_for("onCallCancelled")
    finally:
        await asyncio.gather(idle.destroy(), busy.destroy(), peer.destroy())
        await server.stop()
