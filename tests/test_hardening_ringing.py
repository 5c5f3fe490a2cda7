"""Phantom ringing (issue 9, defect 5): bounded ring timeouts, and a user who logs in while
being called rings (onCallReceived), as TUICallKit delivers a pending invitation."""

from __future__ import annotations

import pytest

from callkit import CallEngine, CallError, CallMediaType, CallParams
from callkit.media import ToneSource
from callkit.recorder import EventRecorder
from callkit.signaling import SignalingServer

from .conftest import LOOPBACK, SDK_APP_ID, sig
from .test_server import login


async def test_ring_timeout_is_bounded(server: SignalingServer) -> None:
    alice = await login(server.url or "", "alice")
    for timeout in (0, -1, 601, 1e9):
        reply = await alice.request("call", callees=["bob"], mediaType=1, timeout=timeout)
        assert reply["code"] == -1202 and "600" in reply["message"], reply
    assert server.registry.calls == {}
    reply = await alice.request("call", callees=["bob"], mediaType=1, timeout=600)
    assert reply["type"] == "ok"
    await alice.close()


@pytest.mark.loopback
async def test_login_while_called_rings_and_can_answer(
    server: SignalingServer, make_engine
) -> None:
    alice, ra = await make_engine("alice", audio_source=ToneSource(440, -20))
    with pytest.raises(CallError) as err:
        await alice.call("bob", CallMediaType.AUDIO, CallParams(timeout=601))
    assert err.value.code == -1202
    await alice.call("bob", CallMediaType.AUDIO, CallParams(timeout=20, user_data="hi"))  # offline
    bob = CallEngine(server.url or "", ice_addresses=LOOPBACK, audio_source=ToneSource(660, -20))
    rb = EventRecorder(bob, "bob")
    try:
        await bob.init(SDK_APP_ID, "bob", sig("bob"))
        received = await rb.wait_for("onCallReceived", timeout=5)
        assert received == {
            "callerId": "alice",
            "calleeIdList": ["bob"],
            "groupId": "",
            "callMediaType": 1,
            "userData": "hi",
        }
        assert bob.call_state.value == "ringing"
        await bob.accept()
        await ra.wait_for("onCallBegin")
        await rb.wait_for("onCallBegin")
        await rb.wait_for(
            "onUserVoiceVolumeChanged", lambda p: p["volumeMap"].get("alice", 0) > 0, timeout=10
        )
        await bob.hangup()
        await ra.wait_for("onCallEnd")
        # next time bob logs in during a ring and rejects: he is free again at once
        await bob.destroy()
        await alice.call("bob", CallMediaType.AUDIO, CallParams(timeout=20))
        bob2 = CallEngine(server.url or "", ice_addresses=LOOPBACK)
        rb2 = EventRecorder(bob2, "bob")
        await bob2.init(SDK_APP_ID, "bob", sig("bob"))
        await rb2.wait_for("onCallReceived", timeout=5)
        await bob2.reject()
        assert await ra.wait_for("onUserReject") == {"userId": "bob"}
        await rb2.wait_for("onCallCancelled")
        await bob2.call("alice", CallMediaType.AUDIO)  # not locked out (-1203)
        await ra.wait_for("onCallReceived")
        await bob2.hangup()
        await bob2.destroy()
    finally:
        await bob.destroy()
