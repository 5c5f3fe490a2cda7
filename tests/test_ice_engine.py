"""Engine ICE: servers from the login reply, trickled candidates, the caller's offer watchdog,
the selected pair's type and RTT, wss:// with a CA file. Loopback only (127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCIceServer, RTCPeerConnection, RTCSessionDescription

from callkit import CallEngine, CallMediaType
from callkit.media import ToneSource, icehooks
from callkit.media.peer import MAX_TRICKLED_CANDIDATES, ice_servers_from_json
from callkit.recorder import EventRecorder
from callkit.serveconfig import ServeConfig
from callkit.signaling import SignalingServer
from callkit.signaling.ice import IceServersConfig

from .conftest import LOOPBACK, SDK_APP_ID, SECRET, sig
from .helpers import connect
from .tlscerts import make_certs

pytestmark = pytest.mark.loopback


async def test_engine_uses_the_login_reply_ice_servers_unless_given_its_own() -> None:
    ice = IceServersConfig(
        stun=["stun:127.0.0.1:3478"], turn=["turn:127.0.0.1:3478"], turn_secret="t", turn_ttl=60
    )
    server = SignalingServer(SDK_APP_ID, SECRET, ice_servers=ice)
    url = await server.start("127.0.0.1", 0)
    own = [RTCIceServer(urls="stun:127.0.0.2:3478")]
    a, b = CallEngine(url), CallEngine(url, ice_servers=own)
    try:
        await a.init(SDK_APP_ID, "alice", sig("alice"))
        await b.init(SDK_APP_ID, "bob", sig("bob"))
        assert [s.urls for s in a.ice_servers] == [["stun:127.0.0.1:3478"], ["turn:127.0.0.1:3478"]]
        turn = a.ice_servers[1]
        assert turn.username is not None and turn.username.endswith(":alice")
        assert turn.credential
        assert b.ice_servers == own
    finally:
        await asyncio.gather(a.destroy(), b.destroy())
        await server.stop()


def test_ice_servers_from_hostile_json_are_filtered() -> None:
    got = ice_servers_from_json(
        [
            {"urls": "stun:a.example"},
            {"urls": ["turn:b.example"], "username": "u", "credential": "c"},
            {"urls": 5},
            {"urls": []},
            "junk",
            {"urls": ["turn:c.example"], "username": 7},
        ]
        + [{"urls": "stun:x.example"}] * 20
    )
    assert [s.urls for s in got[:2]] == [["stun:a.example"], ["turn:b.example"]]
    assert len(got) == 8
    assert ice_servers_from_json({"urls": "stun:a"}) == []


def test_every_turn_url_is_kept_for_the_allocation_race() -> None:
    servers = [
        RTCIceServer(
            urls=[
                "turn:198.51.100.1:3478?transport=udp",
                "turn:198.51.100.1:3478?transport=tcp",
                "turns:198.51.100.1:5349?transport=tcp",
                "stun:198.51.100.1",
                "turns:198.51.100.1:5349?transport=udp",  # aiortc: turns only over tcp
            ],
            username="u",
            credential="p",
        )
    ]
    assert len(icehooks.turn_servers(servers * 3)) == icehooks.MAX_TURN_SERVERS
    got = icehooks.turn_servers(servers)
    assert [(t.server, t.transport, t.ssl) for t in got] == [
        (("198.51.100.1", 3478), "udp", False),
        (("198.51.100.1", 3478), "tcp", False),
        (("198.51.100.1", 5349), "tcp", True),
    ]


async def test_selected_pair_type_and_rtt(make_engine: Any) -> None:
    alice, arec = await make_engine("alice", audio_source=ToneSource(440, level_dbfs=-20))
    bob, brec = await make_engine("bob", audio_source=ToneSource(660, level_dbfs=-20))
    await connect(alice, arec, bob, brec)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    pair = None
    while loop.time() < deadline:
        session = alice.peers.get("bob")
        pair = session.selected_pair() if session is not None else None
        if pair is not None and pair.rtt_ms is not None:
            break
        await asyncio.sleep(0.2)
    assert pair is not None, "no selected pair within 15 s"
    assert pair.type == "host" and pair.local_type == "host"
    assert pair.local_address[0] == "127.0.0.1"
    assert pair.rtt_ms is not None and 0 <= pair.rtt_ms < 1000, pair


class RawPeer:
    """A client speaking the wire protocol by hand, with its own aiortc peer connection:
    stands in for a browser that trickles its candidates."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = iter(range(1, 1000))

    async def request(self, type_: str, **fields: Any) -> None:
        await self.ws.send_json({"type": type_, "v": 1, "id": next(self.ids), **fields})

    async def next_of(
        self, type_: str, key: str | None = None, value: Any = None, timeout: float = 15
    ) -> Any:
        while True:
            msg = json.loads((await asyncio.wait_for(self.ws.receive(), timeout)).data)
            if msg["type"] == type_ and (key is None or msg.get(key) == value):
                return msg


async def test_trickled_candidates_connect_without_peer_reflexive(server: Any) -> None:
    """The callee (the offerer) sends an SDP without candidates and trickles them as
    ``candidate`` relays, then an end-of-candidates marker: the engine applies them, so its
    selected pair's remote candidate is the trickled host candidate, not a prflx one."""
    alice = CallEngine(server.url, ice_addresses=LOOPBACK, audio_source=ToneSource(440))
    arec = EventRecorder(alice, "alice")
    await alice.init(SDK_APP_ID, "alice", sig("alice"))
    pc = RTCPeerConnection()
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
            bob = RawPeer(ws)
            await bob.request("login", sdkAppId=SDK_APP_ID, userId="bob", userSig=sig("bob"))
            await bob.next_of("ok")
            await alice.call("bob", CallMediaType.AUDIO)
            ev = await bob.next_of("event", "event", "onCallReceived")
            call_id = ev["callId"]
            await bob.request("accept", callId=call_id)
            pc.addTransceiver("audio", direction="sendrecv")
            pc.addTransceiver("video", direction="recvonly")  # the engine negotiates both
            icehooks.attach(pc, host_addresses=LOOPBACK)
            await pc.setLocalDescription(await pc.createOffer())
            sdp = pc.localDescription.sdp
            lines = re.findall(r"^a=(candidate:.*?)\r?$", sdp, flags=re.M)
            assert lines, "the raw peer gathered no candidate"
            bare = re.sub(r"^a=(candidate:.*|end-of-candidates)\r?\n", "", sdp, flags=re.M)
            relay = {"callId": call_id, "to": "alice"}
            await bob.request("relay", kind="offer", data={"sdp": bare, "type": "offer"}, **relay)
            for line in lines:
                data = {"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0}
                await bob.request("relay", kind="candidate", data=data, **relay)
            # hostile candidates are ignored, not fatal
            for junk in ({"candidate": "candidate:garbage"}, {"candidate": 5}, {"sdpMid": []}):
                await bob.request("relay", kind="candidate", data=junk, **relay)
            # a flood of candidates is cut at MAX_TRICKLED_CANDIDATES (each would cost checks)
            for port in range(1, 101):
                flood = {"candidate": f"candidate:9 1 udp 1 127.0.0.1 {port} typ host"}
                await bob.request(
                    "relay", kind="candidate", data={**flood, "sdpMLineIndex": 0}, **relay
                )
            await bob.request("relay", kind="candidate", data={"candidate": ""}, **relay)
            answer = await bob.next_of("relayed", "kind", "answer")
            await pc.setRemoteDescription(RTCSessionDescription(**answer["data"]))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            pair = None
            while loop.time() < deadline and pair is None:
                session = alice.peers.get("bob")
                pair = session.selected_pair() if session is not None else None
                await asyncio.sleep(0.1)
            assert pair is not None, "not connected within 10 s"
            assert pair.remote_type == "host", pair
            assert not arec.of("onError")
            session = alice.peers["bob"]
            remote = [
                c for conn in icehooks.connections(session.pc) for c in conn.remote_candidates
            ]
            assert len(remote) <= MAX_TRICKLED_CANDIDATES, len(remote)
    finally:
        await pc.close()
        await alice.destroy()


async def test_caller_gets_1301_when_the_callee_never_offers(server: Any) -> None:
    # a 2 s watchdog (the default is 10 s): the same rule, sooner
    alice = CallEngine(server.url, ice_addresses=LOOPBACK, connect_timeout=2)
    arec = EventRecorder(alice, "alice")
    await alice.init(SDK_APP_ID, "alice", sig("alice"))
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
            bob = RawPeer(ws)
            await bob.request("login", sdkAppId=SDK_APP_ID, userId="bob", userSig=sig("bob"))
            await bob.next_of("ok")
            await alice.call("bob", CallMediaType.AUDIO)
            ev = await bob.next_of("event", "event", "onCallReceived")
            await bob.request("accept", callId=ev["callId"])
            # bob keeps reading (answering the service's pings) but never offers
            ended = asyncio.ensure_future(bob.next_of("event", "event", "onCallEnd", timeout=12))
            await arec.wait_for("onCallBegin")
            begun = asyncio.get_running_loop().time()
            err = await arec.wait_for("onError", timeout=8)
            waited = asyncio.get_running_loop().time() - begun
            assert err["code"] == -1301 and "bob" in err["msg"], err
            assert "within 2 s (no offer)" in err["msg"] and 1.5 < waited < 6, (err, waited)
            assert "onUserLeave" not in arec.names()
            # and the 1v1 call is hung up: the silent callee's call ends
            end = await ended
            assert end["callId"] == ev["callId"]
    finally:
        await alice.destroy()


def test_connect_timeout_must_be_positive() -> None:
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="connect_timeout must be > 0"):
            CallEngine("ws://127.0.0.1:1/ws", connect_timeout=bad)
    assert CallEngine("ws://127.0.0.1:1/ws")._mesh.connect_timeout == 10.0


async def test_engine_logs_in_over_wss_trusting_a_ca_file(tmp_path: Path) -> None:
    certs = make_certs(tmp_path, ["127.0.0.1"])
    cfg = ServeConfig(tls_cert=str(certs.cert), tls_key=str(certs.key))
    server = SignalingServer(SDK_APP_ID, SECRET, ssl_context=cfg.ssl_context())
    url = await server.start("127.0.0.1", 0)
    trusting = CallEngine(url, tls_ca_file=str(certs.ca))
    untrusting = CallEngine(url)
    try:
        await trusting.init(SDK_APP_ID, "alice", sig("alice"))
        assert server.online_users() == ["alice"]
        with pytest.raises(Exception) as err:
            await untrusting.init(SDK_APP_ID, "bob", sig("bob"))
        assert getattr(err.value, "code", None) == -1405  # SIGNALING_UNREACHABLE
        assert "certificate" in str(err.value).lower()
        with pytest.raises(ValueError, match="cannot use tls_ca_file"):
            CallEngine(url, tls_ca_file=str(tmp_path / "missing.pem"))
    finally:
        await asyncio.gather(trusting.destroy(), untrusting.destroy())
        await server.stop()


async def test_turn_credentials_are_refreshed_when_the_link_resumes() -> None:
    from callkit.signaling import ServerConfig

    from .test_reconnect import TcpProxy

    now = [1_800_000_000.0]
    ice = IceServersConfig(turn=["turn:127.0.0.1:3478"], turn_secret="t", turn_ttl=600)
    server = SignalingServer(
        SDK_APP_ID, SECRET, ServerConfig(wall_clock=lambda: now[0]), ice_servers=ice
    )
    await server.start("127.0.0.1", 0)
    assert server.port is not None
    proxy = await TcpProxy(server.port).start()
    engine = CallEngine(proxy.url(), ice_addresses=LOOPBACK)
    try:
        await engine.init(SDK_APP_ID, "alice", gen_sig(now[0]))
        assert engine.ice_servers[0].username == "1800000600:alice"
        now[0] += 1000
        proxy.cut()
        proxy.restore()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while engine.ice_servers[0].username != "1800001600:alice":
            assert loop.time() < deadline, "no resume with fresh TURN credentials within 10 s"
            await asyncio.sleep(0.05)
        assert server.stats.connections == 2  # the same engine logged in again
    finally:
        await engine.destroy()
        await proxy.close()
        await server.stop()


def gen_sig(now: float) -> str:
    """A UserSig valid around the fake wall-clock time ``now``."""
    from callkit.signaling.usersig import gen_user_sig

    return gen_user_sig(SDK_APP_ID, SECRET, "alice", 86400, now=int(now))
