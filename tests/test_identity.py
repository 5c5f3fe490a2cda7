"""Identity: UserSig expiry while online, kick on a second login, multi-device, self info,
user id rules, and that a client acts only on calls it belongs to."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from callkit import CallEngine, CallError, CallMediaType
from callkit.media import ToneSource
from callkit.recorder import EventRecorder
from callkit.signaling import SignalingServer
from callkit.signaling import protocol as p

from .conftest import LOOPBACK, NODES_MODES, SDK_APP_ID, sig
from .test_server import RawClient, login

pytestmark = pytest.mark.loopback
#: runs against one in-memory node and three Redis-backed nodes (engines spread over them;
#: ``new_engine`` logs in at the first node); node-local introspection is checked in memory
ALSO_CLUSTER = pytest.mark.parametrize("nodes_mode", NODES_MODES, indirect=True)


async def quiet(seconds: float = 0.4) -> None:
    await asyncio.sleep(seconds)


async def new_engine(
    server: SignalingServer,
    user: str,
    *,
    multi: bool = False,
    user_sig: str | None = None,
    **kwargs: Any,
) -> tuple[CallEngine, EventRecorder]:
    engine = CallEngine(server.url or "", ice_addresses=LOOPBACK, **kwargs)
    rec = EventRecorder(engine, user)
    if multi:
        await engine.enable_multi_device_ability(True)
    await engine.init(SDK_APP_ID, user, user_sig or sig(user))
    return engine, rec


async def destroy(*engines: CallEngine) -> None:
    await asyncio.gather(*(e.destroy() for e in engines), return_exceptions=True)


async def raw_login(url: str, user: str, **extra: Any) -> tuple[RawClient, dict[str, Any]]:
    client = await RawClient.connect(url)
    reply = await client.request(
        "login", sdkAppId=SDK_APP_ID, userId=user, userSig=sig(user), **extra
    )
    assert reply["type"] == "ok", reply
    return client, reply["data"]


# ------------------------------------------------------------------ UserSig expiry


@ALSO_CLUSTER
async def test_sig_expiry_while_online_ends_the_call_and_init_works_again(
    server: SignalingServer, make_engine, nodes_mode: str
) -> None:
    bob, rb = await make_engine("bob")
    alice, ra = await new_engine(server, "alice", user_sig=sig("alice", expire=2))
    try:
        await alice.call("bob", CallMediaType.AUDIO)
        await rb.wait_for("onCallReceived")
        await bob.accept()
        await ra.wait_for("onCallBegin")
        assert await ra.wait_for("onUserSigExpired", timeout=5) == {}
        await rb.wait_for("onCallEnd")
        await quiet()
        assert rb.names() == [
            "onCallReceived",
            "onCallBegin",
            "onUserJoin",
            "onUserAudioAvailable",
            "onUserLeave",
            "onCallEnd",
        ]
        assert rb.of("onUserLeave") == [{"userId": "alice"}]
        assert ra.names() == [
            "onUserJoin",
            "onCallBegin",
            "onUserAudioAvailable",
            "onUserSigExpired",
        ]
        assert alice.call_state.value == "idle" and alice.peers == {}
        if nodes_mode == "memory":
            assert server.online_users() == ["bob"] and server.registry.calls == {}
        with pytest.raises(CallError) as err:
            await alice.call("bob", CallMediaType.AUDIO)
        assert err.value.code == -1201
        # a fresh sig on the same engine: logged in again, calls work
        await alice.init(SDK_APP_ID, "alice", sig("alice"))
        await bob.call("alice", CallMediaType.AUDIO)
        assert (await ra.wait_for("onCallReceived"))["callerId"] == "bob"
        await alice.accept()
        await rb.wait_for("onCallBegin", count=2)
        await alice.hangup()
        await rb.wait_for("onCallEnd", count=2)
        if nodes_mode == "memory":
            assert server.stats.sig_expired == 1
    finally:
        await destroy(alice)


# ------------------------------------------------------------------ kick


@ALSO_CLUSTER
async def test_second_login_kicks_the_older_device_and_hangs_up_its_call(
    server: SignalingServer, make_engine, nodes_mode: str
) -> None:
    bob, rb = await make_engine("bob")
    alice1, ra1 = await new_engine(server, "alice")
    alice2, ra2 = await new_engine(server, "alice")  # not in a call yet: nothing to hang up
    try:
        assert await ra1.wait_for("onKickedOffline") == {}
        await alice2.call("bob", CallMediaType.AUDIO)
        await rb.wait_for("onCallReceived")
        await bob.accept()
        await ra2.wait_for("onCallBegin")
        # a third login as alice kicks the device that is in the call
        alice3, ra3 = await new_engine(server, "alice")
        try:
            assert await ra2.wait_for("onKickedOffline") == {}
            await rb.wait_for("onCallEnd")
            await quiet()
            assert rb.names()[-2:] == ["onUserLeave", "onCallEnd"]
            assert ra2.names() == [
                "onUserJoin",
                "onCallBegin",
                "onUserAudioAvailable",
                "onKickedOffline",
            ]
            assert alice2.call_state.value == "idle" and alice2.peers == {}
            assert ra3.names() == []
            if nodes_mode == "memory":
                assert server.online_users() == ["bob", "alice"]
            with pytest.raises(CallError) as err:
                await alice2.hangup()
            assert err.value.code == -1201
            # while ringing: the kicked callee counts as no response for the caller
            await bob.call("alice", CallMediaType.AUDIO)
            await ra3.wait_for("onCallReceived")
            alice4, _ra4 = await new_engine(server, "alice")
            await ra3.wait_for("onKickedOffline")
            await rb.wait_for("onCallCancelled", count=1)
            assert rb.sequence()[-2:] == [
                ("onUserNoResponse", {"userId": "alice"}),
                ("onCallCancelled", {"userId": "bob"}),
            ]
            await destroy(alice4)
        finally:
            await destroy(alice3)
        assert nodes_mode != "memory" or server.stats.kicked == 3
    finally:
        await destroy(alice1, alice2)


# ------------------------------------------------------------------ multi-device


@ALSO_CLUSTER
async def test_multi_device_first_accept_wins(
    server: SignalingServer, make_engine, nodes_mode: str
) -> None:
    alice, ra = await make_engine("alice", audio_source=ToneSource(440, -20))
    phone, rp = await new_engine(server, "bob", multi=True, audio_source=ToneSource(660, -20))
    laptop, rl = await new_engine(server, "bob", multi=True, audio_source=ToneSource(660, -20))
    try:
        if nodes_mode == "memory":
            assert server.user_info("bob")["devices"] == 2  # type: ignore[index]
        await alice.call("bob", CallMediaType.AUDIO)
        first = await rp.wait_for("onCallReceived")
        assert await rl.wait_for("onCallReceived") == first  # every device rings
        await laptop.accept()
        cancelled = await rp.wait_for("onCallCancelled")
        assert cancelled == {"userId": "bob", "reason": 7}  # OtherDeviceAccepted
        await ra.wait_for("onCallBegin")
        await rl.wait_for("onCallBegin")
        # media flows between alice and the laptop only
        await ra.wait_for(
            "onUserVoiceVolumeChanged", lambda p: p["volumeMap"].get("bob", 0) > 0, timeout=10
        )
        await rl.wait_for(
            "onUserVoiceVolumeChanged", lambda p: p["volumeMap"].get("alice", 0) > 0, timeout=10
        )
        assert phone.call_state.value == "idle" and phone.peers == {}
        assert list(laptop.peers) == ["alice"]
        with pytest.raises(CallError) as err:
            await phone.accept()
        assert err.value.code == -1203
        await laptop.hangup()
        await ra.wait_for("onCallEnd")
        await rl.wait_for("onCallEnd")
        await quiet()
        assert rp.names() == ["onCallReceived", "onCallCancelled"]
        assert rl.names() == [
            "onCallReceived",
            "onCallBegin",
            "onUserJoin",
            "onUserAudioAvailable",
            "onCallEnd",
        ]
        assert ra.names() == [
            "onUserJoin",
            "onCallBegin",
            "onUserAudioAvailable",
            "onUserLeave",
            "onCallEnd",
        ]
        # the phone, still online, can take the next call
        await alice.call("bob", CallMediaType.AUDIO)
        await rp.wait_for("onCallReceived", count=2)
        await rl.wait_for("onCallReceived", count=2)
        await phone.reject()
        assert await rl.wait_for("onCallCancelled") == {"userId": "bob", "reason": 8}
        await rp.wait_for("onCallCancelled", count=2)  # each socket has its own writer
        assert rp.of("onCallCancelled")[-1] == {"userId": "bob"}
        await ra.wait_for("onCallCancelled")
        assert ra.sequence()[-2:] == [
            ("onUserReject", {"userId": "bob"}),
            ("onCallCancelled", {"userId": "alice"}),
        ]
    finally:
        await destroy(phone, laptop)


async def test_multi_device_routing_and_limits_on_the_wire(server: SignalingServer) -> None:
    alice = await login(server.url or "", "alice")
    phone, _ = await raw_login(server.url or "", "bob", multiDevice=True)
    laptop, _ = await raw_login(server.url or "", "bob", multiDevice=True)
    call_id = (await alice.request("call", callees=["bob"], mediaType=1))["data"]["call"]["callId"]
    await phone.event("onCallReceived")
    await laptop.event("onCallReceived")
    assert (await laptop.request("accept", callId=call_id))["type"] == "ok"
    cancelled = await phone.event("onCallCancelled")
    assert cancelled["payload"] == {"userId": "bob", "reason": 7} and "call" not in cancelled
    # the phone is the same user but not the device in the call: it may not act on it
    for type_, fields in (
        ("hangup", {}),
        ("accept", {}),
        ("device", {"audio": False}),
        ("switchMedia", {"mediaType": 2}),
        ("invite", {"callees": ["carol"]}),
        ("relay", {"to": "alice", "kind": "offer", "data": {}}),
    ):
        reply = await phone.request(type_, callId=call_id, **fields)
        assert reply["type"] == "error" and reply["code"] == -1203, (type_, reply)
    # SDP reaches the laptop, never the phone
    assert (
        await alice.request(
            "relay", callId=call_id, to="bob", kind="offer", data={"sdp": "v=0", "type": "offer"}
        )
    )["type"] == "ok"
    relayed = await laptop.recv()
    while relayed["type"] != "relayed":
        relayed = await laptop.recv()
    assert relayed["fromUser"] == "alice"
    assert (await alice.request("device", callId=call_id, audio=False))["type"] == "ok"
    await laptop.event("onUserAudioAvailable")
    assert (await phone.request("ping"))["type"] == "ok"
    assert all(
        f["type"] != "relayed" and f.get("event") != "onUserAudioAvailable" for f in phone.inbox
    )
    # a cap on devices per user
    more = [(await raw_login(server.url or "", "bob", multiDevice=True))[0] for _ in range(2)]
    extra = await RawClient.connect(server.url or "")
    reply = await extra.request(
        "login", sdkAppId=SDK_APP_ID, userId="bob", userSig=sig("bob"), multiDevice=True
    )
    assert reply["type"] == "error" and reply["code"] == -1203
    assert "too many sessions" in reply["message"]
    # the laptop leaving cleanly takes bob out of the call even though other devices stay
    await laptop.close()
    assert (await alice.event("onUserLeave"))["payload"] == {"userId": "bob"}
    await alice.event("onCallEnd")
    # a single-device login replaces every multi-device session
    single, _ = await raw_login(server.url or "", "bob")
    frame = await phone.recv()
    assert frame["type"] == "kicked", frame
    assert server.user_info("bob")["devices"] == 1  # type: ignore[index]
    for c in (alice, phone, single, extra, *more):
        await c.close()
    await asyncio.sleep(0.1)
    assert server.idle()


# ------------------------------------------------------------------ self info


async def test_self_info_shows_in_rest_and_call_snapshots(
    server: SignalingServer, make_engine
) -> None:
    alice, ra = await make_engine("alice")
    await alice.set_self_info("Alice A.", "https://example.com/alice.png")
    base = (server.url or "").replace("ws://", "http://").replace("/ws", "")
    admin = {"Authorization": f"Bearer {sig('administrator')}"}
    async with aiohttp.ClientSession(headers=admin) as http:
        async with http.get(f"{base}/users/alice") as r:
            assert r.status == 200
            assert await r.json() == {
                "userId": "alice",
                "online": True,
                "devices": 1,
                "heldDevices": 0,
                "nickname": "Alice A.",
                "avatarUrl": "https://example.com/alice.png",
                "callId": None,
            }
        for who in ("nobody", "bad%20id"):
            async with http.get(f"{base}/users/{who}") as r:
                assert r.status == 404
        bob = await login(server.url or "", "bob")
        await alice.call("bob", CallMediaType.AUDIO)
        received = await bob.event("onCallReceived")
        members = {m["userId"]: m for m in received["call"]["members"]}
        assert members["alice"]["nickname"] == "Alice A."
        assert members["alice"]["avatarUrl"] == "https://example.com/alice.png"
        assert members["bob"]["nickname"] == ""
        async with http.get(f"{base}/calls") as r:
            (call,) = await r.json()
            assert call["members"][0]["nickname"] == "Alice A."
        async with http.get(f"{base}/users/alice") as r:
            assert (await r.json())["callId"] == received["callId"]
        await bob.close()
        await ra.wait_for("onCallCancelled")


# ------------------------------------------------------------------ user ids


@pytest.mark.parametrize(
    "user_id,ok",
    [
        ("alice", True),
        ("A-z_0-9", True),
        ("x" * 32, True),
        ("x" * 33, False),
        ("", False),
        ("alice\n", False),
        ("a b", False),
        ("ümlaut", False),
        ("a.b", False),
        (7, False),
        (None, False),
    ],
)
def test_valid_user_id(user_id: object, ok: bool) -> None:
    assert p.valid_user_id(user_id) is ok


BAD_IDS = ["", "a" * 33, "has space", "alice\n", "ümlaut", "a/b", "a.b", "tab\t"]


@ALSO_CLUSTER
async def test_user_ids_are_validated_on_both_sides(server: SignalingServer, make_engine) -> None:
    # engine side: init refuses before any network (-1201), even with no server at all
    offline = CallEngine("ws://127.0.0.1:9/ws")
    for bad in BAD_IDS:
        with pytest.raises(CallError) as err:
            await offline.init(SDK_APP_ID, bad, "sig")
        assert err.value.code == -1201, bad
    await offline.destroy()
    # server side: login -1201, callees -1202 (also what the engine raises for them)
    for bad in BAD_IDS:
        client = await RawClient.connect(server.url or "")
        reply = await client.request("login", sdkAppId=SDK_APP_ID, userId=bad, userSig="x")
        assert reply["type"] == "error" and reply["code"] == -1201, (bad, reply)
        await client.close()
    ok_id = "Az09_-" + "x" * 26
    assert len(ok_id) == 32
    _engine, rec = await make_engine(ok_id)
    alice, _ra = await make_engine("alice")
    raw = await login(server.url or "", "raw-user_1")
    for bad in [b for b in BAD_IDS if b]:
        with pytest.raises(CallError) as err:
            await alice.call(bad, CallMediaType.AUDIO)
        assert err.value.code == -1202, bad
        reply = await raw.request("call", callees=["bob", bad], mediaType=1)
        assert reply["type"] == "error" and reply["code"] == -1202, (bad, reply)
    await alice.call(ok_id, CallMediaType.AUDIO)
    await rec.wait_for("onCallReceived")
    await alice.hangup()
    await raw.close()
    assert alice.call_state.value == "idle"


# ------------------------------------------------------------------ membership


@ALSO_CLUSTER
async def test_only_members_act_on_a_call(server: SignalingServer) -> None:
    url = server.url or ""
    alice, bob, eve = [await login(url, u) for u in ("alice", "bob", "eve")]
    call_id = (await alice.request("call", callees=["bob"], mediaType=2))["data"]["call"]["callId"]
    await bob.event("onCallReceived")
    for type_, fields in (
        ("accept", {}),
        ("reject", {}),
        ("ignore", {}),
        ("hangup", {}),
        ("device", {"audio": False}),
        ("switchMedia", {"mediaType": 1}),
        ("invite", {"callees": ["carol"]}),
        ("relay", {"to": "bob", "kind": "offer", "data": {}}),
    ):
        reply = await eve.request(type_, callId=call_id, **fields)
        assert reply["type"] == "error" and reply["code"] == -1203, (type_, reply)
    # the caller cannot answer its own call, the callee cannot invite before accepting
    assert (await alice.request("accept", callId=call_id))["code"] == -1204
    assert (await bob.request("invite", callId=call_id, callees=["carol"]))["code"] == -1203
    assert (await bob.request("accept", callId=call_id))["type"] == "ok"
    await alice.event("onCallBegin")
    assert (await eve.request("join", roomId=12345, mediaType=2))["code"] == -1202
    # nothing eve did reached the call
    assert (await alice.request("ping"))["type"] == "ok"
    assert (await bob.request("ping"))["type"] == "ok"
    assert not [
        f
        for f in alice.inbox + bob.inbox
        if f.get("event") in ("onUserReject", "onUserLineBusy", "onCallMediaTypeChanged")
        or (f.get("event") == "onUserAudioAvailable" and not f["payload"]["isAudioAvailable"])
    ]
    assert not [f for f in alice.inbox + bob.inbox if f["type"] == "relayed"]
    assert [f for f in eve.inbox] == []
    await alice.request("hangup", callId=call_id)
    await bob.event("onCallEnd")
    for c in (alice, bob, eve):
        await c.close()
