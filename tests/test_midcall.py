"""Loopback mid-call changes: media type switch (real renegotiation), microphone, camera."""

from __future__ import annotations

import asyncio

import pytest

from callkit import CallError, CallMediaType
from callkit.media import TestPatternSource, ToneSource

from .helpers import connect, recent_volume

pytestmark = pytest.mark.loopback


async def connected_pair(make_engine, media: CallMediaType):
    alice, ra = await make_engine(
        "alice", audio_source=ToneSource(440, -20), video_source=TestPatternSource(160, 120, 15)
    )
    bob, rb = await make_engine(
        "bob", audio_source=ToneSource(660, -30), video_source=TestPatternSource(160, 120, 15)
    )
    await connect(alice, ra, bob, rb, media)
    for rec, other in ((ra, "bob"), (rb, "alice")):
        await rec.wait_for("onUserVoiceVolumeChanged", lambda p, o=other: p["volumeMap"][o] > 0)
    return alice, ra, bob, rb


def frames(engine, other: str) -> int:
    video = engine.peers[other].remote_video
    return video.frames_received if video is not None else 0


async def frames_grow(engine, other: str, seconds: float = 1.0) -> int:
    before = frames(engine, other)
    await asyncio.sleep(seconds)
    return frames(engine, other) - before


async def test_switch_video_to_audio_and_back(make_engine) -> None:
    alice, ra, bob, rb = await connected_pair(make_engine, CallMediaType.VIDEO)
    assert await frames_grow(alice, "bob") > 5 and await frames_grow(bob, "alice") > 5
    negotiations = alice.peers["bob"].negotiations

    await alice.switch_call_media_type(CallMediaType.AUDIO)
    for rec in (ra, rb):
        assert await rec.wait_for("onCallMediaTypeChanged") == {
            "oldCallMediaType": 2,
            "newCallMediaType": 1,
        }
    await asyncio.sleep(0.8)  # renegotiation + frames already in flight
    assert alice.peers["bob"].negotiations > negotiations  # a real SDP round
    assert await frames_grow(alice, "bob") == 0 and await frames_grow(bob, "alice") == 0
    assert recent_volume(ra, "bob", 2) > 0  # audio goes on

    with pytest.raises(CallError) as err:
        await bob.switch_call_media_type(CallMediaType.AUDIO)
    assert err.value.code == -1204
    with pytest.raises(CallError) as err:
        await bob.open_camera()
    assert err.value.code == -1205

    await bob.switch_call_media_type(CallMediaType.VIDEO)
    for rec in (ra, rb):
        await rec.wait_for("onCallMediaTypeChanged", lambda p: p["newCallMediaType"] == 2)
    await asyncio.sleep(1.0)
    assert await frames_grow(alice, "bob") > 5 and await frames_grow(bob, "alice") > 5
    await alice.hangup()
    await rb.wait_for("onCallEnd")


async def test_audio_call_upgraded_to_video(make_engine) -> None:
    alice, ra, bob, rb = await connected_pair(make_engine, CallMediaType.AUDIO)
    assert frames(alice, "bob") == 0
    await bob.switch_call_media_type(CallMediaType.VIDEO)
    for rec in (ra, rb):
        await rec.wait_for("onCallMediaTypeChanged")
    for engine, rec, other in ((alice, ra, "bob"), (bob, rb, "alice")):
        await rec.wait_for("onUserVideoAvailable", lambda p, o=other: p["userId"] == o)
        assert await frames_grow(engine, other) > 5
        assert engine.peers[other].remote_video.last_size == (160, 120)
    await bob.hangup()
    await ra.wait_for("onCallEnd")


async def test_microphone_and_camera(make_engine) -> None:
    alice, ra, bob, rb = await connected_pair(make_engine, CallMediaType.VIDEO)
    await bob.close_microphone()
    muted = await ra.wait_for("onUserAudioAvailable", lambda p: not p["isAudioAvailable"])
    assert muted == {"userId": "bob", "isAudioAvailable": False}
    await asyncio.sleep(1.2)
    assert recent_volume(ra, "bob", 2) == 0  # silence reaches alice
    assert recent_volume(rb, "bob", 2) == 0  # and bob's own meter says so
    await bob.open_microphone()
    await ra.wait_for("onUserAudioAvailable", lambda p: p["isAudioAvailable"], count=2)
    await asyncio.sleep(1.2)
    assert abs(recent_volume(ra, "bob", 2) - 60) <= 4

    await bob.close_camera()
    assert await ra.wait_for("onUserVideoAvailable", lambda p: not p["isVideoAvailable"]) == {
        "userId": "bob",
        "isVideoAvailable": False,
    }
    await asyncio.sleep(0.5)
    assert await frames_grow(alice, "bob") == 0
    assert await frames_grow(bob, "alice") > 5  # alice's camera is untouched
    await bob.open_camera()
    await ra.wait_for("onUserVideoAvailable", lambda p: p["isVideoAvailable"], count=2)
    await asyncio.sleep(0.5)
    assert await frames_grow(alice, "bob") > 5
    # only the others are told (bob heard once, at the start, that alice's mic is on)
    assert rb.of("onUserAudioAvailable") == [{"userId": "alice", "isAudioAvailable": True}]
    await alice.hangup()
    await rb.wait_for("onCallEnd")
