"""Malformed relays against the server and against engines (issue 9, defect 3 and nesting).

The server refuses relay data it can tell is malformed (offer / answer must be
``{sdp: str, type}``; candidates typed; nesting bounded) with -1202 and forwards nothing. What
it cannot tell (an SDP string that breaks aiortc) reaches the engine, whose signaling worker
drops it with a log line and onError -1301, and applies the next good message.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from callkit import CallMediaType
from callkit.media import ToneSource
from callkit.signaling import SignalingServer

from .test_server import login


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


async def test_server_refuses_malformed_relay_data(server: SignalingServer) -> None:
    url = server.url or ""
    alice, bob = await login(url, "alice"), await login(url, "bob")
    reply = await alice.request("call", callees=["bob"], mediaType=1)
    call_id = reply["data"]["call"]["callId"]
    await bob.event("onCallReceived")
    await bob.request("accept", callId=call_id)
    await alice.event("onCallBegin")
    to_bob = {"callId": call_id, "to": "bob"}
    bad = [
        ("offer", {"sdp": 5, "type": "offer"}),
        ("offer", {"sdp": {"x": 1}, "type": "offer"}),
        ("offer", {"type": "offer"}),
        ("offer", {"sdp": "v=0", "type": "answer"}),
        ("answer", {"sdp": "", "type": "answer"}),
        ("candidate", {"candidate": 5}),
        ("candidate", {"candidate": "c", "sdpMLineIndex": "0"}),
        ("candidate", {"candidate": "x" * 2000}),
        ("renegotiate", nested(40)),
        ("offer", {"sdp": "v=0", "type": "offer", "extra": nested(20)}),
    ]
    for kind, data in bad:
        reply = await alice.request("relay", kind=kind, data=data, **to_bob)
        assert reply["type"] == "error" and reply["code"] == -1202, (kind, reply)
    # ~990 levels: refused as well (not parsed into a reply of ok and dropped later)
    deep = "{" + '"a":{' * 989 + "}" * 990
    head = f'{{"v":1,"type":"relay","id":77,"callId":"{call_id}","to":"bob","kind":"renegotiate"'
    frame = head + f',"data":{deep}}}'
    await alice.send_raw(frame)
    answer = await alice.recv()
    assert answer["type"] == "error" and answer["code"] in (-1202, -1402), answer
    # good ones still pass
    good = {"sdp": "v=0\r\n", "type": "offer"}
    assert (await alice.request("relay", kind="offer", data=good, **to_bob))["type"] == "ok"
    frames = [await bob.recv()]
    while frames[-1]["type"] != "relayed":
        frames.append(await bob.recv())
    assert [f["data"] for f in frames if f["type"] == "relayed"] == [good]  # only the good one
    assert server.stats.internal_errors == 0
    for c in (alice, bob):
        await c.close()


@pytest.mark.loopback
async def test_engine_survives_hostile_offers(server: SignalingServer, make_engine) -> None:
    alice, _ = await make_engine("alice", audio_source=ToneSource(440, -20))
    bob, rb = await make_engine("bob", audio_source=ToneSource(550, -20))
    carol, rc = await make_engine("carol", audio_source=ToneSource(660, -20))
    mallory = await login(server.url or "", "mallory")
    await alice.group_call(["bob", "mallory"], "g", CallMediaType.AUDIO)
    await rb.wait_for("onCallReceived")
    await bob.accept()
    call_id = (await mallory.event("onCallReceived"))["callId"]
    assert (await mallory.request("accept", callId=call_id))["type"] == "ok"
    await rb.wait_for("onUserJoin", lambda p: p["userId"] == "mallory")
    # mallory joined last, so bob waits for her offer: she sends SDP that breaks aiortc in
    # several ways (AssertionError, ValueError, RuntimeError inside it)
    for sdp in (
        "m=audio",
        "v=0 garbage",
        "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=fmtp:96 x\r\na=ssrc-group:FID\r\n",
    ):
        data = {"sdp": sdp, "type": "offer"}
        reply = await mallory.request("relay", callId=call_id, to="bob", kind="offer", data=data)
        assert reply["type"] == "ok"
    await rb.wait_for("onError", lambda p: p["code"] == -1301)
    # the next good offer is applied: carol is invited, accepts, offers, and bob hears her
    await bob.invite_user(["carol"])
    await rc.wait_for("onCallReceived")
    await carol.accept()
    await rb.wait_for(
        "onUserVoiceVolumeChanged", lambda p: p["volumeMap"].get("carol", 0) > 0, timeout=15
    )
    await rc.wait_for(
        "onUserVoiceVolumeChanged", lambda p: p["volumeMap"].get("bob", 0) > 0, timeout=15
    )
    assert bob.call_state.value == "connected"
    await mallory.close()
    await asyncio.sleep(0)
    json.dumps(rb.of("onError"))  # payloads stay JSON-able


async def test_usersig_with_a_768_byte_userbuf_logs_in(server: SignalingServer) -> None:
    from callkit.signaling.usersig import gen_user_sig

    from .conftest import SDK_APP_ID, SECRET
    from .test_server import RawClient

    userbuf = bytes(range(256)) * 3  # 768 bytes, incompressible enough to be realistic
    user_sig = gen_user_sig(SDK_APP_ID, SECRET, "alice", 3600, userbuf=userbuf)
    assert len(user_sig) > 1024
    client = await RawClient.connect(server.url or "")
    reply = await client.request("login", sdkAppId=SDK_APP_ID, userId="alice", userSig=user_sig)
    assert reply["type"] == "ok", reply
    other = await RawClient.connect(server.url or "")
    reply = await other.request("login", sdkAppId=SDK_APP_ID, userId="bob", userSig="x" * 5000)
    assert reply["code"] == -1202 and "4096" in reply["message"]
    for c in (client, other):
        await c.close()
