"""The signaling service over real sockets: login, garbage, relay rules, liveness."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from callkit.signaling import ServerConfig, SignalingServer
from callkit.signaling.usersig import gen_user_sig

from .conftest import SDK_APP_ID, SECRET, sig


class RawClient:
    """A bare WebSocket client speaking the wire protocol by hand."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.http, self.ws = http, ws
        self.next_id = 1
        self.inbox: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, url: str) -> "RawClient":
        http = aiohttp.ClientSession()
        return cls(http, await http.ws_connect(url))

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        rid = self.next_id
        self.next_id += 1
        await self.ws.send_str(json.dumps({"v": 1, "type": type_, "id": rid, **fields}))
        return await self.reply(rid)

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        # wait_for, not receive(timeout=): aiohttp restarts that timeout at every ping it
        # answers, so a reply that never comes would hang the test instead of failing it
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        return json.loads(msg.data)

    async def reply(self, rid: int | None, timeout: float = 5.0) -> dict[str, Any]:
        while True:
            frame = await self.recv(timeout)
            if frame["type"] in ("ok", "error") and frame.get("id") == rid:
                return frame
            self.inbox.append(frame)

    async def event(self, name: str, timeout: float = 5.0) -> dict[str, Any]:
        for i, frame in enumerate(self.inbox):
            if frame.get("event") == name:
                return self.inbox.pop(i)
        while True:
            frame = await self.recv(timeout)
            if frame.get("event") == name:
                return frame
            self.inbox.append(frame)

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()


async def login(url: str, user: str) -> RawClient:
    client = await RawClient.connect(url)
    reply = await client.request("login", sdkAppId=SDK_APP_ID, userId=user, userSig=sig(user))
    assert reply["type"] == "ok", reply
    return client


async def test_login_refuses_bad_sigs(server: SignalingServer) -> None:
    cases = {
        "expired": gen_user_sig(SDK_APP_ID, SECRET, "alice", expire=10, now=1_000_000),
        "wrong key": gen_user_sig(SDK_APP_ID, "another-secret", "alice"),
        "other user": sig("bob"),
        "garbage": "xyz",
    }
    for what, user_sig in cases.items():
        client = await RawClient.connect(server.url)
        reply = await client.request("login", sdkAppId=SDK_APP_ID, userId="alice", userSig=user_sig)
        assert reply["type"] == "error" and reply["code"] == -1201, (what, reply)
        await client.close()
    client = await RawClient.connect(server.url)
    reply = await client.request(
        "login", sdkAppId=SDK_APP_ID + 1, userId="alice", userSig=sig("alice")
    )
    assert reply["type"] == "error" and reply["code"] == -1201
    await client.close()


GARBAGE = [
    ("not json", "this is not json", -1402),
    ("array", "[1, 2, 3]", -1402),
    ("unknown type", json.dumps({"v": 1, "type": "teleport", "id": 7}), -1402),
    ("bad version", json.dumps({"v": 99, "type": "ping", "id": 8}), -1402),
    ("missing fields", json.dumps({"v": 1, "type": "call", "id": 9}), -1202),
    (
        "wrong types",
        json.dumps({"v": 1, "type": "call", "id": 10, "callees": "bob", "mediaType": "video"}),
        -1202,
    ),
    (
        "bool as int",
        json.dumps({"v": 1, "type": "call", "id": 11, "callees": ["bob"], "mediaType": True}),
        -1202,
    ),
    ("huge", json.dumps({"v": 1, "type": "ping", "id": 12, "pad": "x" * 70000}), -1403),
]


async def test_garbage_gets_error_replies_and_calls_still_work(
    server: SignalingServer, error_log
) -> None:
    # before login: anything but login is refused with -1201
    early = await RawClient.connect(server.url)
    reply = await early.request("call", callees=["bob"], mediaType=1)
    assert reply["type"] == "error" and reply["code"] == -1201
    await early.close()

    alice = await login(server.url, "alice")
    bob = await login(server.url, "bob")
    for what, text, code in GARBAGE:
        await alice.send_raw(text)
        frame = await alice.recv()
        assert frame["type"] == "error", what
        assert frame["code"] == code, (what, frame)
        assert isinstance(frame["message"], str) and frame["message"], what
    for frame in (
        "",
        "null",
        "{}",
        '{"type": null}',
        json.dumps({"type": "accept", "id": 1, "callId": 5}),
    ):
        await alice.send_raw(frame)
        assert (await alice.recv())["type"] == "error"
    # out-of-place messages: accept / hangup with no call, relay to a stranger
    for type_, fields in (
        ("accept", {"callId": "nope"}),
        ("hangup", {"callId": "nope"}),
        ("relay", {"callId": "nope", "to": "bob", "kind": "offer", "data": {}}),
    ):
        reply = await alice.request(type_, **fields)
        assert reply["type"] == "error" and reply["code"] == -1203, (type_, reply)

    # and a normal call still works for everyone
    reply = await alice.request("call", callees=["bob"], mediaType=1)
    assert reply["type"] == "ok"
    call_id = reply["data"]["call"]["callId"]
    received = await bob.event("onCallReceived")
    assert received["payload"]["callerId"] == "alice" and received["callId"] == call_id
    assert (await bob.request("accept", callId=call_id))["type"] == "ok"
    await alice.event("onCallBegin")
    assert (await alice.request("hangup", callId=call_id))["type"] == "ok"
    await bob.event("onCallEnd")
    assert server.stats.internal_errors == 0
    assert not [r for r in error_log.records if r.name.startswith("callkit.signaling")]
    await alice.close()
    await bob.close()


async def test_relay_only_between_members_of_the_same_call(server: SignalingServer) -> None:
    alice, bob, eve = [await login(server.url, u) for u in ("alice", "bob", "eve")]
    reply = await alice.request("call", callees=["bob"], mediaType=1)
    call_id = reply["data"]["call"]["callId"]
    await bob.event("onCallReceived")
    # while ringing, not even the callee is a media member yet
    reply = await alice.request(
        "relay", callId=call_id, to="bob", kind="offer", data={"sdp": "x", "type": "offer"}
    )
    assert reply["code"] == -1203
    await bob.request("accept", callId=call_id)
    reply = await alice.request(
        "relay", callId=call_id, to="bob", kind="offer", data={"sdp": "v=0", "type": "offer"}
    )
    assert reply["type"] == "ok"
    relayed = await bob.recv()
    while relayed["type"] != "relayed":
        relayed = await bob.recv()
    assert relayed == {
        "v": 1,
        "type": "relayed",
        "callId": call_id,
        "fromUser": "alice",
        "kind": "offer",
        "data": {"sdp": "v=0", "type": "offer"},
    }
    for sender, to in ((eve, "bob"), (eve, "alice")):
        reply = await sender.request("relay", callId=call_id, to=to, kind="offer", data={})
        assert reply["code"] == -1203
    reply = await alice.request("relay", callId=call_id, to="eve", kind="offer", data={})
    assert reply["code"] == -1203
    reply = await alice.request("relay", callId=call_id, to="bob", kind="smoke", data={})
    assert reply["code"] == -1202
    for c in (alice, bob, eve):
        await c.close()


async def test_disconnect_while_ringing_counts_as_no_response(server: SignalingServer) -> None:
    alice = await login(server.url, "alice")
    bob = await login(server.url, "bob")
    await alice.request("call", callees=["bob"], mediaType=1)
    await bob.event("onCallReceived")
    await bob.close()
    assert (await alice.event("onUserNoResponse"))["payload"] == {"userId": "bob"}
    assert (await alice.event("onCallCancelled"))["payload"] == {"userId": "alice"}
    await alice.close()


async def test_disconnect_in_call_counts_as_leaving(server: SignalingServer) -> None:
    alice = await login(server.url, "alice")
    bob = await login(server.url, "bob")
    reply = await alice.request("call", callees=["bob"], mediaType=1)
    call_id = reply["data"]["call"]["callId"]
    await bob.event("onCallReceived")
    await bob.request("accept", callId=call_id)
    await alice.event("onCallBegin")
    await bob.close()
    assert (await alice.event("onUserLeave"))["payload"] == {"userId": "bob"}
    assert (await alice.event("onCallEnd"))["payload"]["callRole"] == 1
    assert server.registry.calls == {}
    await alice.close()


async def test_silent_client_is_detected_by_heartbeat() -> None:
    """A client that stops answering pings (not a clean close) is dropped: pinged after
    ``heartbeat`` s of silence, a lost link after ``liveness_timeout`` s, its call membership
    gone after the resume grace (shortened here: 0.5 + 1.5 + 1 s instead of 2 + 5 + 9 s)."""
    cfg = ServerConfig(heartbeat=0.5, liveness_timeout=1.5, resume_grace=1.0)
    server = SignalingServer(SDK_APP_ID, SECRET, cfg)
    await server.start("127.0.0.1", 0)
    try:
        alice = await login(server.url, "alice")
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(server.url, autoping=False)  # never answers pings
        await ws.send_str(
            json.dumps(
                {
                    "v": 1,
                    "type": "login",
                    "id": 1,
                    "sdkAppId": SDK_APP_ID,
                    "userId": "bob",
                    "userSig": sig("bob"),
                }
            )
        )
        reply = await alice.request("call", callees=["bob"], mediaType=1)
        assert reply["type"] == "ok"
        loop = asyncio.get_running_loop()
        start = loop.time()
        await alice.event("onUserNoResponse", timeout=10)
        assert loop.time() - start < 6
        assert server.stats.silent_disconnects == 1
        await ws.close()
        await http.close()
        await alice.close()
    finally:
        await server.stop()


async def test_unauthenticated_socket_is_closed(server: SignalingServer) -> None:
    server.config.login_timeout = 0.5
    client = await RawClient.connect(server.url)
    msg = await client.ws.receive(timeout=5)
    assert msg.type in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.CLOSING,
    )
    await client.close()


async def test_second_login_kicks_the_first(server: SignalingServer) -> None:
    first = await login(server.url, "alice")
    second = await login(server.url, "alice")
    frame = await first.recv()
    assert frame["type"] == "kicked"
    assert server.online_users() == ["alice"]
    assert (await second.request("ping"))["type"] == "ok"
    await first.close()
    await second.close()


@pytest.mark.parametrize("path", ["/health", "/calls"])
async def test_rest_endpoints(server: SignalingServer, path: str) -> None:
    admin = {"Authorization": f"Bearer {sig('administrator')}"}
    url = server.url.replace("ws://", "http://").replace("/ws", path)
    async with aiohttp.ClientSession(headers=admin) as http, http.get(url) as r:
        assert r.status == 200
        await r.json()


async def test_usersig_expiry_runs_on_the_rule_clock() -> None:
    """The session rules' deadlines are timers on the server's clock: with a fake clock an
    expiry is checked to the second without waiting for it."""
    from callkit.testing import FakeClock

    clock = FakeClock()
    server = SignalingServer(SDK_APP_ID, SECRET, clock=clock)
    clock.attach(server)
    url = await server.start()
    try:
        alice = await RawClient.connect(url)
        reply = await alice.request(
            "login", sdkAppId=SDK_APP_ID, userId="alice", userSig=sig("alice", expire=60)
        )
        assert reply["type"] == "ok"
        bob = await login(url, "bob")
        call = await alice.request("call", callees=["bob"], mediaType=1)
        await bob.event("onCallReceived")
        await clock.advance(55)  # the ring timeout (30 s) fired; the UserSig is still good
        await bob.event("onCallCancelled")
        assert server.online_users() == ["alice", "bob"] and server.stats.sig_expired == 0
        await clock.advance(6)
        assert (await alice.recv())["type"] == "event"  # onUserNoResponse of the call
        assert (await alice.recv())["type"] == "event"  # onCallCancelled
        assert (await alice.recv())["type"] == "sigExpired"
        msg = await alice.ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert alice.ws.close_code == 1008 and server.stats.sig_expired == 1
        assert server.online_users() == ["bob"] and call["type"] == "ok"
        await alice.close()
        await bob.close()
    finally:
        await server.stop()
