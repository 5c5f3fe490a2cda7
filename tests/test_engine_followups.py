"""Engine negotiation edge cases: answering a peer that offers audio only, and the offer
watchdog that runs only for members who joined after us (they owe us an offer)."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from callkit import CallMediaType
from callkit.media import ToneSource
from callkit.media.tracks import LocalAudio
from callkit.signaling import SignalingServer
from callkit.testing import wait_hears

from .conftest import EngineAndRecorder
from .helpers import connect
from .test_server import login

pytestmark = pytest.mark.loopback


async def test_engine_answers_a_raw_aiortc_peer_that_offers_audio_only(
    server: SignalingServer, make_engine: EngineAndRecorder
) -> None:
    # the raw peer joins later, so it offers: one audio m-line, no video (a video call, so
    # the engine would like to send video but must answer with the offer's m-lines only)
    alice, ra = await make_engine("alice", audio_source=ToneSource(440, -20))
    raw = await login(server.url or "", "rawbob")
    tone = LocalAudio(ToneSource(660, -20))
    pc = RTCPeerConnection()
    try:
        await alice.call("rawbob", CallMediaType.VIDEO)
        call_id = (await raw.event("onCallReceived"))["callId"]
        assert (await raw.request("accept", callId=call_id))["type"] == "ok"
        await ra.wait_for("onCallBegin")
        pc.addTransceiver(tone.subscribe(), direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        assert "m=video" not in pc.localDescription.sdp
        offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
        reply = await raw.request("relay", callId=call_id, to="alice", kind="offer", data=offer)
        assert reply["type"] == "ok", reply
        answer = None
        for _ in range(20):  # a few events (onUserJoin ...) may come first
            frame = await raw.recv(timeout=10)
            if frame["type"] == "relayed" and frame["kind"] == "answer":
                answer = frame["data"]
                break
        assert answer is not None, f"no answer from alice; errors: {ra.of('onError')}"
        assert answer["sdp"].count("m=") == 1 and "m=audio" in answer["sdp"]
        await pc.setRemoteDescription(RTCSessionDescription(**answer))
        await wait_hears(alice, "rawbob", -20, timeout=15)
        assert ra.of("onError") == [], ra.of("onError")
        assert pc.connectionState == "connected"
    finally:
        await pc.close()
        await tone.stop()
        await raw.close()


def watchdogs(owner: str) -> set[str]:
    """Offer watchdogs running in this loop for engine ``owner``: the users it waits on."""
    prefix = f"callkit-offer-watchdog {owner}<-"
    return {
        t.get_name().removeprefix(prefix)
        for t in asyncio.all_tasks()
        if t.get_name().startswith(prefix) and not t.done()
    }


async def test_offer_watchdog_only_for_members_who_joined_later(
    make_engine: EngineAndRecorder,
) -> None:
    alice, ra = await make_engine("alice", audio_source=ToneSource(440, -20))
    bob, rb = await make_engine("bob", audio_source=ToneSource(660, -20))
    carol, rc = await make_engine("carol", audio_source=ToneSource(550, -20))
    await connect(alice, ra, bob, rb)
    await rb.wait_for("onUserJoin", lambda p: p["userId"] == "alice")
    # alice (the caller) waits for bob's offer; bob, who offers, waits for nobody
    assert watchdogs("alice") == {"bob"}
    assert watchdogs("bob") == set()
    # carol joins later: the members already in wait for her offer; she waits for nobody,
    # although she gets onUserJoin for each of them
    await alice.invite_user(["carol"])
    await rc.wait_for("onCallReceived")
    await carol.accept()
    await rc.wait_for("onCallBegin")
    await rc.wait_for("onUserJoin", lambda p: p["userId"] == "bob")
    await ra.wait_for("onUserJoin", lambda p: p["userId"] == "carol")
    await rb.wait_for("onUserJoin", lambda p: p["userId"] == "carol")
    assert watchdogs("carol") == set()
    assert watchdogs("bob") == {"carol"}
    assert "carol" in watchdogs("alice")  # (its watchdog on bob ends 10 s after its begin)
    await wait_hears(carol, "alice", -20)
    await wait_hears(carol, "bob", -20)
    await alice.hangup()
    await bob.hangup()
    await rc.wait_for("onCallEnd")
