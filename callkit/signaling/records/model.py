"""Call records in TUICallKit's shape: one :class:`CallRecord` per call, with its members.

Times are Unix milliseconds (ints); ``0`` means "not yet" / "never". Field names on the
wire (REST, webhooks, engine) are the camelCase names of :meth:`CallRecord.to_json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

__all__ = ["CallRecord", "CallResult", "CallType", "LeaveReason", "MemberRecord"]


class CallResult(str, Enum):
    """How a call ended (``callResult``); empty while the call is live."""

    LIVE = ""
    #: the caller hung up before anybody answered
    CANCEL = "Cancel"
    #: the callee (or, in a group call, an invitee and nobody answered) rejected
    REJECT = "Reject"
    #: nobody answered before the ring timeout
    NOT_ANSWER = "NotAnswer"
    #: connected, then ended by the members
    NORMAL_END = "NormalEnd"
    #: every callee was busy (in another call, or ignored the call)
    CALL_BUSY = "CallBusy"
    #: the server died while the call was live (closed at the next start)
    INTERRUPT = "Interrupt"
    #: nobody answered because the callee(s) went offline while ringing
    OFFLINE = "Offline"
    #: ended by an operator (``POST /v1/calls/{callId}/end``)
    END_BY_SERVER = "EndByServer"


class CallType(str, Enum):
    """``callType``: a 1v1 call or a group call."""

    SINGLE = "single"
    GROUP = "group"


class LeaveReason(str, Enum):
    """Why a member left (``leftReason``); empty while still in the call or ringing."""

    NONE = ""
    HANGUP = "Hangup"
    REJECT = "Reject"
    NO_RESPONSE = "NoResponse"
    #: in another call when invited (never rang)
    BUSY = "Busy"
    #: ignored the call (the caller saw line busy)
    IGNORE = "Ignore"
    #: the caller cancelled while this member rang, or the call ended around it
    CANCEL = "Cancel"
    #: the call ended because too few members were left
    CALL_END = "CallEnd"
    OFFLINE = "Offline"
    END_BY_SERVER = "EndByServer"
    INTERRUPT = "Interrupt"


@dataclass
class MemberRecord:
    """One user's part in a call."""

    user_id: str
    #: "caller" or "callee"
    role: str
    invited_time: int = 0
    joined_time: int = 0
    left_time: int = 0
    left_reason: LeaveReason = LeaveReason.NONE

    def to_json(self) -> dict[str, Any]:
        """The member as ``{userId, role, invitedTime, joinedTime, leftTime, leftReason}``."""
        return {
            "userId": self.user_id,
            "role": self.role,
            "invitedTime": self.invited_time,
            "joinedTime": self.joined_time,
            "leftTime": self.left_time,
            "leftReason": self.left_reason.value,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> MemberRecord:
        """Inverse of :meth:`to_json`."""
        return cls(
            user_id=obj["userId"],
            role=obj["role"],
            invited_time=int(obj["invitedTime"]),
            joined_time=int(obj["joinedTime"]),
            left_time=int(obj["leftTime"]),
            left_reason=LeaveReason(obj["leftReason"]),
        )

    @property
    def present(self) -> bool:
        """Still ringing or in the call."""
        return self.left_time == 0


@dataclass
class CallRecord:
    """One call, written as it progresses (see docs/records.md)."""

    call_id: str
    sdk_app_id: int
    caller: str
    media_type: int
    call_type: CallType
    room_id: int
    group_id: str
    user_data: str
    start_time: int
    accept_time: int = 0
    end_time: int = 0
    call_result: CallResult = CallResult.LIVE
    #: every user ever invited or joined, caller first, in order of appearance
    members: dict[str, MemberRecord] = field(default_factory=dict)
    #: Unix ms when the server last wrote or confirmed this live call (for crash recovery)
    last_seen: int = 0

    @property
    def live(self) -> bool:
        """True until the call ended (``callResult`` set)."""
        return self.call_result is CallResult.LIVE

    def snapshot(self) -> CallRecord:
        """A copy that later changes to this record do not reach (members included)."""
        members = {u: replace(m) for u, m in self.members.items()}
        return replace(self, members=members)

    @property
    def callees(self) -> list[str]:
        """Everybody but the caller, in order of invitation."""
        return [u for u in self.members if u != self.caller]

    def to_json(self) -> dict[str, Any]:
        """The record as one JSON object with TUICallKit's field names."""
        return {
            "callId": self.call_id,
            "sdkAppId": self.sdk_app_id,
            "caller": self.caller,
            "callees": self.callees,
            "mediaType": self.media_type,
            "callType": self.call_type.value,
            "roomId": self.room_id,
            "groupId": self.group_id,
            "userData": self.user_data,
            "startTime": self.start_time,
            "acceptTime": self.accept_time,
            "endTime": self.end_time,
            "callResult": self.call_result.value,
            "members": [m.to_json() for m in self.members.values()],
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any], last_seen: int = 0) -> CallRecord:
        """Inverse of :meth:`to_json`."""
        members = [MemberRecord.from_json(m) for m in obj["members"]]
        return cls(
            call_id=obj["callId"],
            sdk_app_id=int(obj["sdkAppId"]),
            caller=obj["caller"],
            media_type=int(obj["mediaType"]),
            call_type=CallType(obj["callType"]),
            room_id=int(obj["roomId"]),
            group_id=obj["groupId"],
            user_data=obj["userData"],
            start_time=int(obj["startTime"]),
            accept_time=int(obj["acceptTime"]),
            end_time=int(obj["endTime"]),
            call_result=CallResult(obj["callResult"]),
            members={m.user_id: m for m in members},
            last_seen=last_seen,
        )
