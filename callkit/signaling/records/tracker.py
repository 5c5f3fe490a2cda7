"""Turn the call state machine's notifications into call records and webhook events.

Pure and synchronous like :mod:`callkit.signaling.callstate`: the server hands every batch
of :class:`~callkit.signaling.callstate.Notify` it delivers to :meth:`RecordTracker.apply`,
with the live calls, who acted and why; the tracker updates its live records and returns
the :class:`Write` list for the record writer (one per touched call). Time is passed in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from ..callstate import Call, Notify
from .model import CallRecord, CallResult, CallType, LeaveReason, MemberRecord

__all__ = [
    "AFTER_END_CALL",
    "AFTER_MEMBER_CHANGED",
    "AFTER_START_CALL",
    "Cause",
    "RecordTracker",
    "WebhookEvent",
    "Write",
    "interrupt",
]

AFTER_START_CALL = "Call.CallbackAfterStartCall"
AFTER_MEMBER_CHANGED = "Call.CallbackAfterMemberChanged"
AFTER_END_CALL = "Call.CallbackAfterEndCall"


class Cause(str, Enum):
    """Why the operation behind a batch of notifications happened."""

    #: a member's own request (call, accept, hangup, ...) or a ring timeout
    NORMAL = "normal"
    #: the acting user went offline (socket gone, resume grace over)
    OFFLINE = "offline"
    #: an operator ended the call
    SERVER = "server"


@dataclass(frozen=True)
class WebhookEvent:
    """One webhook to deliver: ``event_id`` is its idempotency key."""

    event_id: str
    command: str
    #: the JSON body (compact), exactly as it is signed and sent
    body: str


@dataclass
class Write:
    """One call's record as it is now, plus the webhook events this change produced.

    ``record`` is a snapshot (:meth:`~.model.CallRecord.snapshot`): the writer stores it
    later, in the same transaction as ``events``, so it must not show changes whose events
    are in a later write (a crash between the two would keep the change and lose its events).
    """

    record: CallRecord
    events: list[WebhookEvent] = field(default_factory=list)


def _result(record: CallRecord, cause: Cause) -> CallResult:
    """``callResult`` of a call that just ended (see docs/records.md for the rules)."""
    if cause is Cause.SERVER:
        return CallResult.END_BY_SERVER
    if record.accept_time:
        return CallResult.NORMAL_END
    caller = record.members.get(record.caller)
    if caller is not None and caller.left_reason in (LeaveReason.CANCEL, LeaveReason.OFFLINE):
        return CallResult.CANCEL
    reasons = {m.left_reason for u, m in record.members.items() if u != record.caller}
    for reason, result in (
        (LeaveReason.REJECT, CallResult.REJECT),
        (LeaveReason.NO_RESPONSE, CallResult.NOT_ANSWER),
        (LeaveReason.OFFLINE, CallResult.OFFLINE),
        (LeaveReason.BUSY, CallResult.CALL_BUSY),
        (LeaveReason.IGNORE, CallResult.CALL_BUSY),
    ):
        if reason in reasons:
            return result
    return CallResult.CANCEL


def _body(command: str, event_id: str, sdk_app_id: int, now: int, info: object) -> str:
    return json.dumps(
        {
            "CallbackCommand": command,
            "EventId": event_id,
            "SdkAppId": sdk_app_id,
            "CallbackTs": now,
            "EventInfo": info,
        },
        separators=(",", ":"),
    )


def end_event(record: CallRecord, now: int) -> WebhookEvent:
    """``Call.CallbackAfterEndCall`` for an ended record."""
    event_id = f"{record.call_id}:end"
    body = _body(AFTER_END_CALL, event_id, record.sdk_app_id, now, record.to_json())
    return WebhookEvent(event_id, AFTER_END_CALL, body)


def interrupt(record: CallRecord, now: int, webhooks: bool) -> Write:
    """Close a record left live by a server that died: ``Interrupt`` at its ``last_seen``."""
    at = record.last_seen or record.start_time
    record.end_time = at
    record.call_result = CallResult.INTERRUPT
    for member in record.members.values():
        if member.present:
            member.left_time = at
            member.left_reason = LeaveReason.INTERRUPT
    return Write(record, [end_event(record, now)] if webhooks else [])


class RecordTracker:
    """The live calls' records, updated from each batch of notifications."""

    def __init__(self, sdk_app_id: int, *, webhooks: bool = False) -> None:
        self.sdk_app_id = sdk_app_id
        #: emit webhook events (only when webhook URLs are configured)
        self.webhooks = webhooks
        #: records of the calls that are live, by call id
        self.live: dict[str, CallRecord] = {}
        self._seq: dict[str, int] = {}
        self._fresh: set[str] = set()

    def _event(self, record: CallRecord, command: str, now: int, info: object) -> WebhookEvent:
        n = self._seq.get(record.call_id, 0) + 1
        self._seq[record.call_id] = n
        event_id = f"{record.call_id}:{n}"
        return WebhookEvent(event_id, command, _body(command, event_id, self.sdk_app_id, now, info))

    def _member_changed(
        self, record: CallRecord, now: int, user: str, action: str, reason: str = ""
    ) -> WebhookEvent:
        info = {
            "callId": record.call_id,
            "roomId": record.room_id,
            "userId": user,
            "action": action,
            "reason": reason,
            "time": now,
            "members": [u for u, m in record.members.items() if m.present],
        }
        return self._event(record, AFTER_MEMBER_CHANGED, now, info)

    def start(self, now: int, call: Call) -> CallRecord:
        """A call was just created (before :meth:`apply` sees its notifications)."""
        record = CallRecord(
            call_id=call.call_id,
            sdk_app_id=self.sdk_app_id,
            caller=call.caller_id,
            media_type=int(call.media_type),
            call_type=CallType.GROUP if call.group_id else CallType.SINGLE,
            room_id=call.room_id,
            group_id=call.group_id,
            user_data=call.user_data,
            start_time=now,
            last_seen=now,
        )
        record.members[call.caller_id] = MemberRecord(
            call.caller_id, "caller", invited_time=now, joined_time=now
        )
        self.live[record.call_id] = record
        self._fresh.add(record.call_id)
        return record

    def apply(
        self,
        now: int,
        notifies: list[Notify],
        calls: Mapping[str, Call],
        *,
        actor: str | None = None,
        cause: Cause = Cause.NORMAL,
    ) -> list[Write]:
        """Record one operation: the ``notifies`` it produced, the ``calls`` live after it,
        the ``actor`` it was for (if any) and its ``cause``; returns a write per touched call."""
        # a fresh call is recorded with the batch that carries its first notifications
        fresh = {n.call_id for n in notifies} & self._fresh
        self._fresh -= fresh
        touched: dict[str, list[WebhookEvent]] = {c: [] for c in fresh}
        explicit: dict[tuple[str, str], LeaveReason] = {}
        for n in notifies:
            record_or_none = self.live.get(n.call_id)
            if record_or_none is None:
                continue
            record = record_or_none
            events = touched.setdefault(record.call_id, [])
            subject = n.payload.get("userId")
            if n.event == "onCallReceived":
                member = record.members.get(n.user_id)
                if member is None:
                    member = record.members[n.user_id] = MemberRecord(n.user_id, "callee")
                member.invited_time, member.joined_time = now, 0
                member.left_time, member.left_reason = 0, LeaveReason.NONE
                if record.call_id not in fresh and self.webhooks:
                    events.append(self._member_changed(record, now, n.user_id, "Invite"))
            elif n.event == "onCallBegin":
                member = record.members.get(n.user_id)
                if member is None:  # joined by room id without an invitation
                    member = record.members[n.user_id] = MemberRecord(n.user_id, "callee", now)
                record.accept_time = record.accept_time or now
                if member.role == "callee" and not member.joined_time:
                    member.joined_time = now
                    if self.webhooks:
                        events.append(self._member_changed(record, now, n.user_id, "Join"))
            elif n.event == "onUserLineBusy" and isinstance(subject, str):
                member = record.members.get(subject)
                if member is not None and member.present:
                    explicit[(record.call_id, subject)] = LeaveReason.IGNORE
                else:
                    record.members[subject] = MemberRecord(
                        subject, "callee", now, 0, now, LeaveReason.BUSY
                    )
            elif n.event == "onCallMediaTypeChanged":
                record.media_type = int(n.payload["newCallMediaType"])
            elif n.event == "onUserReject" and isinstance(subject, str):
                explicit[(record.call_id, subject)] = LeaveReason.REJECT
            elif n.event == "onUserNoResponse" and isinstance(subject, str):
                offline = cause is Cause.OFFLINE and subject == actor
                explicit[(record.call_id, subject)] = (
                    LeaveReason.OFFLINE if offline else LeaveReason.NO_RESPONSE
                )
        out: list[Write] = []
        for call_id, events in touched.items():
            record = self.live[call_id]
            call = calls.get(call_id)
            still = call.members if call is not None else {}
            # invitees dropped without a reason of their own: the caller cancelled on them
            cancelled = any(
                m.present and u not in still and (call_id, u) not in explicit
                for u, m in record.members.items()
                if u != record.caller
            )
            for user, member in record.members.items():
                if not member.present or user in still:
                    continue
                reason = explicit.get((call_id, user)) or self._fallback(
                    record, member, actor, cause, cancelled
                )
                member.left_time, member.left_reason = now, reason
                if self.webhooks:
                    events.append(self._member_changed(record, now, user, "Leave", reason.value))
            record.last_seen = now
            if call_id in fresh and self.webhooks:
                info = record.to_json()
                events.insert(0, self._event(record, AFTER_START_CALL, now, info))
            if call is None:
                record.end_time = now
                record.call_result = _result(record, cause)
                if self.webhooks:
                    events.append(end_event(record, now))
                del self.live[call_id]
                self._seq.pop(call_id, None)
            out.append(Write(record.snapshot(), events))
        return out

    @staticmethod
    def _fallback(
        record: CallRecord, member: MemberRecord, actor: str | None, cause: Cause, cancelled: bool
    ) -> LeaveReason:
        """Why ``member`` left when no notification said so."""
        if cause is Cause.SERVER:
            return LeaveReason.END_BY_SERVER
        if member.user_id == actor:
            if cause is Cause.OFFLINE:
                return LeaveReason.OFFLINE
            if not record.accept_time and member.role == "caller":
                return LeaveReason.CANCEL if cancelled else LeaveReason.CALL_END
            return LeaveReason.HANGUP
        if member.joined_time:
            return LeaveReason.CALL_END
        return LeaveReason.CANCEL
