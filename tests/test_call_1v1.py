"""Loopback: a real server, real engines, real aiortc media; whole 1v1 event sequences."""

from __future__ import annotations

import asyncio

import pytest

from callkit import CallError, CallMediaType, CallParams
from callkit.media import TestPatternSource, ToneSource

from .conftest import NODES_MODES
from .helpers import assert_payload_keys, connect, quiet, recent_volume, ring

#: every test runs against one in-memory node and three Redis-backed nodes (users spread)
pytestmark = [
    pytest.mark.loopback,
    pytest.mark.parametrize("nodes_mode", NODES_MODES, indirect=True),
]


async def test_video_call_carries_real_audio_and_video(make_engine) -> None:
    alice, ra = await make_engine(
        "alice",
        audio_source=ToneSource(440, level_dbfs=-20),
        video_source=TestPatternSource(160, 120, 15),
    )
    bob, rb = await make_engine(
        "bob",
        audio_source=ToneSource(660, level_dbfs=-40),
        video_source=TestPatternSource(160, 120, 15),
    )
    await alice.call("bob", CallMediaType.VIDEO, CallParams(user_data="hello"))
    received = await rb.wait_for("onCallReceived")
    assert received == {
        "callerId": "alice",
        "calleeIdList": ["bob"],
        "groupId": "",
        "callMediaType": 2,
        "userData": "hello",
    }
    await bob.accept()
    begin_a = await ra.wait_for("onCallBegin")
    begin_b = await rb.wait_for("onCallBegin")
    assert begin_a["callRole"] == 1 and begin_b["callRole"] == 2
    assert begin_a["roomID"] == begin_b["roomID"] and isinstance(begin_a["roomID"], int)
    assert begin_a["callMediaType"] == begin_b["callMediaType"] == 2

    # let media connect and the jitter buffers fill, then read a few 300 ms windows
    await rb.wait_for("onUserVoiceVolumeChanged", lambda p: p["volumeMap"]["alice"] > 0, timeout=10)
    await asyncio.sleep(2.5)
    assert abs(recent_volume(rb, "alice") - 80) <= 4  # -20 dBFS tone decoded at bob
    assert abs(recent_volume(ra, "bob") - 40) <= 4  # -40 dBFS tone decoded at alice
    assert abs(recent_volume(ra, "alice") - 80) <= 4  # local volume from the source
    assert abs(recent_volume(rb, "bob") - 40) <= 4
    for engine, other in ((alice, "bob"), (bob, "alice")):
        video = engine.peers[other].remote_video
        assert video is not None and video.frames_received > 10
        assert video.last_size == (160, 120)

    await asyncio.sleep(1.0)  # so totalTime is at least a few seconds
    await alice.hangup()
    end_a = await ra.wait_for("onCallEnd")
    end_b = await rb.wait_for("onCallEnd")
    await quiet()
    assert end_a["totalTime"] == end_b["totalTime"] >= 3
    # each side learns the other's video is available when its first frame decodes
    # and that the other joined with the microphone on (onUserAudioAvailable, from the server)
    assert ra.names() == [
        "onUserJoin",
        "onCallBegin",
        "onUserAudioAvailable",
        "onUserVideoAvailable",
        "onCallEnd",
    ]
    assert rb.names() == [
        "onCallReceived",
        "onCallBegin",
        "onUserJoin",
        "onUserAudioAvailable",
        "onUserVideoAvailable",
        "onUserLeave",
        "onCallEnd",
    ]
    assert ra.of("onUserVideoAvailable") == [{"userId": "bob", "isVideoAvailable": True}]
    assert rb.of("onUserVideoAvailable") == [{"userId": "alice", "isVideoAvailable": True}]
    assert rb.of("onUserLeave") == [{"userId": "alice"}]
    assert ra.of("onUserJoin") == [{"userId": "bob"}]
    assert rb.of("onUserJoin") == [{"userId": "alice"}]
    assert end_a == {
        "roomID": begin_a["roomID"],
        "callMediaType": 2,
        "callRole": 1,
        "totalTime": end_a["totalTime"],
    }
    assert_payload_keys(ra)
    assert_payload_keys(rb)
    assert alice.peers == {} and bob.peers == {}


async def test_caller_cancels_while_ringing(make_engine) -> None:
    alice, ra = await make_engine("alice")
    bob, rb = await make_engine("bob")
    await ring(alice, rb, "bob")
    await alice.hangup()
    await rb.wait_for("onCallCancelled")
    await quiet()
    assert ra.sequence() == [("onCallCancelled", {"userId": "alice"})]
    assert rb.names() == ["onCallReceived", "onCallCancelled"]
    assert rb.of("onCallCancelled") == [{"userId": "alice"}]
    # both are idle again: a new call works
    await bob.call("alice", CallMediaType.AUDIO)
    await ra.wait_for("onCallReceived")


async def test_callee_rejects(make_engine) -> None:
    alice, ra = await make_engine("alice")
    bob, rb = await make_engine("bob")
    await ring(alice, rb, "bob", CallMediaType.VIDEO)
    await bob.reject()
    await ra.wait_for("onCallCancelled")
    await quiet()
    assert ra.sequence() == [
        ("onUserReject", {"userId": "bob"}),
        ("onCallCancelled", {"userId": "alice"}),
    ]
    assert rb.sequence()[1:] == [("onCallCancelled", {"userId": "bob"})]
    with pytest.raises(CallError) as err:
        await bob.accept()  # nothing is ringing any more
    assert err.value.code == -1203


async def test_callee_does_not_answer_in_time(make_engine) -> None:
    alice, ra = await make_engine("alice")
    _bob, rb = await make_engine("bob")
    await ring(alice, rb, "bob", params=CallParams(timeout=2))
    await ra.wait_for("onCallCancelled", timeout=6)
    await rb.wait_for("onCallCancelled")
    await quiet()
    assert ra.sequence() == [
        ("onUserNoResponse", {"userId": "bob"}),
        ("onCallCancelled", {"userId": "alice"}),
    ]
    assert rb.sequence()[1:] == [("onCallCancelled", {"userId": "bob"})]


async def test_callee_busy_in_another_call(make_engine) -> None:
    alice, ra = await make_engine("alice", audio_source=ToneSource(440, -20))
    bob, rb = await make_engine("bob")
    carol, rc = await make_engine("carol")
    await connect(alice, ra, bob, rb)
    await rb.wait_for("onUserAudioAvailable")  # the last event of the accept reached bob
    before_bob = rb.names()
    await carol.call("bob", CallMediaType.AUDIO)
    await rc.wait_for("onCallCancelled")
    await quiet()
    assert rc.sequence() == [
        ("onUserLineBusy", {"userId": "bob"}),
        ("onCallCancelled", {"userId": "carol"}),
    ]
    assert rb.names() == before_bob  # the busy callee hears nothing
    await bob.hangup()
    await ra.wait_for("onCallEnd")


async def test_callee_ignores(make_engine) -> None:
    alice, ra = await make_engine("alice")
    bob, rb = await make_engine("bob")
    await ring(alice, rb, "bob")
    await bob.ignore()
    await ra.wait_for("onCallCancelled")
    await quiet()
    assert ra.sequence() == [
        ("onUserLineBusy", {"userId": "bob"}),
        ("onCallCancelled", {"userId": "alice"}),
    ]
    assert rb.sequence()[1:] == [("onCallCancelled", {"userId": "bob"})]


async def test_refused_calls_raise_documented_codes(make_engine, server) -> None:
    from callkit import CallEngine

    idle = CallEngine(server.url)
    with pytest.raises(CallError) as err:
        await idle.call("bob", CallMediaType.AUDIO)
    assert err.value.code == -1201
    with pytest.raises(CallError) as err:
        await idle.init(1400000001, "mallory", "not-a-sig")
    assert err.value.code == -1201
    await idle.destroy()

    alice, ra = await make_engine("alice")
    bob, rb = await make_engine("bob")
    for bad in ("alice", ""):
        with pytest.raises(CallError) as err:
            await alice.call(bad, CallMediaType.AUDIO)
        assert err.value.code == -1202
    with pytest.raises(CallError) as err:
        await alice.call("bob", 3)
    assert err.value.code == -1202
    for method in (alice.accept, alice.reject, alice.ignore, alice.hangup):
        with pytest.raises(CallError) as err:
            await method()
        assert err.value.code == -1203, method
    await alice.call("bob", CallMediaType.AUDIO)
    with pytest.raises(CallError) as err:
        await alice.call("bob", CallMediaType.AUDIO)
    assert err.value.code == -1203
    await rb.wait_for("onCallReceived")
    await bob.accept()
    with pytest.raises(CallError) as err:
        await bob.accept()
    assert err.value.code == -1204
    await ra.wait_for("onCallBegin")
    await alice.hangup()
    await rb.wait_for("onCallEnd")
