"""The pure call state machine: whole per-user event sequences for every lifecycle case."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from callkit.signaling.callstate import (
    Call,
    CallRegistry,
    CallStateError,
    Member,
    MemberState,
    Notify,
)
from callkit.signaling.codes import CallMediaType, CallRole, ErrorCode

AUDIO, VIDEO = CallMediaType.AUDIO, CallMediaType.VIDEO
INVALID = ErrorCode.PARAM_INVALID
REFUSED = ErrorCode.REQUEST_REFUSED
REPEATED = ErrorCode.REQUEST_REPEATED

#: the reference page's res.* keys and their types, per event
REFERENCE: dict[str, dict[str, type]] = {
    "onCallReceived": {
        "callerId": str,
        "calleeIdList": list,
        "groupId": str,
        "callMediaType": int,
        "userData": str,
    },
    "onCallCancelled": {"userId": str},
    "onCallBegin": {"roomID": int, "callMediaType": int, "callRole": int},
    "onCallEnd": {"roomID": int, "callMediaType": int, "callRole": int, "totalTime": int},
    "onCallMediaTypeChanged": {"oldCallMediaType": int, "newCallMediaType": int},
    "onUserReject": {"userId": str},
    "onUserNoResponse": {"userId": str},
    "onUserLineBusy": {"userId": str},
    "onUserJoin": {"userId": str},
    "onUserLeave": {"userId": str},
    "onUserVideoAvailable": {"userId": str, "isVideoAvailable": bool},
    "onUserAudioAvailable": {"userId": str, "isAudioAvailable": bool},
}

Events = dict[str, list[tuple[str, dict[str, Any]]]]


def by_user(notifies: list[Notify]) -> Events:
    """Group notifies by recipient, checking every payload against the reference page."""
    out: Events = {}
    for n in notifies:
        spec = REFERENCE[n.event]
        assert set(n.payload) == set(spec), n
        for key, typ in spec.items():
            assert type(n.payload[key]) is typ, (n, key)  # exact: no IntEnum, no bool-as-int
        if n.event == "onCallReceived":
            assert all(type(u) is str for u in n.payload["calleeIdList"])
        out.setdefault(n.user_id, []).append((n.event, n.payload))
    return out


class Clock:
    """A fake clock."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self, advance: float = 0.0) -> float:
        self.t += advance
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reg() -> CallRegistry:
    calls = itertools.count(1)
    rooms = itertools.count(101)
    return CallRegistry(new_call_id=lambda: f"call-{next(calls)}", new_room_id=lambda: next(rooms))


def state_of(reg: CallRegistry, users: str = "ABCDEFGHIJKLMNOP") -> tuple[Any, ...]:
    return (
        copy.deepcopy(reg.calls),
        {u: getattr(reg.call_of(u), "call_id", None) for u in users},
        {c.room_id: reg.call_by_room(c.room_id) is c for c in reg.calls.values()},
        reg.get_timer(),
    )


def refused(
    reg: CallRegistry, code: ErrorCode, fn: Callable[..., Any], *args: Any, **kwargs: Any
) -> CallStateError:
    """Assert that the operation raises ``code`` and leaves the state unchanged."""
    before = state_of(reg)
    with pytest.raises(CallStateError) as err:
        fn(*args, **kwargs)
    assert err.value.code == code, err.value
    assert str(err.value) == err.value.message
    assert state_of(reg) == before
    return err.value


def begin(role: int, room: int = 101, media: int = 2) -> tuple[str, dict[str, Any]]:
    return ("onCallBegin", {"roomID": room, "callMediaType": media, "callRole": role})


def end(role: int, total: int, room: int = 101, media: int = 2) -> tuple[str, dict[str, Any]]:
    return (
        "onCallEnd",
        {"roomID": room, "callMediaType": media, "callRole": role, "totalTime": total},
    )


def ev(event: str, user: str) -> tuple[str, dict[str, Any]]:
    return (event, {"userId": user})


def mic(user: str) -> tuple[str, dict[str, Any]]:
    """A member who joined with the microphone on is announced (TUICallKit)."""
    return ("onUserAudioAvailable", {"userId": user, "isAudioAvailable": True})


def received(caller: str, callees: list[str], group: str = "", media: int = 2, data: str = ""):
    return (
        "onCallReceived",
        {
            "callerId": caller,
            "calleeIdList": callees,
            "groupId": group,
            "callMediaType": media,
            "userData": data,
        },
    )


def connected_1v1(reg: CallRegistry, clock: Clock, media: CallMediaType = VIDEO) -> Call:
    call, _ = reg.start_call(clock(), "A", ["B"], media)
    reg.accept(clock(1), "B", call.call_id)
    return call


def connected_group(reg: CallRegistry, clock: Clock, joined: str, ringing: str = "") -> Call:
    """``joined[0]`` calls ``joined[1:] + ringing`` (audio); ``joined[1:]`` accept in order."""
    call, _ = reg.start_call(clock(), joined[0], list(joined[1:] + ringing), AUDIO, group_id="g")
    for u in joined[1:]:
        reg.accept(clock(1), u, call.call_id)
    return call


# ============================================================================ 1v1


def test_incoming_call(reg: CallRegistry, clock: Clock) -> None:
    call, out = reg.start_call(clock(), "A", ["B"], VIDEO, user_data="hello", timeout=20)
    assert by_user(out) == {"B": [received("A", ["B"], data="hello")]}
    assert all(n.call_id == call.call_id == "call-1" for n in out)
    assert reg.calls == {"call-1": call}
    assert reg.call_of("A") is call and reg.call_of("B") is call
    assert reg.call_by_room(101) is call
    assert call.joined() == ["A"] and call.ringing() == ["B"]
    assert not call.begun
    assert reg.get_timer() == 1020.0
    a, b = call.members["A"], call.members["B"]
    assert (a.state, a.role, a.invited_by, a.deadline, a.began_at) == (
        MemberState.JOINED,
        CallRole.CALLER,
        "",
        None,
        None,
    )
    assert (b.state, b.role, b.invited_by, b.deadline, b.began_at) == (
        MemberState.RINGING,
        CallRole.CALLED,
        "A",
        1020.0,
        None,
    )
    assert (a.audio, a.video, b.audio, b.video) == (True, True, True, True)
    assert call.snapshot() == {
        "callId": "call-1",
        "roomID": 101,
        "groupId": "",
        "callMediaType": 2,
        "callerId": "A",
        "members": [
            {"userId": "A", "state": "joined", "audio": True, "video": True},
            {"userId": "B", "state": "ringing", "audio": True, "video": True},
        ],
    }


def test_caller_cancels(reg: CallRegistry, clock: Clock) -> None:
    call, _ = reg.start_call(clock(), "A", ["B"], VIDEO)
    out = reg.hangup(clock(5), "A", call.call_id)
    assert by_user(out) == {
        "A": [ev("onCallCancelled", "A")],
        "B": [ev("onCallCancelled", "A")],
    }
    assert reg.calls == {} and reg.call_of("A") is None and reg.call_of("B") is None
    assert reg.call_by_room(101) is None
    assert reg.get_timer() is None


def test_timeout(reg: CallRegistry, clock: Clock) -> None:
    call, _ = reg.start_call(clock(), "A", ["B"], VIDEO)
    assert reg.handle_timer(clock(29.9)) == []
    assert reg.call_of("B") is call
    out = reg.handle_timer(clock(0.1))
    assert by_user(out) == {
        "B": [ev("onCallCancelled", "B")],
        "A": [ev("onUserNoResponse", "B"), ev("onCallCancelled", "A")],
    }
    assert reg.calls == {} and reg.get_timer() is None
    assert reg.handle_timer(clock(100)) == []


def test_reject(reg: CallRegistry, clock: Clock) -> None:
    call, _ = reg.start_call(clock(), "A", ["B"], VIDEO)
    out = reg.reject(clock(3), "B", call.call_id)
    assert by_user(out) == {
        "B": [ev("onCallCancelled", "B")],
        "A": [ev("onUserReject", "B"), ev("onCallCancelled", "A")],
    }
    assert reg.calls == {} and reg.get_timer() is None


def test_hangup_by_ringing_callee_is_reject(reg: CallRegistry, clock: Clock) -> None:
    call, _ = reg.start_call(clock(), "A", ["B"], VIDEO)
    out = reg.hangup(clock(3), "B", call.call_id)
    assert by_user(out) == {
        "B": [ev("onCallCancelled", "B")],
        "A": [ev("onUserReject", "B"), ev("onCallCancelled", "A")],
    }


def test_ignore(reg: CallRegistry, clock: Clock) -> None:
    call, _ = reg.start_call(clock(), "A", ["B"], AUDIO)
    out = reg.ignore(clock(3), "B", call.call_id)
    assert by_user(out) == {
        "B": [ev("onCallCancelled", "B")],
        "A": [ev("onUserLineBusy", "B"), ev("onCallCancelled", "A")],
    }
    assert reg.calls == {}


def test_busy_callee(reg: CallRegistry, clock: Clock) -> None:
    other, _ = reg.start_call(clock(), "C", ["D"], AUDIO)  # C is joined, D ringing
    for busy in ("C", "D"):
        before = copy.deepcopy(other)
        call, out = reg.start_call(clock(1), "A", [busy], VIDEO)
        assert by_user(out) == {
            "A": [ev("onUserLineBusy", busy), ev("onCallCancelled", "A")],
        }
        assert call.call_id not in reg.calls
        assert reg.call_of("A") is None
        assert reg.calls[other.call_id] == before
    assert reg.get_timer() == other.members["D"].deadline


def test_accept(reg: CallRegistry, clock: Clock) -> None:
    call, _ = reg.start_call(clock(), "A", ["B"], VIDEO)
    out = reg.accept(clock(2), "B", call.call_id)
    assert by_user(out) == {
        "A": [ev("onUserJoin", "B"), begin(1), mic("B")],
        "B": [begin(2), ev("onUserJoin", "A"), mic("A")],
    }
    assert call.begun and call.joined() == ["A", "B"] and call.ringing() == []
    assert call.members["A"].began_at == call.members["B"].began_at == 1002.0
    assert call.members["B"].deadline is None
    assert reg.get_timer() is None
    assert reg.handle_timer(clock(100)) == []  # the stale deadline does not fire
    assert reg.call_of("B") is call


def test_hangup_by_caller_after_accept(reg: CallRegistry, clock: Clock) -> None:
    call = connected_1v1(reg, clock)
    out = reg.hangup(clock(60.4), "A", call.call_id)
    assert by_user(out) == {
        "A": [end(1, 60)],
        "B": [ev("onUserLeave", "A"), end(2, 60)],
    }
    assert reg.calls == {} and reg.call_of("A") is None and reg.call_of("B") is None


def test_hangup_by_callee_after_accept(reg: CallRegistry, clock: Clock) -> None:
    call = connected_1v1(reg, clock)
    out = reg.hangup(clock(7.6), "B", call.call_id)
    assert by_user(out) == {
        "B": [end(2, 8)],
        "A": [ev("onUserLeave", "B"), end(1, 8)],
    }
    assert reg.calls == {}


def test_media_switch(reg: CallRegistry, clock: Clock) -> None:
    call, _ = reg.start_call(clock(), "A", ["B"], VIDEO)
    refused(reg, REFUSED, reg.switch_media_type, clock(), "A", call.call_id, AUDIO)  # not begun
    refused(reg, REFUSED, reg.switch_media_type, clock(), "B", call.call_id, AUDIO)  # ringing
    reg.accept(clock(1), "B", call.call_id)
    refused(reg, REPEATED, reg.switch_media_type, clock(), "B", call.call_id, VIDEO)
    refused(reg, INVALID, reg.switch_media_type, clock(), "B", call.call_id, 0)
    refused(reg, REFUSED, reg.switch_media_type, clock(), "C", call.call_id, AUDIO)
    out = reg.switch_media_type(clock(1), "B", call.call_id, AUDIO)
    changed = ("onCallMediaTypeChanged", {"oldCallMediaType": 2, "newCallMediaType": 1})
    assert by_user(out) == {"A": [changed], "B": [changed]}
    assert call.media_type is AUDIO
    assert [m.video for m in call.members.values()] == [False, False]
    out = reg.hangup(clock(10), "A", call.call_id)
    assert by_user(out)["A"] == [end(1, 11, media=1)]
    # and back: audio -> video turns every camera on
    call = connected_1v1(reg, clock, AUDIO)
    out = reg.switch_media_type(clock(1), "A", call.call_id, 2)
    changed = ("onCallMediaTypeChanged", {"oldCallMediaType": 1, "newCallMediaType": 2})
    assert by_user(out) == {"A": [changed], "B": [changed]}
    assert [m.video for m in call.members.values()] == [True, True]


def test_device_changes(reg: CallRegistry, clock: Clock) -> None:
    call, _ = reg.start_call(clock(), "A", ["B"], VIDEO)
    assert reg.set_device(clock(), "A", call.call_id, audio=False) == []  # nobody to tell
    refused(reg, REFUSED, reg.set_device, clock(), "B", call.call_id, audio=False)  # ringing
    reg.accept(clock(1), "B", call.call_id)
    out = reg.set_device(clock(1), "B", call.call_id, audio=False)
    assert by_user(out) == {
        "A": [("onUserAudioAvailable", {"userId": "B", "isAudioAvailable": False})],
    }
    assert reg.set_device(clock(1), "B", call.call_id, audio=False) == []  # no change
    assert reg.set_device(clock(1), "B", call.call_id) == []
    out = reg.set_device(clock(1), "A", call.call_id, audio=True, video=False)
    assert by_user(out) == {
        "B": [
            ("onUserAudioAvailable", {"userId": "A", "isAudioAvailable": True}),
            ("onUserVideoAvailable", {"userId": "A", "isVideoAvailable": False}),
        ],
    }
    out = reg.set_device(clock(1), "A", call.call_id, video=True)
    assert by_user(out) == {
        "B": [("onUserVideoAvailable", {"userId": "A", "isVideoAvailable": True})],
    }
    refused(reg, INVALID, reg.set_device, clock(), "A", call.call_id, audio=1)
    refused(reg, REFUSED, reg.set_device, clock(), "C", call.call_id, audio=True)
    assert [(m.audio, m.video) for m in call.members.values()] == [(True, True), (False, True)]


def test_camera_in_audio_call_not_supported(reg: CallRegistry, clock: Clock) -> None:
    call = connected_1v1(reg, clock, AUDIO)
    refused(
        reg, ErrorCode.SCENE_NOT_SUPPORTED, reg.set_device, clock(), "A", call.call_id, video=True
    )
    # closing a camera that is already off is a no-op, not an error
    assert reg.set_device(clock(), "A", call.call_id, video=False) == []
    # audio change plus refused video: nothing happens at all
    refused(
        reg,
        ErrorCode.SCENE_NOT_SUPPORTED,
        reg.set_device,
        clock(),
        "A",
        call.call_id,
        audio=False,
        video=True,
    )
    assert call.members["A"].audio is True


# ============================================================================ group


def test_group_call_received(reg: CallRegistry, clock: Clock) -> None:
    call, out = reg.start_call(clock(), "A", ["B", "C", "D"], AUDIO, group_id="g1", user_data="x")
    rec = received("A", ["B", "C", "D"], group="g1", media=1, data="x")
    assert by_user(out) == {"B": [rec], "C": [rec], "D": [rec]}
    assert [n.user_id for n in out] == ["B", "C", "D"]
    assert call.ringing() == ["B", "C", "D"]


def test_group_accepts(reg: CallRegistry, clock: Clock) -> None:
    call, _ = reg.start_call(clock(), "A", ["B", "C", "D"], AUDIO, group_id="g1")
    out = reg.accept(clock(1), "B", call.call_id)
    assert by_user(out) == {
        "A": [ev("onUserJoin", "B"), begin(1, media=1), mic("B")],
        "B": [begin(2, media=1), ev("onUserJoin", "A"), mic("A")],
    }
    out = reg.accept(clock(1), "C", call.call_id)
    assert by_user(out) == {
        "A": [ev("onUserJoin", "C"), mic("C")],
        "B": [ev("onUserJoin", "C"), mic("C")],
        "C": [begin(2, media=1), ev("onUserJoin", "A"), mic("A"), ev("onUserJoin", "B"), mic("B")],
    }
    out = reg.reject(clock(1), "D", call.call_id)
    assert by_user(out) == {
        "D": [ev("onCallCancelled", "D")],
        "A": [ev("onUserReject", "D")],
        "B": [ev("onUserReject", "D")],
        "C": [ev("onUserReject", "D")],
    }
    assert call.joined() == ["A", "B", "C"] and reg.call_of("D") is None
    assert reg.get_timer() is None


def test_group_reject_before_anyone_accepted_keeps_ringing(reg: CallRegistry, clock: Clock) -> None:
    call, _ = reg.start_call(clock(), "A", ["B", "C"], AUDIO, group_id="g")
    out = reg.reject(clock(1), "B", call.call_id)
    assert by_user(out) == {
        "B": [ev("onCallCancelled", "B")],
        "A": [ev("onUserReject", "B")],
        "C": [ev("onUserReject", "B")],  # every invitee hears of a reject in a group call
    }
    out = reg.ignore(clock(1), "C", call.call_id)
    assert by_user(out) == {
        "C": [ev("onCallCancelled", "C")],
        "A": [ev("onUserLineBusy", "C"), ev("onCallCancelled", "A")],
    }
    assert reg.calls == {}


def test_group_partly_busy(reg: CallRegistry, clock: Clock) -> None:
    reg.start_call(clock(), "X", ["C"], AUDIO)
    call, out = reg.start_call(clock(1), "A", ["B", "C", "D"], AUDIO, group_id="g")
    rec = received("A", ["B", "C", "D"], group="g", media=1)
    assert by_user(out) == {"B": [rec], "A": [ev("onUserLineBusy", "C")], "D": [rec]}
    assert [n.user_id for n in out] == ["B", "A", "D"]
    assert call.ringing() == ["B", "D"]


def test_group_no_response_per_invitee(reg: CallRegistry, clock: Clock) -> None:
    call = connected_group(reg, clock, "AB", "CD")  # t0=1000, B accepts at 1001
    clock(4)
    out = reg.invite(clock(), "B", call.call_id, ["E"], timeout=5)  # at 1005, E until 1010
    assert reg.get_timer() == 1010.0
    out = reg.handle_timer(clock(5))
    assert by_user(out) == {
        "E": [ev("onCallCancelled", "E")],
        "A": [ev("onUserNoResponse", "E")],
        "B": [ev("onUserNoResponse", "E")],
    }
    assert call.ringing() == ["C", "D"] and reg.get_timer() == 1030.0
    reg.accept(clock(1), "C", call.call_id)
    out = reg.handle_timer(clock(100))
    assert by_user(out) == {
        "D": [ev("onCallCancelled", "D")],
        "A": [ev("onUserNoResponse", "D")],
        "B": [ev("onUserNoResponse", "D")],
        "C": [ev("onUserNoResponse", "D")],
    }
    assert call.joined() == ["A", "B", "C"] and reg.get_timer() is None


def test_group_timeouts_in_deadline_order(reg: CallRegistry, clock: Clock) -> None:
    call, _ = reg.start_call(clock(), "A", ["B"], AUDIO, timeout=10)
    reg.invite(clock(1), "A", call.call_id, ["C"], timeout=5)  # C until 1006, before B (1010)
    out = reg.handle_timer(clock(50))
    assert [(n.user_id, n.event, n.payload["userId"]) for n in out] == [
        ("C", "onCallCancelled", "C"),
        ("A", "onUserNoResponse", "C"),
        ("B", "onCallCancelled", "B"),
        ("A", "onUserNoResponse", "B"),
        ("A", "onCallCancelled", "A"),
    ]
    assert reg.calls == {}


def test_invite_mid_call(reg: CallRegistry, clock: Clock) -> None:
    call = connected_1v1(reg, clock, AUDIO)
    out = reg.invite(clock(1), "B", call.call_id, ["C", "D"])
    rec = received("B", ["A", "C", "D"], media=1)
    assert by_user(out) == {"C": [rec], "D": [rec]}
    c = call.members["C"]
    assert (c.state, c.role, c.invited_by, c.deadline) == (
        MemberState.RINGING,
        CallRole.CALLED,
        "B",
        1032.0,
    )
    out = reg.accept(clock(1), "C", call.call_id)
    assert by_user(out) == {
        "A": [ev("onUserJoin", "C"), mic("C")],
        "B": [ev("onUserJoin", "C"), mic("C")],
        "C": [begin(2, media=1), ev("onUserJoin", "A"), mic("A"), ev("onUserJoin", "B"), mic("B")],
    }


def test_invite_before_connected(reg: CallRegistry, clock: Clock) -> None:
    call, _ = reg.start_call(clock(), "A", ["B"], VIDEO, group_id="g")
    out = reg.invite(clock(1), "A", call.call_id, ["C"])
    assert by_user(out) == {"C": [received("A", ["B", "C"], group="g")]}
    out = reg.hangup(clock(1), "A", call.call_id)
    assert by_user(out) == {
        "A": [ev("onCallCancelled", "A")],
        "B": [ev("onCallCancelled", "A")],
        "C": [ev("onCallCancelled", "A")],
    }


def test_invite_busy_reaches_all_joined(reg: CallRegistry, clock: Clock) -> None:
    call = connected_group(reg, clock, "ABC")
    reg.start_call(clock(), "X", ["Y"], VIDEO)
    out = reg.invite(clock(1), "C", call.call_id, ["Y", "D", "X"])
    rec = received("C", ["A", "B", "D"], group="g", media=1)
    assert by_user(out) == {
        "A": [ev("onUserLineBusy", "Y"), ev("onUserLineBusy", "X")],
        "B": [ev("onUserLineBusy", "Y"), ev("onUserLineBusy", "X")],
        "C": [ev("onUserLineBusy", "Y"), ev("onUserLineBusy", "X")],
        "D": [rec],
    }
    assert call.ringing() == ["D"]


def test_join_by_room_id(reg: CallRegistry, clock: Clock) -> None:
    call = connected_group(reg, clock, "AB", "C")
    room = call.room_id
    joined, out = reg.join(clock(1), "E", room, AUDIO, granted_groups=frozenset({"g"}))
    assert joined is call
    assert by_user(out) == {
        "A": [ev("onUserJoin", "E"), mic("E")],
        "B": [ev("onUserJoin", "E"), mic("E")],
        "E": [begin(2, media=1), ev("onUserJoin", "A"), mic("A"), ev("onUserJoin", "B"), mic("B")],
    }
    e = call.members["E"]
    assert (e.state, e.role, e.began_at, e.deadline) == (
        MemberState.JOINED,
        CallRole.CALLED,
        clock(),
        None,
    )
    refused(reg, REPEATED, reg.join, clock(), "E", room, AUDIO)
    # a ringing invitee joining by room id accepts
    _, out = reg.join(clock(1), "C", room, AUDIO)
    assert by_user(out)["C"] == [
        begin(2, media=1),
        ev("onUserJoin", "A"),
        mic("A"),
        ev("onUserJoin", "B"),
        mic("B"),
        ev("onUserJoin", "E"),
        mic("E"),
    ]
    assert reg.get_timer() is None
    out = reg.hangup(clock(10), "E", call.call_id)
    assert by_user(out)["E"] == [end(2, 11, media=1)]


def test_join_refusals(reg: CallRegistry, clock: Clock) -> None:
    waiting, _ = reg.start_call(clock(), "A", ["B"], AUDIO)
    refused(reg, REFUSED, reg.join, clock(), "E", waiting.room_id, AUDIO)  # not begun
    refused(reg, INVALID, reg.join, clock(), "E", 999, AUDIO)  # no such room
    refused(reg, INVALID, reg.join, clock(), "E", 0, AUDIO)
    refused(reg, INVALID, reg.join, clock(), "E", "101", AUDIO)
    refused(reg, INVALID, reg.join, clock(), "", waiting.room_id, AUDIO)
    call = connected_group(reg, clock, "CD")
    refused(reg, INVALID, reg.join, clock(), "E", call.room_id, VIDEO)  # media mismatch
    refused(reg, INVALID, reg.join, clock(), "E", call.room_id, 5)
    refused(reg, REFUSED, reg.join, clock(), "A", call.room_id, AUDIO)  # in another call
    refused(reg, REFUSED, reg.join, clock(), "B", call.room_id, AUDIO)  # ringing elsewhere
    team = frozenset({"g"})
    for u in "EFGHIJ":
        reg.join(clock(), u, call.room_id, AUDIO, granted_groups=team)
    assert len(call.members) == 8
    reg.join(clock(), "K", call.room_id, AUDIO, granted_groups=team)
    assert len(call.members) == 9
    refused(reg, REFUSED, reg.join, clock(), "L", call.room_id, AUDIO, granted_groups=team)  # full


def test_join_needs_an_invitation_or_a_grant(reg: CallRegistry, clock: Clock) -> None:
    one, _ = reg.start_call(clock(), "A", ["B"], AUDIO)
    reg.accept(clock(1), "B", one.call_id)
    reg.invite(clock(1), "B", one.call_id, ["C"])
    reg.reject(clock(1), "C", one.call_id)
    # never a 1v1 call (no groupId), whoever asks, grant or invitation
    for user in ("E", "C"):
        refused(reg, REFUSED, reg.join, clock(), user, one.room_id, AUDIO)
    refused(
        reg, REFUSED, reg.join, clock(), "E", one.room_id, AUDIO, granted_groups=frozenset({""})
    )
    group = connected_group(reg, clock, "FG", "H")
    refused(reg, REFUSED, reg.join, clock(), "E", group.room_id, AUDIO)  # a stranger
    other = frozenset({"other"})
    refused(reg, REFUSED, reg.join, clock(), "E", group.room_id, AUDIO, granted_groups=other)
    grant = frozenset({"g"})
    refused(
        reg,
        REFUSED,
        reg.join,
        clock(),
        "E",
        group.room_id,
        AUDIO,
        group_id="x",
        granted_groups=grant,
    )
    assert set(group.members) == {"F", "G", "H"}
    # an invitee who stopped ringing may come back by room id
    reg.ignore(clock(1), "H", group.call_id)
    reg.join(clock(1), "H", group.room_id, AUDIO, group_id="g")
    assert group.members["H"].state is MemberState.JOINED
    # and a granted user may join with no invitation
    reg.join(clock(1), "E", group.room_id, AUDIO, group_id="g", granted_groups=grant)
    assert set(group.joined()) == {"F", "G", "H", "E"}


def test_caller_cancels_group_while_ringing(reg: CallRegistry, clock: Clock) -> None:
    call, _ = reg.start_call(clock(), "A", ["B", "C", "D"], AUDIO, group_id="g")
    out = reg.hangup(clock(2), "A", call.call_id)
    assert by_user(out) == {u: [ev("onCallCancelled", "A")] for u in "ABCD"}
    assert [n.user_id for n in out] == ["A", "B", "C", "D"]
    assert reg.calls == {} and reg.get_timer() is None


def test_caller_leaves_while_others_talk_and_ring(reg: CallRegistry, clock: Clock) -> None:
    call = connected_group(reg, clock, "ABC", "D")  # B began at 1001, C at 1002
    out = reg.hangup(clock(8), "A", call.call_id)  # 1010
    assert by_user(out) == {
        "A": [end(1, 9, media=1)],
        "B": [ev("onUserLeave", "A")],
        "C": [ev("onUserLeave", "A")],
    }
    out = reg.hangup(clock(), "B", call.call_id)
    assert by_user(out) == {"B": [end(2, 9, media=1)], "C": [ev("onUserLeave", "B")]}
    # C is alone but D still rings: C waits
    assert call.joined() == ["C"] and call.ringing() == ["D"]
    out = reg.handle_timer(clock(100))
    assert by_user(out) == {
        "D": [ev("onCallCancelled", "D")],
        "C": [ev("onUserNoResponse", "D"), end(2, 108, media=1)],
    }
    assert reg.calls == {}


def test_last_joined_leaves_while_someone_rings(reg: CallRegistry, clock: Clock) -> None:
    call = connected_group(reg, clock, "AB", "C")
    reg.hangup(clock(1), "A", call.call_id)
    out = reg.hangup(clock(1), "B", call.call_id)
    assert by_user(out) == {"B": [end(2, 2, media=1)], "C": [ev("onCallCancelled", "A")]}
    assert reg.calls == {} and reg.get_timer() is None


def test_waiting_alone_then_invitee_accepts(reg: CallRegistry, clock: Clock) -> None:
    call = connected_group(reg, clock, "AB", "C")
    reg.hangup(clock(1), "A", call.call_id)
    out = reg.accept(clock(1), "C", call.call_id)
    assert by_user(out) == {
        "B": [ev("onUserJoin", "C"), mic("C")],
        "C": [begin(2, media=1), ev("onUserJoin", "B"), mic("B")],
    }


def test_call_lives_while_two(reg: CallRegistry, clock: Clock) -> None:
    call = connected_group(reg, clock, "ABCDE")
    for leaver, rest in [("C", "ABDE"), ("A", "BDE")]:
        out = reg.hangup(clock(1), leaver, call.call_id)
        events = by_user(out)
        assert [events[u] for u in rest] == [[ev("onUserLeave", leaver)]] * len(rest)
        assert events[leaver][0][0] == "onCallEnd"
        assert call.call_id in reg.calls
    out = reg.hangup(clock(1), "E", call.call_id)
    assert set(by_user(out)) == {"B", "D", "E"}
    out = reg.hangup(clock(1), "D", call.call_id)
    assert by_user(out) == {
        "D": [end(2, 5, media=1)],  # began at 1003, left at 1008
        "B": [ev("onUserLeave", "D"), end(2, 7, media=1)],  # began at 1001
    }
    assert reg.calls == {}


def test_start_call_max_group(reg: CallRegistry, clock: Clock) -> None:
    callees = list("BCDEFGHI")
    call, out = reg.start_call(clock(), "A", callees, AUDIO, group_id="g")
    assert len(out) == 8 and len(call.members) == 9
    refused(reg, INVALID, reg.invite, clock(), "A", call.call_id, ["J"])


# ============================================================================ edge cases


def test_glare(reg: CallRegistry, clock: Clock) -> None:
    call, _ = reg.start_call(clock(), "A", ["B"], VIDEO)
    refused(reg, REFUSED, reg.start_call, clock(), "B", ["A"], VIDEO)
    out = reg.accept(clock(1), "B", call.call_id)
    assert [n.event for n in out] == [
        "onUserJoin",
        "onCallBegin",
        "onUserAudioAvailable",
        "onCallBegin",
        "onUserJoin",
        "onUserAudioAvailable",
    ]


def test_accept_racing_cancel(reg: CallRegistry, clock: Clock) -> None:
    call, _ = reg.start_call(clock(), "A", ["B"], VIDEO)
    reg.hangup(clock(1), "A", call.call_id)
    refused(reg, REFUSED, reg.accept, clock(), "B", call.call_id)


def test_cancel_racing_accept(reg: CallRegistry, clock: Clock) -> None:
    call, _ = reg.start_call(clock(), "A", ["B"], VIDEO)
    reg.accept(clock(1), "B", call.call_id)
    out = reg.hangup(clock(), "A", call.call_id)  # a leave with totalTime 0, not a cancel
    assert by_user(out) == {"A": [end(1, 0)], "B": [ev("onUserLeave", "A"), end(2, 0)]}


def test_accept_racing_timeout(reg: CallRegistry, clock: Clock) -> None:
    call, _ = reg.start_call(clock(), "A", ["B"], VIDEO)
    reg.handle_timer(clock(30))
    refused(reg, REFUSED, reg.accept, clock(), "B", call.call_id)
    call, _ = reg.start_call(clock(), "A", ["B"], VIDEO)
    reg.accept(clock(29.99), "B", call.call_id)
    assert reg.handle_timer(clock(0.01)) == []
    assert call.joined() == ["A", "B"]


def test_double_accept(reg: CallRegistry, clock: Clock) -> None:
    call = connected_1v1(reg, clock)
    refused(reg, REPEATED, reg.accept, clock(), "B", call.call_id)
    refused(reg, REPEATED, reg.accept, clock(), "A", call.call_id)


def test_operations_from_non_members(reg: CallRegistry, clock: Clock) -> None:
    call, _ = reg.start_call(clock(), "A", ["B"], VIDEO)
    other, _ = reg.start_call(clock(), "C", ["D"], VIDEO)
    cid = call.call_id
    for op in (reg.accept, reg.reject, reg.ignore, reg.hangup):
        refused(reg, REFUSED, op, clock(), "X", cid)  # idle user
        refused(reg, REFUSED, op, clock(), "D", cid)  # ringing in another call
        refused(reg, REFUSED, op, clock(), "B", "no-such-call")
        refused(reg, REFUSED, op, clock(), "B", other.call_id)
        refused(reg, INVALID, op, clock(), "", cid)
        refused(reg, INVALID, op, clock(), None, cid)
        refused(reg, INVALID, op, clock(), "B", 5)
    # the caller cannot accept, reject or ignore its own call
    for op in (reg.accept, reg.reject, reg.ignore):
        refused(reg, REPEATED if op == reg.accept else REFUSED, op, clock(), "A", cid)
    refused(reg, REFUSED, reg.invite, clock(), "B", cid, ["E"])  # ringing member invites
    refused(reg, REFUSED, reg.invite, clock(), "X", cid, ["E"])
    refused(reg, REFUSED, reg.set_device, clock(), "X", cid, audio=True)
    refused(reg, REFUSED, reg.switch_media_type, clock(), "X", cid, AUDIO)


@pytest.mark.parametrize(
    "callees",
    [[], ["A"], ["B", "B"], ["B", ""], ["B", 3], "B", None, ("B", "A"), list("BCDEFGHIJ")],
)
def test_start_call_invalid_callees(reg: CallRegistry, clock: Clock, callees: Any) -> None:
    refused(reg, INVALID, reg.start_call, clock(), "A", callees, VIDEO)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"media_type": 0},
        {"media_type": 3},
        {"media_type": True},
        {"media_type": "1"},
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": float("nan")},
        {"timeout": float("inf")},
        {"timeout": True},
        {"group_id": None},
        {"user_data": 5},
        {"room_id": 0},
        {"room_id": 2**31},
        {"room_id": "7"},
        {"caller": ""},
        {"caller": 7},
    ],
)
def test_start_call_invalid_params(reg: CallRegistry, clock: Clock, kwargs: dict) -> None:
    args = {"caller": "A", "callees": ["B"], "media_type": VIDEO, **kwargs}
    refused(reg, INVALID, reg.start_call, clock(), **args)


def test_start_call_tuple_callees_and_int_media(reg: CallRegistry, clock: Clock) -> None:
    call, out = reg.start_call(clock(), "A", ("B", "C"), 1, timeout=5)
    assert call.media_type is AUDIO
    assert by_user(out)["B"] == [received("A", ["B", "C"], media=1)]


def test_caller_already_in_call(reg: CallRegistry, clock: Clock) -> None:
    reg.start_call(clock(), "A", ["B"], VIDEO)
    refused(reg, REFUSED, reg.start_call, clock(), "A", ["C"], VIDEO)
    refused(reg, REFUSED, reg.start_call, clock(), "B", ["C"], VIDEO)


def test_invite_validation(reg: CallRegistry, clock: Clock) -> None:
    call = connected_group(reg, clock, "ABC")
    cid = call.call_id
    refused(reg, INVALID, reg.invite, clock(), "A", cid, ["A"])  # self
    refused(reg, INVALID, reg.invite, clock(), "A", cid, ["D", "D"])  # duplicates
    refused(reg, INVALID, reg.invite, clock(), "A", cid, [])
    refused(reg, INVALID, reg.invite, clock(), "A", cid, list("DEFGHIJKL"))  # > 8
    refused(reg, INVALID, reg.invite, clock(), "A", cid, list("DEFGHIJ"))  # 3 + 7 > 9
    refused(reg, INVALID, reg.invite, clock(), "A", cid, ["B"])  # already a member
    refused(reg, INVALID, reg.invite, clock(), "A", cid, ["D"], timeout=0)
    refused(reg, INVALID, reg.invite, clock(), "A", cid, "D")
    refused(reg, REFUSED, reg.invite, clock(), "A", "nope", ["D"])
    out = reg.invite(clock(), "A", cid, list("DEFGHI"))  # 3 + 6 = 9
    assert len(out) == 6 and len(call.members) == 9


def test_user_in_a_call_invited_elsewhere_is_busy(reg: CallRegistry, clock: Clock) -> None:
    first = connected_1v1(reg, clock)
    second = connected_group(reg, clock, "CD")
    out = reg.invite(clock(1), "C", second.call_id, ["B"])
    assert by_user(out) == {"C": [ev("onUserLineBusy", "B")], "D": [ev("onUserLineBusy", "B")]}
    assert reg.call_of("B") is first and "B" not in second.members


def test_room_ids(reg: CallRegistry, clock: Clock) -> None:
    call, _ = reg.start_call(clock(), "A", ["B"], VIDEO, room_id=7)
    assert call.room_id == 7 and reg.call_by_room(7) is call
    refused(reg, REFUSED, reg.start_call, clock(), "C", ["D"], VIDEO, room_id=7)
    reg.hangup(clock(), "A", call.call_id)
    assert reg.call_by_room(7) is None
    call, _ = reg.start_call(clock(), "C", ["D"], VIDEO, room_id=7)
    assert call.room_id == 7


def test_allocators_skip_ids_in_use(clock: Clock) -> None:
    rooms = iter([5, 5, 5, 6])
    ids = iter(["x", "x", "y"])
    reg = CallRegistry(new_call_id=lambda: next(ids), new_room_id=lambda: next(rooms))
    first, _ = reg.start_call(clock(), "A", ["B"], VIDEO)
    second, _ = reg.start_call(clock(), "C", ["D"], VIDEO)
    assert (first.call_id, first.room_id, second.call_id, second.room_id) == ("x", 5, "y", 6)


def test_default_allocators(clock: Clock) -> None:
    reg = CallRegistry()
    calls = [reg.start_call(clock(), f"u{i}", [f"v{i}"], AUDIO)[0] for i in range(50)]
    assert len({c.call_id for c in calls}) == 50
    assert all(len(c.call_id) == 32 and int(c.call_id, 16) >= 0 for c in calls)
    assert all(1 <= c.room_id <= 2**31 - 1 for c in calls)
    assert len({c.room_id for c in calls}) == 50


def test_disconnect(reg: CallRegistry, clock: Clock) -> None:
    assert reg.disconnect(clock(), "A") == []
    # ringing: like a timeout
    reg.start_call(clock(), "A", ["B"], VIDEO)
    out = reg.disconnect(clock(1), "B")
    assert by_user(out) == {
        "B": [ev("onCallCancelled", "B")],
        "A": [ev("onUserNoResponse", "B"), ev("onCallCancelled", "A")],
    }
    # a waiting caller: like a hangup (cancel)
    reg.start_call(clock(), "A", ["B"], VIDEO)
    out = reg.disconnect(clock(1), "A")
    assert by_user(out) == {"A": [ev("onCallCancelled", "A")], "B": [ev("onCallCancelled", "A")]}
    # joined: like a hangup (leave)
    connected_1v1(reg, clock)
    out = reg.disconnect(clock(5), "B")
    assert by_user(out) == {
        "B": [end(2, 5, room=103)],
        "A": [ev("onUserLeave", "B"), end(1, 5, room=103)],
    }
    assert reg.calls == {}


def test_get_timer_across_calls(reg: CallRegistry, clock: Clock) -> None:
    assert reg.get_timer() is None
    a, _ = reg.start_call(clock(), "A", ["B"], VIDEO, timeout=30)
    c, _ = reg.start_call(clock(1), "C", ["D", "E"], VIDEO, timeout=10)
    assert reg.get_timer() == 1011.0
    reg.reject(clock(), "D", c.call_id)
    assert reg.get_timer() == 1011.0  # E still rings
    reg.accept(clock(), "E", c.call_id)
    assert reg.get_timer() == 1030.0
    reg.hangup(clock(), "A", a.call_id)
    assert reg.get_timer() is None


def test_re_invite_after_leaving(reg: CallRegistry, clock: Clock) -> None:
    call = connected_group(reg, clock, "ABC")
    reg.hangup(clock(1), "C", call.call_id)
    out = reg.invite(clock(1), "A", call.call_id, ["C"], timeout=5)
    assert by_user(out) == {"C": [received("A", ["B", "C"], group="g", media=1)]}
    out = reg.handle_timer(clock(5))
    assert by_user(out) == {
        "C": [ev("onCallCancelled", "C")],
        "A": [ev("onUserNoResponse", "C")],
        "B": [ev("onUserNoResponse", "C")],
    }


def test_public_types() -> None:
    err = CallStateError(ErrorCode.PARAM_INVALID, "bad")
    assert (err.code, err.message, str(err)) == (ErrorCode.PARAM_INVALID, "bad", "bad")
    n = Notify("A", "onCallCancelled", {"userId": "A"}, "c")
    with pytest.raises(AttributeError):
        n.user_id = "B"  # type: ignore[misc]
    m = Member("A", MemberState.JOINED, CallRole.CALLER, "", None, None)
    assert (m.audio, m.video) == (True, False)
    assert MemberState.RINGING == "ringing"
    assert CallRegistry.MAX_PARTICIPANTS == 9


def test_group_reject_reaches_every_invitee_other_exits_only_joined(
    reg: CallRegistry, clock: Clock
) -> None:
    """TUICallKit: in a group call all invitees get onUserReject; timeouts and busy are for
    the joined members only; a 1v1 reject goes to the caller alone."""
    call, _ = reg.start_call(clock(), "A", ["B", "C", "D", "E"], AUDIO, group_id="g", timeout=5)
    reg.accept(clock(1), "B", call.call_id)
    out = reg.reject(clock(1), "C", call.call_id)
    assert by_user(out) == {
        "C": [ev("onCallCancelled", "C")],
        "A": [ev("onUserReject", "C")],
        "B": [ev("onUserReject", "C")],
        "D": [ev("onUserReject", "C")],
        "E": [ev("onUserReject", "C")],
    }
    out = reg.ignore(clock(1), "D", call.call_id)
    assert set(by_user(out)) == {"D", "A", "B"}  # E, still ringing, is not told of a busy line
    out = reg.handle_timer(clock(10))
    assert by_user(out) == {
        "E": [ev("onCallCancelled", "E")],
        "A": [ev("onUserNoResponse", "E")],
        "B": [ev("onUserNoResponse", "E")],
    }
    # a call placed with group_call("", ...) to several users is a group call too
    call2, _ = reg.start_call(clock(), "P", ["Q", "R"], AUDIO)
    assert call2.is_group()
    out = reg.reject(clock(1), "Q", call2.call_id)
    assert by_user(out)["R"] == [ev("onUserReject", "Q")]
    # 1v1: only the caller
    call3, _ = reg.start_call(clock(), "X", ["Y"], AUDIO)
    assert not call3.is_group()
    out = reg.reject(clock(1), "Y", call3.call_id)
    assert set(by_user(out)) == {"X", "Y"}


def test_member_joining_with_microphone_off_is_not_announced(
    reg: CallRegistry, clock: Clock
) -> None:
    call, _ = reg.start_call(clock(), "A", ["B", "C"], AUDIO, group_id="g")
    reg.set_device(clock(1), "A", call.call_id, audio=False)  # the caller mutes while calling
    out = reg.accept(clock(1), "B", call.call_id)
    assert by_user(out) == {
        "A": [ev("onUserJoin", "B"), begin(1, media=1), mic("B")],
        "B": [begin(2, media=1), ev("onUserJoin", "A")],  # A's microphone is off
    }


def test_calls_round_trip_through_json_and_load_with_their_timers() -> None:
    import json

    reg = CallRegistry(new_call_id=lambda: "c1", new_room_id=lambda: 42)
    call, _ = reg.start_call(0, "alice", ["bob", "carol"], VIDEO, group_id="g", user_data="u")
    reg.accept(1, "bob", "c1")
    reg.set_device(2, "bob", "c1", audio=False, video=True)
    text = json.dumps(call.to_json())
    back = Call.from_json(json.loads(text))
    assert back == call and json.dumps(back.to_json()) == text
    assert Member.from_json(call.members["carol"].to_json()) == call.members["carol"]
    other = CallRegistry()
    other.load([back])
    assert other.call_of("carol") is back and other.call_by_room(42) is back
    assert other.get_timer() == reg.get_timer() == 30.0
    assert [n.event for n in other.handle_timer(30.0) if n.user_id == "carol"] == [
        "onCallCancelled"
    ]
    other.load([Call.from_json(json.loads(text))])  # a newer copy replaces the old one
    assert len(other.calls) == 1 and other.call_of("carol") is not None
