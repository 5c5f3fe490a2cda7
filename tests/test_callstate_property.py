"""Random operation sequences against the call state machine, checking its invariants.

Besides the registry's own consistency, every user's event stream is replayed through a
small per-(user, call) automaton that must agree with the registry after every step:

    idle    --onCallReceived-->  ringing --onCallBegin--> in --onCallEnd--> idle
    idle    --onCallBegin-->     in                       (join by room id)
    calling --onCallBegin-->     in                       (the caller, once someone accepts)
    ringing / calling --onCallCancelled--> idle

``calling`` is entered by a successful start_call. Nothing else may reach a ringing user,
and nothing but a new invitation or join may reach a user who is idle for that call.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from callkit.signaling.callstate import CallRegistry, CallStateError, MemberState, Notify
from callkit.signaling.codes import CallMediaType

USERS = ["A", "B", "C", "D", "E"]
users = st.sampled_from(USERS)
#: mostly valid callee lists, sometimes anything (duplicates, self, empty)
callee_lists = st.lists(users, unique=True, min_size=1, max_size=4) | st.lists(users, max_size=5)
media = st.sampled_from([CallMediaType.AUDIO, CallMediaType.VIDEO])
timeouts = st.sampled_from([1.0, 5.0, 30.0])

#: events a joined member may get about the call it is in
IN_CALL_EVENTS = {
    "onUserJoin",
    "onUserLeave",
    "onUserReject",
    "onUserNoResponse",
    "onUserLineBusy",
    "onCallMediaTypeChanged",
    "onUserAudioAvailable",
    "onUserVideoAvailable",
}
#: events a waiting caller may get
CALLING_EVENTS = {"onUserJoin", "onUserReject", "onUserNoResponse", "onUserLineBusy"}


class CallMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # deterministic ids: hypothesis replays draws that depend on the set of live calls
        ids = itertools.count(1)
        rooms = itertools.count(1000)
        self.reg = CallRegistry(
            new_call_id=lambda: f"c{next(ids):04d}", new_room_id=lambda: next(rooms)
        )
        self.now = 0.0
        self.status: dict[tuple[str, str], str] = {}  # (user, call id) -> automaton state
        self.begins = 0
        self.ends = 0

    # ---------------------------------------------------------------- helpers

    def _state(self) -> Any:
        return (
            copy.deepcopy(self.reg.calls),
            {u: getattr(self.reg.call_of(u), "call_id", None) for u in USERS},
            self.reg.get_timer(),
        )

    def _do(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one operation; a refusal must leave the state untouched."""
        before = self._state()
        try:
            result = fn(self.now, *args, **kwargs)
        except CallStateError as err:
            assert int(err.code) in (-1202, -1203, -1204, -1205), err
            assert self._state() == before
            return None
        return result

    def _feed(self, notifies: list[Notify]) -> None:
        for n in notifies:
            key = (n.user_id, n.call_id)
            st_ = self.status.get(key, "idle")
            ev = n.event
            if st_ == "idle":
                assert ev in ("onCallReceived", "onCallBegin"), (n, st_)
                self.status[key] = "ringing" if ev == "onCallReceived" else "in"
            elif st_ == "ringing":
                # in a group call a ringing invitee hears of the others' rejects
                assert ev in ("onCallBegin", "onCallCancelled", "onUserReject"), (n, st_)
                if ev == "onUserReject":
                    assert self.reg.calls[n.call_id].is_group(), n
                    continue
                self.status[key] = "in" if ev == "onCallBegin" else "idle"
            elif st_ == "calling":
                assert ev in CALLING_EVENTS | {"onCallBegin", "onCallCancelled"}, (n, st_)
                if ev == "onCallBegin":
                    self.status[key] = "in"
                elif ev == "onCallCancelled":
                    self.status[key] = "idle"
            else:  # in
                assert ev in IN_CALL_EVENTS | {"onCallEnd"}, (n, st_)
                if ev == "onCallEnd":
                    self.status[key] = "idle"
                    self.ends += 1
            if ev == "onCallBegin":
                self.begins += 1

    def _pick_user(self, data: st.DataObject) -> str:
        """Any user, most often one who is in a call."""
        members = [u for call in self.reg.calls.values() for u in call.members]
        return data.draw(st.sampled_from(members * 3 + USERS))

    def _pick_call(self, data: st.DataObject, user: str) -> str:
        own = self.reg.call_of(user)
        choices = [*sorted(self.reg.calls), "bogus"]
        if own is not None:
            choices = [own.call_id] * 4 + choices
        return data.draw(st.sampled_from(choices))

    # ---------------------------------------------------------------- rules

    @rule(dt=st.floats(0, 3, allow_nan=False) | st.sampled_from([0.0, 1.0, 5.0, 30.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def fire_timers(self) -> None:
        self._feed(self.reg.handle_timer(self.now))

    @rule(caller=users, callees=callee_lists, m=media, timeout=timeouts, group=st.booleans())
    def start_call(
        self, caller: str, callees: list[str], m: CallMediaType, timeout: float, group: bool
    ) -> None:
        result = self._do(
            self.reg.start_call, caller, callees, m, timeout=timeout, group_id="g" if group else ""
        )
        if result is not None:
            call, out = result
            self.status[(caller, call.call_id)] = "calling"
            self._feed(out)

    @rule(data=st.data(), op=st.sampled_from(["accept", "accept", "reject", "ignore", "hangup"]))
    def respond(self, data: st.DataObject, op: str) -> None:
        user = self._pick_user(data)
        out = self._do(getattr(self.reg, op), user, self._pick_call(data, user))
        if out is not None:
            self._feed(out)

    @rule(data=st.data(), callees=callee_lists, timeout=timeouts)
    def invite(self, data: st.DataObject, callees: list[str], timeout: float) -> None:
        user = self._pick_user(data)
        out = self._do(self.reg.invite, user, self._pick_call(data, user), callees, timeout=timeout)
        if out is not None:
            self._feed(out)

    @rule(data=st.data(), user=users, m=media)
    def join(self, data: st.DataObject, user: str, m: CallMediaType) -> None:
        rooms = [*sorted(c.room_id for c in self.reg.calls.values()), 12345]
        result = self._do(self.reg.join, user, data.draw(st.sampled_from(rooms)), m)
        if result is not None:
            self._feed(result[1])

    @rule(data=st.data(), m=media)
    def switch(self, data: st.DataObject, m: CallMediaType) -> None:
        user = self._pick_user(data)
        out = self._do(self.reg.switch_media_type, user, self._pick_call(data, user), m)
        if out is not None:
            self._feed(out)

    @rule(data=st.data(), audio=st.none() | st.booleans(), video=st.none() | st.booleans())
    def device(self, data: st.DataObject, audio: bool | None, video: bool | None) -> None:
        user = self._pick_user(data)
        out = self._do(
            self.reg.set_device, user, self._pick_call(data, user), audio=audio, video=video
        )
        if out is not None:
            self._feed(out)

    # targeted rules: valid operations, so that calls get connected, grow and shrink

    def _pairs(self, state: MemberState) -> list[tuple[str, str]]:
        return [
            (u, cid)
            for cid, call in sorted(self.reg.calls.items())
            for u, m in call.members.items()
            if m.state is state
        ]

    @precondition(lambda self: bool(self._pairs(MemberState.RINGING)))
    @rule(data=st.data(), op=st.sampled_from(["accept", "accept", "reject", "ignore", "hangup"]))
    def ringing_responds(self, data: st.DataObject, op: str) -> None:
        user, cid = data.draw(st.sampled_from(self._pairs(MemberState.RINGING)))
        self._feed(getattr(self.reg, op)(self.now, user, cid))

    @precondition(lambda self: bool(self._pairs(MemberState.JOINED)))
    @rule(
        data=st.data(),
        op=st.sampled_from(["hangup", "invite", "switch", "mic", "camera"]),
        callees=callee_lists,
        flag=st.booleans(),
    )
    def joined_acts(self, data: st.DataObject, op: str, callees: list[str], flag: bool) -> None:
        user, cid = data.draw(st.sampled_from(self._pairs(MemberState.JOINED)))
        call = self.reg.calls[cid]
        if op == "hangup":
            out = self.reg.hangup(self.now, user, cid)
        elif op == "invite":
            free = [u for u in callees if u not in call.members]
            out = self._do(self.reg.invite, user, cid, free or ["E"], timeout=5.0) or []
        elif op == "switch":
            other = 3 - int(call.media_type)
            out = self._do(self.reg.switch_media_type, user, cid, other) or []
        elif op == "mic":
            out = self.reg.set_device(self.now, user, cid, audio=flag)
        else:
            out = self._do(self.reg.set_device, user, cid, video=flag) or []
        self._feed(out)

    @precondition(lambda self: any(c.begun for c in self.reg.calls.values()))
    @rule(data=st.data())
    def idle_joins(self, data: st.DataObject) -> None:
        call = data.draw(st.sampled_from([c for c in self.reg.calls.values() if c.begun]))
        user = data.draw(users)
        grant = frozenset(data.draw(st.sampled_from([(), (call.group_id,)])))
        result = self._do(self.reg.join, user, call.room_id, call.media_type, granted_groups=grant)
        if result is not None:
            self._feed(result[1])

    @precondition(lambda self: bool(self.reg.calls))
    @rule(user=users)
    def disconnect(self, user: str) -> None:
        self._feed(self.reg.disconnect(self.now, user))

    # ---------------------------------------------------------------- invariants

    @invariant()
    def registry_consistent(self) -> None:
        seen: dict[str, str] = {}
        rooms: set[int] = set()
        for cid, call in self.reg.calls.items():
            assert call.call_id == cid
            assert call.room_id not in rooms
            rooms.add(call.room_id)
            assert self.reg.call_by_room(call.room_id) is call
            joined, ringing = call.joined(), call.ringing()
            assert len(joined) >= 2 or (len(joined) == 1 and ringing), call
            assert len(call.members) <= CallRegistry.MAX_PARTICIPANTS
            if not call.begun:
                assert joined == [call.caller_id]
            for u, m in call.members.items():
                assert u not in seen, f"{u} is in two calls"
                seen[u] = cid
                assert m.user_id == u
                assert (m.state is MemberState.RINGING) == (m.deadline is not None)
                if m.state is MemberState.RINGING:
                    assert m.began_at is None
                if call.media_type is CallMediaType.AUDIO:
                    assert not m.video
        for u in USERS:
            call = self.reg.call_of(u)
            assert (call.call_id if call else None) == seen.get(u)

    @invariant()
    def timer_consistent(self) -> None:
        deadlines = [
            m.deadline
            for call in self.reg.calls.values()
            for m in call.members.values()
            if m.state is MemberState.RINGING
        ]
        assert self.reg.get_timer() == (min(deadlines) if deadlines else None)

    @invariant()
    def events_agree_with_registry(self) -> None:
        expected: dict[tuple[str, str], str] = {}
        for cid, call in self.reg.calls.items():
            for u, m in call.members.items():
                if m.state is MemberState.RINGING:
                    expected[(u, cid)] = "ringing"
                elif m.began_at is None:
                    expected[(u, cid)] = "calling"
                else:
                    expected[(u, cid)] = "in"
        actual = {k: v for k, v in self.status.items() if v != "idle"}
        assert actual == expected

    def teardown(self) -> None:
        # every invitation ends: drive the clock past every deadline
        self.now += 1000
        self._feed(self.reg.handle_timer(self.now))
        assert self.reg.get_timer() is None
        assert "ringing" not in self.status.values()
        # every begun call ends: everyone still in a call hangs up
        for call in list(self.reg.calls.values()):
            for u in call.joined():
                if call.call_id in self.reg.calls and u in call.members:
                    self._feed(self.reg.hangup(self.now, u, call.call_id))
        assert self.reg.calls == {}
        assert set(self.status.values()) <= {"idle"}
        assert self.begins == self.ends
        for u in USERS:
            assert self.reg.call_of(u) is None


CallMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCallMachine = CallMachine.TestCase
