"""Pure: the record tracker turns the call state machine's notifications into records."""

from __future__ import annotations

import json

from callkit.signaling.callstate import CallRegistry, Notify
from callkit.signaling.codes import CallMediaType
from callkit.signaling.records.model import CallRecord, CallResult, LeaveReason
from callkit.signaling.records.tracker import (
    AFTER_END_CALL,
    AFTER_MEMBER_CHANGED,
    AFTER_START_CALL,
    Cause,
    RecordTracker,
    Write,
    interrupt,
)

AUDIO = CallMediaType.AUDIO


class Rig:
    """A registry and a tracker driven together, like the server does (time in seconds)."""

    def __init__(self) -> None:
        self.reg = CallRegistry()
        self.tracker = RecordTracker(1400000001, webhooks=True)
        self.writes: list[Write] = []
        self.now = 100.0

    def ms(self) -> int:
        return int(self.now * 1000)

    def feed(self, notifies: list[Notify], actor: str | None = None, cause=Cause.NORMAL) -> None:
        self.writes += self.tracker.apply(
            self.ms(), notifies, self.reg.calls, actor=actor, cause=cause
        )

    def call(self, caller: str, callees: list[str], group: str = "") -> str:
        call, notifies = self.reg.start_call(self.now, caller, callees, AUDIO, group_id=group)
        self.tracker.start(self.ms(), call)
        self.feed(notifies, caller)
        return call.call_id

    def op(self, name: str, user: str, call_id: str) -> None:
        self.feed(getattr(self.reg, name)(self.now, user, call_id), user)

    def last(self, call_id: str) -> CallRecord:
        return [w.record for w in self.writes if w.record.call_id == call_id][-1]

    def events(self, call_id: str) -> list[tuple[str, dict]]:
        out = []
        for w in self.writes:
            for e in w.events:
                body = json.loads(e.body)
                if body["EventInfo"]["callId"] == call_id:
                    out.append((e.command, body))
        return out


def test_connected_1v1_call_ends_normally_with_times_and_webhooks() -> None:
    rig = Rig()
    cid = rig.call("alice", ["bob"])
    rig.now = 103.0
    rig.op("accept", "bob", cid)
    rig.feed(rig.reg.switch_media_type(rig.now, "alice", cid, CallMediaType.VIDEO), "alice")
    rig.now = 110.5
    rig.op("hangup", "bob", cid)
    r = rig.last(cid).to_json()
    assert r["callResult"] == "NormalEnd" and r["callType"] == "single"
    assert r["mediaType"] == 2  # switched from audio mid-call
    assert (r["startTime"], r["acceptTime"], r["endTime"]) == (100_000, 103_000, 110_500)
    assert r["caller"] == "alice" and r["callees"] == ["bob"]
    members = {m["userId"]: m for m in r["members"]}
    assert members["bob"] == {
        "userId": "bob",
        "role": "callee",
        "invitedTime": 100_000,
        "joinedTime": 103_000,
        "leftTime": 110_500,
        "leftReason": "Hangup",
    }
    assert members["alice"]["leftReason"] == "CallEnd"
    assert cid not in rig.tracker.live
    commands = [c for c, _ in rig.events(cid)]
    assert commands[0] == AFTER_START_CALL and commands[-1] == AFTER_END_CALL
    assert commands.count(AFTER_MEMBER_CHANGED) == 3  # bob joins, bob leaves, alice leaves
    ids = [b["EventId"] for _, b in rig.events(cid)]
    assert len(set(ids)) == len(ids)  # one idempotency key per event


def test_not_connected_results() -> None:
    rig = Rig()
    cid = rig.call("alice", ["bob"])
    rig.op("reject", "bob", cid)
    assert rig.last(cid).call_result is CallResult.REJECT
    assert rig.last(cid).members["bob"].left_reason is LeaveReason.REJECT

    cid = rig.call("alice", ["bob"])
    rig.op("hangup", "alice", cid)
    assert rig.last(cid).call_result is CallResult.CANCEL
    assert rig.last(cid).members["bob"].left_reason is LeaveReason.CANCEL

    cid = rig.call("alice", ["bob"])
    rig.now += 31
    rig.feed(rig.reg.handle_timer(rig.now))
    assert rig.last(cid).call_result is CallResult.NOT_ANSWER
    assert rig.last(cid).members["bob"].left_reason is LeaveReason.NO_RESPONSE

    cid = rig.call("alice", ["bob"])
    rig.op("ignore", "bob", cid)
    assert rig.last(cid).call_result is CallResult.CALL_BUSY

    cid = rig.call("alice", ["bob"])
    rig.feed(rig.reg.disconnect(rig.now, "bob"), "bob", Cause.OFFLINE)
    assert rig.last(cid).call_result is CallResult.OFFLINE
    assert rig.last(cid).accept_time == 0


def test_busy_callee_is_recorded_without_ringing() -> None:
    rig = Rig()
    first = rig.call("carol", ["dave"])
    cid = rig.call("alice", ["dave"])
    r = rig.last(cid)
    assert r.call_result is CallResult.CALL_BUSY and not r.live
    assert r.members["dave"].left_reason is LeaveReason.BUSY
    assert first in rig.tracker.live


def test_group_call_member_history_and_end_by_server() -> None:
    rig = Rig()
    cid = rig.call("alice", ["bob", "carol", "dan"], group="g1")
    rig.op("accept", "bob", cid)
    rig.now += 1
    rig.op("reject", "carol", cid)
    rig.op("accept", "dan", cid)
    rig.now += 5
    rig.op("hangup", "dan", cid)
    rig.feed(rig.reg.invite(rig.now, "alice", cid, ["erin"]), "alice")
    assert rig.last(cid).live and rig.last(cid).call_type.value == "group"
    rig.now += 2
    rig.feed(rig.reg.end_call(rig.now, cid), None, Cause.SERVER)
    r = rig.last(cid)
    assert r.call_result is CallResult.END_BY_SERVER
    reasons = {u: m.left_reason.value for u, m in r.members.items()}
    assert reasons == {
        "alice": "EndByServer",
        "bob": "EndByServer",
        "carol": "Reject",
        "dan": "Hangup",
        "erin": "EndByServer",
    }
    assert r.members["erin"].joined_time == 0
    invites = [
        b["EventInfo"]
        for c, b in rig.events(cid)
        if c == AFTER_MEMBER_CHANGED and b["EventInfo"]["action"] == "Invite"
    ]
    assert [i["userId"] for i in invites] == ["erin"]


def test_interrupt_closes_at_last_seen() -> None:
    rig = Rig()
    cid = rig.call("alice", ["bob"])
    rig.op("accept", "bob", cid)
    record = CallRecord.from_json(rig.last(cid).to_json(), last_seen=123_456)
    write = interrupt(record, 999_999, webhooks=True)
    assert record.call_result is CallResult.INTERRUPT and record.end_time == 123_456
    assert {m.left_reason for m in record.members.values()} == {LeaveReason.INTERRUPT}
    assert [e.command for e in write.events] == [AFTER_END_CALL]
    assert json.loads(write.events[0].body)["EventInfo"]["callResult"] == "Interrupt"


def test_record_json_round_trips() -> None:
    rig = Rig()
    cid = rig.call("alice", ["bob", "carol"], group="g")
    rig.op("accept", "carol", cid)
    r = rig.last(cid)
    assert CallRecord.from_json(r.to_json(), r.last_seen) == r


def test_a_write_is_a_snapshot_later_changes_do_not_reach() -> None:
    """The writer stores a write later, with its events: a later accept must not show in the
    start's write (its Join event is in the next write; a crash between would lose it)."""
    rig = Rig()
    cid = rig.call("alice", ["bob"])
    start = rig.last(cid)
    rig.op("accept", "bob", cid)
    assert start.accept_time == 0 and start.members["bob"].joined_time == 0
    assert rig.last(cid).accept_time and rig.last(cid).members["bob"].joined_time
    assert rig.tracker.live[cid] is not rig.last(cid)
