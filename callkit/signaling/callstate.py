"""The call state machine: pure, synchronous, time passed in (like h11 / aioquic).

:class:`CallRegistry` holds every live call. Each operation takes ``now`` (seconds, any
monotonic clock), validates everything first, and either raises :class:`CallStateError`
leaving the state untouched, or mutates the state and returns the :class:`Notify` list the
service must deliver, in order. Ringing deadlines are timers: the owner calls
:meth:`CallRegistry.handle_timer` when :meth:`CallRegistry.get_timer` is due.

Who gets what (DESIGN.md section 3; every sequence is pinned by tests/test_callstate.py):

- an invitee leaves the ringing state by accepting (the call begins for it), or by one of
  the *exits* in :data:`INVITEE_EXITS` (reject / ignore / timeout): it gets
  ``onCallCancelled {userId: itself}`` and every joined member gets the exit's event; in a
  group call a reject also reaches the invitees still ringing (``onUserReject``);
- a joined member hangs up: before anyone accepted this cancels the whole call, afterwards
  it leaves (``onUserLeave`` to the others, ``onCallEnd`` to itself);
- after every departure the call *settles* (:meth:`CallRegistry._settle`): it lives while two
  members are joined, or while one is joined and someone still rings.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .codes import CallMediaType, CallRole, ErrorCode

__all__ = [
    "INVITEE_EXITS",
    "Call",
    "CallRegistry",
    "CallStateError",
    "Member",
    "MemberState",
    "Notify",
]

MAX_ROOM_ID = 2**31 - 1


@dataclass(frozen=True)
class Notify:
    """One event for one user: ``payload`` holds exactly the reference page's ``res`` keys."""

    user_id: str
    event: str
    payload: dict[str, Any]
    call_id: str


class CallStateError(Exception):
    """An operation refused in the current state (or with invalid parameters)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class MemberState(str, Enum):
    """Where a member of a call is: still ringing, or in the call."""

    RINGING = "ringing"
    JOINED = "joined"


@dataclass
class Member:
    """One user in one call."""

    user_id: str
    state: MemberState
    role: CallRole
    #: who invited this member ("" for the caller and for users who joined by room id)
    invited_by: str
    #: when the ringing times out (None once joined)
    deadline: float | None
    #: when this member got onCallBegin (None while ringing, and for a caller still waiting)
    began_at: float | None
    audio: bool = True
    video: bool = False
    #: the ``calleeIdList`` of this member's invitation (to ring again on a later login)
    invite_list: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A plain JSON dict (for a shared store); :meth:`from_json` reverses it."""
        return {
            "userId": self.user_id,
            "state": self.state.value,
            "role": int(self.role),
            "invitedBy": self.invited_by,
            "deadline": self.deadline,
            "beganAt": self.began_at,
            "audio": self.audio,
            "video": self.video,
            "inviteList": list(self.invite_list),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Member:
        """The inverse of :meth:`to_json`."""
        return cls(
            user_id=obj["userId"],
            state=MemberState(obj["state"]),
            role=CallRole(obj["role"]),
            invited_by=obj["invitedBy"],
            deadline=obj["deadline"],
            began_at=obj["beganAt"],
            audio=obj["audio"],
            video=obj["video"],
            invite_list=list(obj["inviteList"]),
        )


@dataclass
class Call:
    """A live call; members that left, rejected or timed out are removed."""

    call_id: str
    room_id: int
    group_id: str
    media_type: CallMediaType
    caller_id: str
    user_data: str
    created_at: float
    #: True once somebody accepted (the call connected at least once)
    begun: bool = False
    members: dict[str, Member] = field(default_factory=dict)
    #: everyone ever invited to (or placing) this call: they may join it by room id later
    invited: set[str] = field(default_factory=set)

    def joined(self) -> list[str]:
        """The joined members, in member order."""
        return [u for u, m in self.members.items() if m.state is MemberState.JOINED]

    def is_group(self) -> bool:
        """A group call: placed with a group id, or more than one user was ever invited."""
        return bool(self.group_id) or len(self.invited) > 2

    def ringing(self) -> list[str]:
        """The ringing invitees, in member order."""
        return [u for u, m in self.members.items() if m.state is MemberState.RINGING]

    def to_json(self) -> dict[str, Any]:
        """The whole call as a plain JSON dict (for a shared store, e.g. one Redis document
        per call); :meth:`from_json` reverses it. Unlike :meth:`snapshot` it keeps everything
        the rules need (deadlines, roles, who was invited)."""
        return {
            "callId": self.call_id,
            "roomId": self.room_id,
            "groupId": self.group_id,
            "mediaType": int(self.media_type),
            "callerId": self.caller_id,
            "userData": self.user_data,
            "createdAt": self.created_at,
            "begun": self.begun,
            "members": [m.to_json() for m in self.members.values()],
            "invited": sorted(self.invited),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Call:
        """The inverse of :meth:`to_json`."""
        members = [Member.from_json(m) for m in obj["members"]]
        return cls(
            call_id=obj["callId"],
            room_id=obj["roomId"],
            group_id=obj["groupId"],
            media_type=CallMediaType(obj["mediaType"]),
            caller_id=obj["callerId"],
            user_data=obj["userData"],
            created_at=obj["createdAt"],
            begun=obj["begun"],
            members={m.user_id: m for m in members},
            invited=set(obj["invited"]),
        )

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able view of the call."""
        return {
            "callId": self.call_id,
            "roomID": self.room_id,
            "groupId": self.group_id,
            "callMediaType": int(self.media_type),
            "callerId": self.caller_id,
            "members": [
                {"userId": m.user_id, "state": m.state.value, "audio": m.audio, "video": m.video}
                for m in self.members.values()
            ],
        }


#: how an invitee can stop ringing without accepting -> the event every joined member gets
INVITEE_EXITS: dict[str, str] = {
    "reject": "onUserReject",
    "ignore": "onUserLineBusy",
    "timeout": "onUserNoResponse",
}


# ------------------------------------------------------------------------------ validation


def _invalid(message: str) -> CallStateError:
    return CallStateError(ErrorCode.PARAM_INVALID, message)


def _refused(message: str) -> CallStateError:
    return CallStateError(ErrorCode.REQUEST_REFUSED, message)


def _check_user_id(user_id: object, what: str = "user id") -> str:
    if not isinstance(user_id, str) or not user_id:
        raise _invalid(f"{what} must be a non-empty string")
    return user_id


def _check_user_list(user_ids: object, self_id: str, limit: int) -> list[str]:
    if isinstance(user_ids, (str, bytes)) or not isinstance(user_ids, (list, tuple)):
        raise _invalid("user id list must be a list of strings")
    ids = [_check_user_id(u) for u in user_ids]
    if not ids:
        raise _invalid("user id list is empty")
    if len(ids) > limit:
        raise _invalid(f"at most {limit} users can be invited")
    if len(set(ids)) != len(ids):
        raise _invalid("duplicate user ids")
    if self_id in ids:
        raise _invalid("cannot call yourself")
    return ids


def _check_media_type(media_type: object) -> CallMediaType:
    if (
        isinstance(media_type, bool)
        or not isinstance(media_type, int)
        or media_type not in (CallMediaType.AUDIO, CallMediaType.VIDEO)
    ):
        raise _invalid("callMediaType must be 1 (audio) or 2 (video)")
    return CallMediaType(media_type)


#: longest ring timeout accepted, in seconds (TUICallKit's REST API bounds robot calls to
#: 10-600 s; callkit keeps short timeouts for tests and bots but the same upper bound)
MAX_RING_TIMEOUT = 600.0


def _check_timeout(timeout: object) -> float:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or not 0 < timeout <= MAX_RING_TIMEOUT
    ):
        raise _invalid(f"timeout must be a number of seconds in (0, {MAX_RING_TIMEOUT:g}]")
    return float(timeout)


def _check_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _invalid(f"{what} must be a string")
    return value


def _check_room_id(room_id: object) -> int:
    if isinstance(room_id, bool) or not isinstance(room_id, int) or not 1 <= room_id <= MAX_ROOM_ID:
        raise _invalid(f"roomID must be an integer in 1..{MAX_ROOM_ID}")
    return room_id


# ------------------------------------------------------------------------------ registry


class CallRegistry:
    """Every live call, and the rules that move them."""

    MAX_PARTICIPANTS = 9

    def __init__(
        self,
        *,
        new_call_id: Callable[[], str] | None = None,
        new_room_id: Callable[[], int] | None = None,
    ) -> None:
        self.calls: dict[str, Call] = {}
        self._new_call_id = new_call_id or (lambda: uuid.uuid4().hex)
        rng = random.SystemRandom()
        self._new_room_id = new_room_id or (lambda: rng.randint(1, MAX_ROOM_ID))
        self._user_call: dict[str, str] = {}  # user id -> call id (ringing or joined)
        self._room_call: dict[int, str] = {}  # room id -> call id
        # ringing deadlines: (deadline, seq, call id, user id); stale entries are skipped
        self._timers: list[tuple[float, int, str, str]] = []
        self._seq = itertools.count()

    # ---------------------------------------------------------------- queries

    def call_of(self, user_id: str) -> Call | None:
        """The call ``user_id`` is ringing in or joined to."""
        call_id = self._user_call.get(user_id)
        return None if call_id is None else self.calls[call_id]

    def call_by_room(self, room_id: int) -> Call | None:
        """The live call using ``room_id``."""
        call_id = self._room_call.get(room_id)
        return None if call_id is None else self.calls[call_id]

    def pending_invitation(self, user_id: str) -> Notify | None:
        """The ``onCallReceived`` of the call ``user_id`` is ringing in, to deliver again to a
        device that logs in while it rings (None when the user does not ring)."""
        call = self.call_of(user_id)
        member = call.members.get(user_id) if call is not None else None
        if call is None or member is None or member.state is not MemberState.RINGING:
            return None
        return self._received(call, user_id, member.invited_by, member.invite_list)

    def load(self, calls: Iterable[Call]) -> None:
        """Add ``calls`` (e.g. read from a shared store) with their indexes and ringing
        timers; a call id already here is replaced."""
        for call in calls:
            old = self.calls.get(call.call_id)
            if old is not None and old is not call:
                self._remove_call(old)
            self.calls[call.call_id] = call
            self._room_call[call.room_id] = call.call_id
            for member in call.members.values():
                self._user_call[member.user_id] = call.call_id
                if member.state is MemberState.RINGING and member.deadline is not None:
                    entry = (member.deadline, next(self._seq), call.call_id, member.user_id)
                    heapq.heappush(self._timers, entry)

    def is_idle(self) -> bool:
        """True when no call, member, room or live timer is left."""
        return not (self.calls or self._user_call or self._room_call) and self.get_timer() is None

    def get_timer(self) -> float | None:
        """The earliest ringing deadline, or None when nobody rings."""
        while self._timers and not self._timer_live(self._timers[0]):
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    # ---------------------------------------------------------------- operations

    def start_call(
        self,
        now: float,
        caller: str,
        callees: list[str],
        media_type: int,  # validated: 1 or 2
        *,
        group_id: str = "",
        timeout: float = 30.0,
        user_data: str = "",
        room_id: int | None = None,
    ) -> tuple[Call, list[Notify]]:
        """``caller`` calls ``callees`` (1v1 or group); busy callees are reported, not added."""
        caller = _check_user_id(caller, "caller")
        callees = _check_user_list(callees, caller, self.MAX_PARTICIPANTS - 1)
        media_type = _check_media_type(media_type)
        timeout = _check_timeout(timeout)
        group_id = _check_str(group_id, "groupId")
        user_data = _check_str(user_data, "userData")
        if room_id is not None:
            room_id = _check_room_id(room_id)
            if room_id in self._room_call:
                raise _refused(f"room {room_id} is in use")
        if caller in self._user_call:
            raise _refused("caller is already in a call")
        call_id = self._fresh(self._new_call_id, self.calls, "call id")
        if room_id is None:
            room_id = self._fresh(self._new_room_id, self._room_call, "room id")

        call = Call(call_id, room_id, group_id, media_type, caller, user_data, now)
        self.calls[call_id] = call
        self._room_call[room_id] = call_id
        self._add_member(call, caller, MemberState.JOINED, CallRole.CALLER, "", None)
        out: list[Notify] = []
        for callee in callees:
            if callee in self._user_call:
                out.append(_notify(call, caller, "onUserLineBusy", userId=callee))
                continue
            self._add_invitee(call, callee, caller, now + timeout)
            out.append(self._received(call, callee, caller, list(callees)))
        out += self._settle(now, call)
        return call, out

    def accept(self, now: float, user_id: str, call_id: str) -> list[Notify]:
        """A ringing invitee accepts: the call begins for it (and for a waiting caller)."""
        call, member = self._member(user_id, call_id)
        if member.state is MemberState.JOINED:
            raise CallStateError(ErrorCode.REQUEST_REPEATED, "already accepted")
        return self._enter(now, call, member)

    def reject(self, now: float, user_id: str, call_id: str) -> list[Notify]:
        """A ringing invitee rejects."""
        return self._exit_invitee(now, *self._ringing(user_id, call_id), "reject")

    def ignore(self, now: float, user_id: str, call_id: str) -> list[Notify]:
        """A ringing invitee stops ringing without rejecting (others see line busy)."""
        return self._exit_invitee(now, *self._ringing(user_id, call_id), "ignore")

    def hangup(self, now: float, user_id: str, call_id: str) -> list[Notify]:
        """Hang up: cancel (caller before anyone accepted), leave (joined) or reject (ringing)."""
        call, member = self._member(user_id, call_id)
        if member.state is MemberState.RINGING:
            return self._exit_invitee(now, call, member, "reject")
        return self._leave(now, call, member)

    def invite(
        self, now: float, user_id: str, call_id: str, callees: list[str], *, timeout: float = 30.0
    ) -> list[Notify]:
        """A joined member invites more users into the call; busy ones are reported."""
        user_id = _check_user_id(user_id)
        callees = _check_user_list(callees, user_id, self.MAX_PARTICIPANTS - 1)
        timeout = _check_timeout(timeout)
        call, member = self._member(user_id, call_id)
        if member.state is not MemberState.JOINED:
            raise _refused("only a joined member can invite")
        already = [u for u in callees if u in call.members]
        if already:
            raise _invalid(f"already in the call: {', '.join(already)}")
        if len(call.members) + len(callees) > self.MAX_PARTICIPANTS:
            raise _invalid(f"a call holds at most {self.MAX_PARTICIPANTS} people")

        free = [u for u in callees if u not in self._user_call]
        callee_list = [u for u in call.members if u != user_id] + free
        out: list[Notify] = []
        for callee in callees:
            if callee not in free:
                out += [_notify(call, j, "onUserLineBusy", userId=callee) for j in call.joined()]
                continue
            self._add_invitee(call, callee, user_id, now + timeout)
            out.append(self._received(call, callee, user_id, callee_list))
        return out

    def join(
        self,
        now: float,
        user_id: str,
        room_id: int,
        media_type: int,  # validated: 1 or 2
        *,
        group_id: str | None = None,
        granted_groups: frozenset[str] = frozenset(),
    ) -> tuple[Call, list[Notify]]:
        """Join a connected call by its room id (an accept if the user rings in it).

        Who may join (docs/events.md, "Joining by room id"): a ringing invitee always (that
        is an accept); anybody else only into a *group* call (non-empty ``groupId``, never a
        1v1 call), and only if they were invited to it before or ``granted_groups`` (from
        the application's grant in their UserSig) holds its group id. ``group_id``, when
        given, must be the call's.
        """
        user_id = _check_user_id(user_id)
        room_id = _check_room_id(room_id)
        media_type = _check_media_type(media_type)
        call = self.call_by_room(room_id)
        if call is None:
            raise _invalid(f"no call in room {room_id}")
        if media_type != call.media_type:
            raise _invalid("callMediaType differs from the call's")
        member = call.members.get(user_id)
        if member is not None:
            if member.state is MemberState.JOINED:
                raise CallStateError(ErrorCode.REQUEST_REPEATED, "already in this call")
            return call, self._enter(now, call, member)
        if not call.group_id:
            raise _refused("a 1v1 call cannot be joined by room id")
        if group_id is not None and group_id != call.group_id:
            raise _refused("groupId is not the group of the call in this room")
        if user_id not in call.invited and call.group_id not in granted_groups:
            raise _refused(
                "not invited to this call and not authorized for its group "
                "(see docs/events.md, 'Joining by room id')"
            )
        if user_id in self._user_call:
            raise _refused("already in another call")
        if not call.begun:
            raise _refused("the call has not connected yet")
        if len(call.members) >= self.MAX_PARTICIPANTS:
            raise _refused("the call is full")
        member = self._add_member(call, user_id, MemberState.RINGING, CallRole.CALLED, "", None)
        return call, self._enter(now, call, member)

    def switch_media_type(
        self, now: float, user_id: str, call_id: str, media_type: CallMediaType
    ) -> list[Notify]:
        """Switch a connected call between audio and video; every joined member is told."""
        media_type = _check_media_type(media_type)
        call, member = self._member(user_id, call_id)
        if member.state is not MemberState.JOINED or not call.begun:
            raise _refused("only a member of a connected call can switch the media type")
        if media_type == call.media_type:
            raise CallStateError(ErrorCode.REQUEST_REPEATED, "the call already has this media type")
        old, call.media_type = call.media_type, media_type
        for m in call.members.values():
            m.video = media_type is CallMediaType.VIDEO
        return [
            _notify(
                call,
                j,
                "onCallMediaTypeChanged",
                oldCallMediaType=int(old),
                newCallMediaType=int(media_type),
            )
            for j in call.joined()
        ]

    def set_device(
        self,
        now: float,
        user_id: str,
        call_id: str,
        *,
        audio: bool | None = None,
        video: bool | None = None,
    ) -> list[Notify]:
        """Microphone / camera opened or closed; other joined members hear of real changes."""
        for value in (audio, video):
            if value is not None and not isinstance(value, bool):
                raise _invalid("audio / video must be booleans")
        call, member = self._member(user_id, call_id)
        if member.state is not MemberState.JOINED:
            raise _refused("only a joined member can change devices")
        if video and call.media_type is not CallMediaType.VIDEO:
            raise CallStateError(ErrorCode.SCENE_NOT_SUPPORTED, "no camera in an audio call")
        others = [j for j in call.joined() if j != member.user_id]
        out: list[Notify] = []
        if audio is not None and audio != member.audio:
            member.audio = audio
            out += [
                _notify(
                    call, o, "onUserAudioAvailable", userId=member.user_id, isAudioAvailable=audio
                )
                for o in others
            ]
        if video is not None and video != member.video:
            member.video = video
            out += [
                _notify(
                    call, o, "onUserVideoAvailable", userId=member.user_id, isVideoAvailable=video
                )
                for o in others
            ]
        return out

    def disconnect(self, now: float, user_id: str) -> list[Notify]:
        """The user went offline: a ringing user times out, a joined one hangs up."""
        call = self.call_of(user_id)
        if call is None:
            return []
        member = call.members[user_id]
        if member.state is MemberState.RINGING:
            return self._exit_invitee(now, call, member, "timeout")
        return self._leave(now, call, member)

    def end_call(self, now: float, call_id: str) -> list[Notify]:
        """An operator ends a live call: members who began get ``onCallEnd``, the others
        (ringing, or a caller nobody answered yet) ``onCallCancelled {userId: caller}``."""
        call = self.calls.get(call_id) if isinstance(call_id, str) else None
        if call is None:
            raise _refused("no such call")
        out = [
            self._end(now, call, m)
            if m.began_at is not None
            else _notify(call, m.user_id, "onCallCancelled", userId=call.caller_id)
            for m in call.members.values()
        ]
        self._remove_call(call)
        return out

    def handle_timer(self, now: float) -> list[Notify]:
        """Time out every invitee whose ringing deadline is ``<= now``, earliest first."""
        out: list[Notify] = []
        while self._timers and self._timers[0][0] <= now:
            entry = heapq.heappop(self._timers)
            if self._timer_live(entry):
                call = self.calls[entry[2]]
                out += self._exit_invitee(now, call, call.members[entry[3]], "timeout")
        return out

    # ---------------------------------------------------------------- lookups

    def _member(self, user_id: str, call_id: str) -> tuple[Call, Member]:
        _check_user_id(user_id)
        if not isinstance(call_id, str):
            raise _invalid("callId must be a string")
        call = self.calls.get(call_id)
        if call is None:
            raise _refused("no such call")
        member = call.members.get(user_id)
        if member is None:
            raise _refused("not a member of this call")
        return call, member

    def _ringing(self, user_id: str, call_id: str) -> tuple[Call, Member]:
        call, member = self._member(user_id, call_id)
        if member.state is not MemberState.RINGING:
            raise _refused("not ringing in this call")
        return call, member

    def _timer_live(self, entry: tuple[float, int, str, str]) -> bool:
        deadline, _, call_id, user_id = entry
        call = self.calls.get(call_id)
        member = None if call is None else call.members.get(user_id)
        return (
            member is not None
            and member.state is MemberState.RINGING
            and member.deadline == deadline
        )

    def _fresh(self, make: Callable[[], Any], in_use: Iterable[Any], what: str) -> Any:
        for _ in range(1000):
            value = make()
            if value not in in_use:
                return value
        raise CallStateError(ErrorCode.INTERNAL, f"could not allocate a free {what}")

    # ---------------------------------------------------------------- transitions

    def _add_member(
        self,
        call: Call,
        user_id: str,
        state: MemberState,
        role: CallRole,
        invited_by: str,
        deadline: float | None,
    ) -> Member:
        member = Member(
            user_id,
            state,
            role,
            invited_by,
            deadline,
            None,
            video=call.media_type is CallMediaType.VIDEO,
        )
        call.members[user_id] = member
        call.invited.add(user_id)
        self._user_call[user_id] = call.call_id
        if deadline is not None:
            heapq.heappush(self._timers, (deadline, next(self._seq), call.call_id, user_id))
        return member

    def _add_invitee(self, call: Call, user_id: str, inviter: str, deadline: float) -> Member:
        return self._add_member(
            call, user_id, MemberState.RINGING, CallRole.CALLED, inviter, deadline
        )

    def _remove_member(self, call: Call, user_id: str) -> None:
        del call.members[user_id]
        del self._user_call[user_id]

    def _remove_call(self, call: Call) -> None:
        for user_id in call.members:
            del self._user_call[user_id]
        call.members.clear()
        del self.calls[call.call_id]
        del self._room_call[call.room_id]

    def _received(self, call: Call, callee: str, inviter: str, callee_list: list[str]) -> Notify:
        call.members[callee].invite_list = list(callee_list)
        return _notify(
            call,
            callee,
            "onCallReceived",
            callerId=inviter,
            calleeIdList=list(callee_list),
            groupId=call.group_id,
            callMediaType=int(call.media_type),
            userData=call.user_data,
        )

    def _begin(self, now: float, call: Call, member: Member) -> Notify:
        member.began_at = now
        return _notify(
            call,
            member.user_id,
            "onCallBegin",
            roomID=call.room_id,
            callMediaType=int(call.media_type),
            callRole=int(member.role),
        )

    def _end(self, now: float, call: Call, member: Member) -> Notify:
        assert member.began_at is not None
        return _notify(
            call,
            member.user_id,
            "onCallEnd",
            roomID=call.room_id,
            callMediaType=int(call.media_type),
            callRole=int(member.role),
            totalTime=max(0, round(now - member.began_at)),
        )

    def _enter(self, now: float, call: Call, member: Member) -> list[Notify]:
        """``member`` (ringing, or just added) joins: the call begins for it."""
        out: list[Notify] = []
        others = [j for j in call.joined() if j != member.user_id]
        member.state, member.deadline = MemberState.JOINED, None
        call.begun = True
        for other in others:
            out.append(_notify(call, other, "onUserJoin", userId=member.user_id))
            waiting = call.members[other]
            if waiting.began_at is None:
                out.append(self._begin(now, call, waiting))
            out += self._audio_on(call, other, member)
        out.append(self._begin(now, call, member))
        for o in others:
            out.append(_notify(call, member.user_id, "onUserJoin", userId=o))
            out += self._audio_on(call, member.user_id, call.members[o])
        return out

    @staticmethod
    def _audio_on(call: Call, to: str, member: Member) -> list[Notify]:
        """TUICallKit announces a member who joins with the microphone on to the others."""
        if not member.audio:
            return []
        return [
            _notify(call, to, "onUserAudioAvailable", userId=member.user_id, isAudioAvailable=True)
        ]

    def _exit_invitee(self, now: float, call: Call, member: Member, how: str) -> list[Notify]:
        """A ringing invitee rejects, ignores or times out (see :data:`INVITEE_EXITS`)."""
        user_id = member.user_id
        self._remove_member(call, user_id)
        out = [_notify(call, user_id, "onCallCancelled", userId=user_id)]
        out += [_notify(call, j, INVITEE_EXITS[how], userId=user_id) for j in call.joined()]
        if how == "reject" and call.is_group():
            # TUICallKit: "in a group call every invitee gets onUserReject", ringing ones too
            out += [_notify(call, r, "onUserReject", userId=user_id) for r in call.ringing()]
        return out + self._settle(now, call)

    def _leave(self, now: float, call: Call, member: Member) -> list[Notify]:
        """A joined member hangs up: cancels a call nobody accepted yet, else leaves it."""
        if not call.begun:
            out = [
                _notify(call, u, "onCallCancelled", userId=call.caller_id)
                for u in [member.user_id, *call.ringing()]
            ]
            self._remove_call(call)
            return out
        self._remove_member(call, member.user_id)
        out = [_notify(call, j, "onUserLeave", userId=member.user_id) for j in call.joined()]
        out.append(self._end(now, call, member))
        return out + self._settle(now, call)

    def _settle(self, now: float, call: Call) -> list[Notify]:
        """End the call when it cannot go on: fewer than two joined and nobody to wait for."""
        joined, ringing = call.joined(), call.ringing()
        if len(joined) >= 2 or (len(joined) == 1 and ringing):
            return []
        out: list[Notify] = []
        if joined:
            last = call.members[joined[0]]
            if last.began_at is not None:
                out.append(self._end(now, call, last))
            else:
                out.append(_notify(call, last.user_id, "onCallCancelled", userId=last.user_id))
        else:
            out += [_notify(call, r, "onCallCancelled", userId=call.caller_id) for r in ringing]
        self._remove_call(call)
        return out


def _notify(call: Call, user_id: str, event: str, **payload: Any) -> Notify:
    return Notify(user_id, event, payload, call.call_id)
