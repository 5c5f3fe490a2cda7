"""Attacks on joining by room id and on the admin HTTP API (issue 9, defect 1).

An outsider holds a valid UserSig of an unrelated user and a WebSocket client. They must not
learn room ids from the HTTP API, and must not join a 1v1 call or a group call they were
neither invited to nor granted by the application (grant: ``callkitGroups`` in the UserSig's
userbuf, see callkit/signaling/grants.py).
"""

from __future__ import annotations

import base64
import json
import zlib

import aiohttp
import pytest

from callkit import CallEngine, CallError, CallMediaType
from callkit.signaling import SignalingServer
from callkit.signaling.grants import granted_groups, group_grant
from callkit.signaling.usersig import gen_user_sig

from .conftest import LOOPBACK, SDK_APP_ID, SECRET, sig
from .test_server import RawClient, login


def grant_sig(user: str, groups: list[str], secret: str = SECRET) -> str:
    """A UserSig whose userbuf lists ``groups`` (raw: even ids group_grant would refuse)."""
    userbuf = json.dumps({"callkitGroups": groups}).encode()
    return gen_user_sig(SDK_APP_ID, secret, user, 3600, userbuf=userbuf)


async def login_with(url: str, user: str, user_sig: str) -> RawClient:
    client = await RawClient.connect(url)
    reply = await client.request("login", sdkAppId=SDK_APP_ID, userId=user, userSig=user_sig)
    assert reply["type"] == "ok", reply
    return client


async def connected_call(caller: RawClient, callee: RawClient, callee_id: str, **fields):  # type: ignore[no-untyped-def]
    reply = await caller.request("call", callees=[callee_id], mediaType=1, **fields)
    assert reply["type"] == "ok", reply
    call = reply["data"]["call"]
    await callee.event("onCallReceived")
    assert (await callee.request("accept", callId=call["callId"]))["type"] == "ok"
    await caller.event("onCallBegin")
    return call


def joins_seen(*clients: RawClient) -> set[str]:
    """Who the clients were told joined (from the frames they buffered)."""
    return {
        f["payload"]["userId"] for c in clients for f in c.inbox if f.get("event") == "onUserJoin"
    }


async def test_admin_api_needs_an_admin_usersig(server: SignalingServer) -> None:
    url = server.url or ""
    base = url.replace("ws://", "http://").replace("/ws", "")
    alice, bob = await login(url, "alice"), await login(url, "bob")
    call = await connected_call(alice, bob, "bob")
    forged = gen_user_sig(SDK_APP_ID, "not-the-secret", "administrator")
    expired = gen_user_sig(SDK_APP_ID, SECRET, "administrator", expire=10, now=1_000_000)
    async with aiohttp.ClientSession() as http:
        for path in ("/calls", "/users/alice"):
            for header in (
                None,
                f"Bearer {sig('eve')}",  # a valid sig, but not the administrator's
                f"Bearer {forged}",
                f"Bearer {expired}",
                f"Basic {sig('administrator')}",
                "Bearer ",
            ):
                headers = {"Authorization": header} if header else {}
                async with http.get(base + path, headers=headers) as r:
                    assert r.status == 401, (path, header)
                    body = await r.json()
                    assert body["code"] == -1201 and body["error"], body
                    assert str(call["roomID"]) not in await r.text()
        admin = {"Authorization": f"Bearer {sig('administrator')}"}
        async with http.get(base + "/calls", headers=admin) as r:
            assert r.status == 200
            assert [c["roomID"] for c in await r.json()] == [call["roomID"]]
        async with http.get(base + "/users/alice", headers=admin) as r:
            assert (await r.json())["callId"] == call["callId"]
        async with http.get(base + "/health") as r:  # liveness stays public, and room-free
            assert r.status == 200 and "roomID" not in await r.text()
    for c in (alice, bob):
        await c.close()


async def test_nobody_joins_a_1v1_call(server: SignalingServer) -> None:
    url = server.url or ""
    alice, bob = await login(url, "alice"), await login(url, "bob")
    call = await connected_call(alice, bob, "bob")
    room = call["roomID"]
    eve = await login(url, "eve")
    mallory = await login_with(url, "mallory", grant_sig("mallory", ["", "x"]))
    for who in (eve, mallory):
        for group in ("", "x", None):
            fields = {"groupId": group} if group is not None else {}
            reply = await who.request("join", roomId=room, mediaType=1, **fields)
            assert reply["type"] == "error" and reply["code"] == -1203, reply
    # carol was invited into the call later, rejected, and still cannot come in by room id
    carol = await login(url, "carol")
    assert (await bob.request("invite", callId=call["callId"], callees=["carol"]))["type"] == "ok"
    await carol.event("onCallReceived")
    assert (await carol.request("reject", callId=call["callId"]))["type"] == "ok"
    reply = await carol.request("join", roomId=room, mediaType=1)
    assert reply["code"] == -1203 and "1v1" in reply["message"]
    assert (await alice.request("ping"))["type"] == "ok"
    assert (await bob.request("ping"))["type"] == "ok"
    assert joins_seen(alice, bob) <= {"alice", "bob"}
    snap = server.registry.calls[call["callId"]]
    assert set(snap.members) == {"alice", "bob"}
    for c in (alice, bob, eve, mallory, carol):
        await c.close()


async def test_group_join_needs_an_invitation_or_a_grant(server: SignalingServer) -> None:
    url = server.url or ""
    alice, bob = await login(url, "alice"), await login(url, "bob")
    call = await connected_call(alice, bob, "bob", groupId="team")
    room = call["roomID"]
    eve = await login(url, "eve")
    other = await login_with(url, "oscar", grant_sig("oscar", ["other-team"]))
    for who in (eve, other):
        reply = await who.request("join", roomId=room, groupId="team", mediaType=1)
        assert reply["code"] == -1203 and "not invited" in reply["message"], reply
    # a grant signed with another key, or a userbuf swapped into a valid sig, does not log in
    fake = RawClient(*(await _raw(url)))
    forged = grant_sig("frank", ["team"], secret="not-the-secret")
    reply = await fake.request("login", sdkAppId=SDK_APP_ID, userId="frank", userSig=forged)
    assert reply["code"] == -1201
    reply = await fake.request(
        "login", sdkAppId=SDK_APP_ID, userId="eve", userSig=_swap_userbuf(sig("eve"), ["team"])
    )
    assert reply["code"] == -1201 and "bad signature" in reply["message"]
    # a grant for the team, but the wrong groupId in the request
    dave = await login_with(url, "dave", grant_sig("dave", ["team"]))
    reply = await dave.request("join", roomId=room, groupId="nope", mediaType=1)
    assert reply["code"] == -1203
    assert joins_seen(alice, bob) <= {"alice", "bob"}
    # the granted user joins; an invitee who ignored the ring comes back by room id
    assert (await dave.request("join", roomId=room, groupId="team", mediaType=1))["type"] == "ok"
    carol = await login(url, "carol")
    assert (await alice.request("invite", callId=call["callId"], callees=["carol"]))["type"] == "ok"
    await carol.event("onCallReceived")
    assert (await carol.request("ignore", callId=call["callId"]))["type"] == "ok"
    assert (await carol.request("join", roomId=room, groupId="team", mediaType=1))["type"] == "ok"
    assert set(server.registry.calls[call["callId"]].joined()) == {"alice", "bob", "dave", "carol"}
    for c in (alice, bob, eve, other, fake, dave, carol):
        await c.close()


async def test_engine_cannot_join_a_stranger_call(server: SignalingServer, make_engine) -> None:
    alice, ra = await make_engine("alice")
    bob, rb = await make_engine("bob")
    await alice.call("bob", CallMediaType.AUDIO)
    await rb.wait_for("onCallReceived")
    await bob.accept()
    begin = await ra.wait_for("onCallBegin")
    eve = CallEngine(server.url or "", ice_addresses=LOOPBACK)
    try:
        await eve.init(SDK_APP_ID, "eve", grant_sig("eve", ["", "team"]))
        with pytest.raises(CallError) as err:
            await eve.join_in_group_call(begin["roomID"], "", CallMediaType.AUDIO)
        assert err.value.code == -1203
        assert eve.peers == {} and eve.call_id is None
        assert "onUserJoin" not in [e.event for e in ra.events if e.payload.get("userId") == "eve"]
    finally:
        await eve.destroy()


def test_grant_parsing() -> None:
    assert granted_groups(group_grant(["a", "b", "a"])) == {"a", "b"}
    for junk in (None, b"", b"\xff", b"[]", b'{"callkitGroups": "a"}', b"{" * 2000, b"null"):
        assert granted_groups(junk) == frozenset()
    assert granted_groups(b'{"callkitGroups": ["ok", 3, "", null]}') == {"ok"}
    for bad in ([], [""], ["x" * 200], [f"g{i}" for i in range(65)]):
        with pytest.raises(ValueError):
            group_grant(bad)


async def _raw(url: str) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    http = aiohttp.ClientSession()
    return http, await http.ws_connect(url)


def _swap_userbuf(user_sig: str, groups: list[str]) -> str:
    """Tamper with a valid UserSig: add a grant without re-signing it."""
    raw = base64.b64decode(user_sig.translate(str.maketrans("*-_", "+/=")))
    token = json.loads(zlib.decompress(raw))
    token["TLS.userbuf"] = base64.b64encode(group_grant(groups)).decode()
    out = base64.b64encode(zlib.compress(json.dumps(token).encode())).decode()
    return out.translate(str.maketrans("+/=", "*-_"))
