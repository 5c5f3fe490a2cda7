"""Loopback group calls: full mesh of real peer connections, group event rules."""

from __future__ import annotations

import asyncio

import pytest

from callkit import CallError, CallMediaType, CallParams
from callkit.media import ToneSource
from callkit.signaling.grants import group_grant
from callkit.signaling.usersig import gen_user_sig

from .conftest import NODES_MODES, SDK_APP_ID, SECRET
from .helpers import assert_payload_keys, quiet, recent_volume

#: every test runs against one in-memory node and three Redis-backed nodes (users spread)
pytestmark = [
    pytest.mark.loopback,
    pytest.mark.parametrize("nodes_mode", NODES_MODES, indirect=True),
]

LEVELS = {"alice": -20, "bob": -30, "carol": -40, "dave": -25}


def expected_volume(user: str) -> int:
    return round(2 * (LEVELS[user] + 60))


async def talkers(make_engine, *names: str):
    out = {}
    for name in names:
        out[name] = await make_engine(
            name, audio_source=ToneSource(300 + 100 * len(out), level_dbfs=LEVELS[name])
        )
    return out


async def assert_everyone_hears_everyone(parties: dict, names: list[str]) -> None:
    """Each participant's volumeMap carries every other one at the level they send."""
    for name in names:
        rec = parties[name][1]
        for other in names:
            if other != name:
                await rec.wait_for(
                    "onUserVoiceVolumeChanged",
                    lambda p, o=other: p["volumeMap"].get(o, 0) > 0,
                    timeout=10,
                )
    await asyncio.sleep(2.0)
    for name in names:
        rec = parties[name][1]
        for other in names:
            got = recent_volume(rec, other)
            assert abs(got - expected_volume(other)) <= 4, (name, "hears", other, got)


async def test_three_party_group_call_full_mesh(make_engine) -> None:
    parties = await talkers(make_engine, "alice", "bob", "carol")
    (alice, ra), (bob, rb), (carol, rc) = parties["alice"], parties["bob"], parties["carol"]
    await alice.group_call(["bob", "carol"], "team", CallMediaType.AUDIO)
    for rec in (rb, rc):
        received = await rec.wait_for("onCallReceived")
        assert received == {
            "callerId": "alice",
            "calleeIdList": ["bob", "carol"],
            "groupId": "team",
            "callMediaType": 1,
            "userData": "",
        }
    await bob.accept()
    await ra.wait_for("onCallBegin")
    await carol.accept()
    await rb.wait_for("onUserJoin", lambda p: p["userId"] == "carol")
    await assert_everyone_hears_everyone(parties, ["alice", "bob", "carol"])
    assert set(alice.peers) == {"bob", "carol"} and set(carol.peers) == {"alice", "bob"}

    await carol.hangup()
    await rc.wait_for("onCallEnd")
    for rec in (ra, rb):
        await rec.wait_for("onUserLeave", lambda p: p["userId"] == "carol")
    await asyncio.sleep(0.6)  # alice and bob are still in the call and still hear each other
    assert "onCallEnd" not in ra.names() and recent_volume(ra, "bob", 1) > 0
    await alice.hangup()
    await rb.wait_for("onCallEnd")
    await quiet()
    assert ra.names() == [
        "onUserJoin",
        "onCallBegin",
        "onUserAudioAvailable",
        "onUserJoin",
        "onUserAudioAvailable",
        "onUserLeave",
        "onCallEnd",
    ]
    assert rb.names() == [
        "onCallReceived",
        "onCallBegin",
        "onUserJoin",
        "onUserAudioAvailable",
        "onUserJoin",
        "onUserAudioAvailable",
        "onUserLeave",
        "onUserLeave",
        "onCallEnd",
    ]
    assert [p["userId"] for p in rb.of("onUserJoin")] == ["alice", "carol"]
    assert [p["userId"] for p in rb.of("onUserLeave")] == ["carol", "alice"]
    assert rc.names() == [
        "onCallReceived",
        "onCallBegin",
        "onUserJoin",
        "onUserAudioAvailable",
        "onUserJoin",
        "onUserAudioAvailable",
        "onCallEnd",
    ]
    for rec in (ra, rb, rc):
        assert_payload_keys(rec)


async def test_reject_busy_and_no_response_reach_every_participant(make_engine) -> None:
    alice, ra = await make_engine("alice")
    bob, rb = await make_engine("bob")
    carol, rc = await make_engine("carol")
    dave, rd = await make_engine("dave")
    _erin, re_ = await make_engine("erin")
    await dave.call("erin", CallMediaType.AUDIO)  # dave is busy
    await re_.wait_for("onCallReceived")
    await alice.group_call(
        ["bob", "carol", "dave"], "g", CallMediaType.AUDIO, CallParams(timeout=20)
    )
    await ra.wait_for("onUserLineBusy")
    await rb.wait_for("onCallReceived")
    await bob.accept()
    await ra.wait_for("onCallBegin")
    await rc.wait_for("onCallReceived")
    await carol.reject()
    for rec in (ra, rb):
        assert await rec.wait_for("onUserReject") == {"userId": "carol"}
    # an offline invitee rings until its own timeout: no response, never a hang
    await alice.invite_user(["frank"], CallParams(timeout=1.5))
    for rec in (ra, rb):
        assert await rec.wait_for("onUserNoResponse", timeout=6) == {"userId": "frank"}
    await quiet()
    assert ra.sequence() == [
        ("onUserLineBusy", {"userId": "dave"}),
        ("onUserJoin", {"userId": "bob"}),
        ("onCallBegin", ra.of("onCallBegin")[0]),
        ("onUserAudioAvailable", {"userId": "bob", "isAudioAvailable": True}),
        ("onUserReject", {"userId": "carol"}),
        ("onUserNoResponse", {"userId": "frank"}),
    ]
    assert rb.names() == [
        "onCallReceived",
        "onCallBegin",
        "onUserJoin",
        "onUserAudioAvailable",
        "onUserReject",
        "onUserNoResponse",
    ]
    assert rc.names() == ["onCallReceived", "onCallCancelled"]
    assert rd.names() == []  # the busy user hears nothing of it
    await alice.hangup()
    await rb.wait_for("onCallEnd")


async def test_invite_mid_call_and_join_by_room_id(make_engine) -> None:
    parties = await talkers(make_engine, "alice", "bob", "carol", "dave")
    (alice, ra), (bob, rb) = parties["alice"], parties["bob"]
    (carol, rc), (dave, rd) = parties["carol"], parties["dave"]
    # dave may join the team's calls uninvited: the app granted him the group in his UserSig
    grant = gen_user_sig(SDK_APP_ID, SECRET, "dave", 3600, userbuf=group_grant(["team"]))
    await dave.init(SDK_APP_ID, "dave", grant)
    await alice.group_call(["bob"], "team", CallMediaType.AUDIO)
    await rb.wait_for("onCallReceived")
    await bob.accept()
    begin = await ra.wait_for("onCallBegin")
    await rb.wait_for("onCallBegin")  # over Redis nodes the event can trail the reply
    await bob.invite_user(["carol"])  # any participant may invite
    received = await rc.wait_for("onCallReceived")
    assert received["callerId"] == "bob" and set(received["calleeIdList"]) == {"alice", "carol"}
    await carol.accept()
    await dave.join_in_group_call(begin["roomID"], "team", CallMediaType.AUDIO)
    dave_begin = await rd.wait_for("onCallBegin")
    assert dave_begin == {"roomID": begin["roomID"], "callMediaType": 1, "callRole": 2}
    for rec in (ra, rb, rc):
        await rec.wait_for("onUserJoin", lambda p: p["userId"] == "dave")
    await rd.wait_for("onUserAudioAvailable", count=3)  # the last events of the join
    assert [p["userId"] for p in rd.of("onUserJoin")] == ["alice", "bob", "carol"]
    await assert_everyone_hears_everyone(parties, ["alice", "bob", "carol", "dave"])
    for name, (engine, _) in parties.items():
        assert set(engine.peers) == set(parties) - {name}
    for engine, rec in ((dave, rd), (carol, rc), (bob, rb)):
        await engine.hangup()
        await rec.wait_for("onCallEnd")
    await ra.wait_for("onCallEnd")  # the last one left ends the call


async def test_caller_leaves_group_while_others_ring_and_talk(make_engine) -> None:
    parties = await talkers(make_engine, "alice", "bob", "carol")
    (alice, ra), (bob, rb), (carol, rc) = parties["alice"], parties["bob"], parties["carol"]
    await alice.group_call(["bob", "carol"], "g", CallMediaType.AUDIO)
    await rb.wait_for("onCallReceived")
    await bob.accept()
    await ra.wait_for("onCallBegin")
    await alice.hangup()
    await ra.wait_for("onCallEnd")
    assert await rb.wait_for("onUserLeave") == {"userId": "alice"}
    # bob waits for carol, who is still ringing; she accepts and they talk
    await rc.wait_for("onCallReceived")
    await carol.accept()
    await rb.wait_for("onUserJoin", lambda p: p["userId"] == "carol")
    await rb.wait_for("onUserVoiceVolumeChanged", lambda p: p["volumeMap"].get("carol", 0) > 0)
    await bob.hangup()
    await rc.wait_for("onCallEnd")
    await quiet()
    assert rc.names() == [
        "onCallReceived",
        "onCallBegin",
        "onUserJoin",
        "onUserAudioAvailable",
        "onUserLeave",
        "onCallEnd",
    ]
    assert rb.names()[-4:] == ["onUserLeave", "onUserJoin", "onUserAudioAvailable", "onCallEnd"]


async def test_group_parameter_errors(make_engine) -> None:
    alice, _ = await make_engine("alice")
    cases = [
        (["alice", "bob"], "self"),
        (["bob", "bob"], "duplicate"),
        ([f"u{i}" for i in range(9)], "more than 8"),
        ([], "empty"),
        (["bob", 3], "type"),
    ]
    for ids, what in cases:
        with pytest.raises(CallError) as err:
            await alice.group_call(ids, "g", CallMediaType.AUDIO)
        assert err.value.code == -1202, what
    with pytest.raises(CallError) as err:
        await alice.invite_user(["bob"])  # not in a call
    assert err.value.code == -1203
    with pytest.raises(CallError) as err:
        await alice.join_in_group_call(123456, "g", CallMediaType.AUDIO)  # no such room
    assert err.value.code == -1202
