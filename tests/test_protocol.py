"""Wire messages: every type round-trips; malformed input becomes a ProtocolError with a code."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callkit.signaling import protocol as p

SAMPLES: list[p.Message] = [
    p.Login(id=1, sdk_app_id=1400000001, user_id="alice", user_sig="sig", multi_device=True),
    p.Call(
        id=2, callees=["bob", "carol"], media_type=2, group_id="g1", timeout=12.5, user_data="x"
    ),
    p.Accept(id=3, call_id="c"),
    p.Reject(id=4, call_id="c"),
    p.Ignore(id=5, call_id="c"),
    p.Hangup(id=6, call_id="c"),
    p.Invite(id=7, call_id="c", callees=["dave"], timeout=5.0),
    p.Join(id=8, room_id=42, group_id="g1", media_type=1),
    p.SwitchMedia(id=9, call_id="c", media_type=1),
    p.Device(id=10, call_id="c", audio=False),
    p.Relay(id=11, call_id="c", to="bob", kind="offer", data={"sdp": "v=0", "type": "offer"}),
    p.SelfInfo(id=12, nickname="Al", avatar_url="http://x/a.png"),
    p.MultiDevice(id=16, enable=True),
    p.Ping(id=13),
    p.Reply(id=1, data={"call": {"callId": "c"}}),
    p.ErrorReply(id=None, code=-1402, message="bad"),
    p.Event(event="onCallBegin", call_id="c", payload={"roomID": 1}, call={"callId": "c"}),
    p.Relayed(call_id="c", from_user="alice", kind="answer", data={"sdp": "v=0"}),
    p.Kicked(),
    p.SigExpired(),
    p.Login(id=14, sdk_app_id=1400000001, user_id="alice", user_sig="sig", resume="tok"),
    p.QueryRecords(id=15, result="NormalEnd", since=1, until=2, page=2, page_size=10),
    p.DeleteRecords(id=16, call_ids=["c1", "c2"]),
]


def test_every_message_type_has_a_sample() -> None:
    covered = {type(m) for m in SAMPLES}
    assert covered == set(p.CLIENT_MESSAGES.values()) | set(p.SERVER_MESSAGES.values())


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.TYPE)
def test_round_trip(message: p.Message) -> None:
    registry = p.CLIENT_MESSAGES if isinstance(message, p.Request) else p.SERVER_MESSAGES
    decoded = p.decode(message.encode(), registry)
    assert decoded == message
    assert json.loads(message.encode())["type"] == message.TYPE


def test_wire_names_are_camel_case() -> None:
    wire = p.Login(id=1, sdk_app_id=5, user_id="u", user_sig="s").to_wire()
    assert wire == {
        "v": 1,
        "type": "login",
        "id": 1,
        "sdkAppId": 5,
        "userId": "u",
        "userSig": "s",
        "multiDevice": False,
    }


@pytest.mark.parametrize(
    "text,code",
    [
        ("{", -1402),
        ("[]", -1402),
        ('"x"', -1402),
        ('{"type": "nope", "id": 1}', -1402),
        ('{"v": 2, "type": "ping", "id": 1}', -1402),
        ('{"type": "ping"}', -1202),
        ('{"type": "accept", "id": 1}', -1202),
        ('{"type": "accept", "id": 1, "callId": 3}', -1202),
        ('{"type": "call", "id": 1, "callees": ["a", 1], "mediaType": 1}', -1202),
        ('{"type": "call", "id": 1, "callees": ["a"], "mediaType": 1.5}', -1202),
        ('{"type": "call", "id": 1, "callees": ["a"], "mediaType": 1, "timeout": "x"}', -1202),
        ('{"type": "device", "id": 1, "callId": "c", "audio": 1}', -1202),
        (
            '{"type": "relay", "id": 1, "callId": "c", "to": "b", "kind": "offer", "data": []}',
            -1202,
        ),
    ],
)
def test_malformed(text: str, code: int) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.decode(text)
    assert err.value.code == code


def test_request_id_is_echoed_when_readable() -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.decode('{"type": "accept", "id": 17}')
    assert err.value.request_id == 17


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_random_json_never_raises_anything_else(value: object) -> None:
    with contextlib.suppress(p.ProtocolError):
        p.decode(json.dumps(value))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SAMPLES[:13]), st.data())
def test_mutated_requests_never_raise_anything_else(message: p.Message, data) -> None:
    wire = message.to_wire()
    key = data.draw(st.sampled_from(sorted(wire)))
    wire[key] = data.draw(st.none() | st.integers() | st.text() | st.lists(st.integers()))
    try:
        decoded = p.decode(json.dumps(wire))
        assert dataclasses.is_dataclass(decoded)
    except p.ProtocolError:
        pass
