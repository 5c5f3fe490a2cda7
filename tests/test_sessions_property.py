"""Random sequences of session operations (logins, resumes with any token, drops, buffered
frames, answers, time passing) against SessionTable and a real CallRegistry, checking the
table's invariants after every step: its indexes agree, no user has more devices than allowed,
held devices and only they have a deadline and a buffer within bounds, a refusal changes
nothing, a user is never left in a call with no way to reach it, and the table survives a JSON
round trip unchanged."""

from __future__ import annotations

import itertools
import json

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from callkit.signaling.callstate import CallRegistry, CallStateError
from callkit.signaling.sessions import Outcome, SessionTable

USERS = ["A", "B", "C"]
MAX_DEVICES = 2
GRACE = 5.0
users = st.sampled_from(USERS)


class SessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        ids = itertools.count(1)
        self.table = SessionTable(
            max_devices=MAX_DEVICES,
            resume_grace=GRACE,
            max_held_messages=3,
            max_held_bytes=40,
            new_session_id=lambda: f"s{next(ids)}",
        )
        calls = itertools.count(1)
        self.reg = CallRegistry(new_call_id=lambda: f"c{next(calls)}")
        self.now = 0.0
        self.conns = itertools.count(1)
        #: every session id ever handed out (resume tokens to try, live or not)
        self.tokens: list[str] = []

    def call_of(self, user: str) -> str | None:
        call = self.reg.call_of(user)
        return None if call is None else call.call_id

    def carry(self, out: Outcome) -> None:
        """What the adapter does: take users out of their calls, then settle."""
        for user in out.leave:
            notifies = self.reg.disconnect(self.now, user)
            self.table.settle({user, *(n.user_id for n in notifies)}, self.call_of)
        self.table.settle({d.user_id for d in out.released}, self.call_of)

    def snapshot(self) -> str:
        return json.dumps(self.table.to_json(), sort_keys=True)

    @rule(user=users, multi=st.booleans(), resume=st.integers(0, 20), sig=st.sampled_from([3, 50]))
    def login(self, user: str, multi: bool, resume: int, sig: float) -> None:
        token = self.tokens[resume] if resume < len(self.tokens) else None
        before = self.snapshot()
        try:
            out = self.table.login(
                self.now,
                user,
                f"c{next(self.conns)}",
                self.call_of,
                multi_device=multi,
                sig_deadline=self.now + sig,
                resume=token,
            )
        except CallStateError:
            assert self.snapshot() == before  # a refusal changes nothing
            return
        assert out.device is not None and out.device.user_id == user
        if out.resumed:
            assert out.device.session_id == token
        else:
            self.tokens.append(out.device.session_id)
        self.carry(out)

    @rule(data=st.data(), abrupt=st.booleans())
    def drop(self, data: st.DataObject, abrupt: bool) -> None:
        attached = [d for d in self.table.devices.values() if not d.held]
        if not attached:
            return
        dev = data.draw(st.sampled_from(attached))
        out = self.table.socket_gone(self.now, dev.conn or "", abrupt, self.now, self.call_of)
        if not abrupt:
            assert out.released == [dev] and not out.held
        self.carry(out)

    @rule(data=st.data(), size=st.integers(1, 30))
    def buffer(self, data: st.DataObject, size: int) -> None:
        if not self.table.devices:
            return
        sid = data.draw(st.sampled_from(sorted(self.table.devices)))
        out = self.table.buffer(self.now, sid, "x" * size, size)
        for over in out.overflowed:
            self.carry(self.table.release(self.now, over, self.call_of))

    @rule(caller=users, callee=users)
    def call(self, caller: str, callee: str) -> None:
        devs = [d for d in self.table.of_user(caller) if not d.held]
        if caller == callee or not devs:
            return
        try:
            call, notifies = self.reg.start_call(self.now, caller, [callee], 1, timeout=4.0)
        except CallStateError:
            return
        self.table.took_call(devs[0].session_id, call.call_id)
        self.table.settle({n.user_id for n in notifies}, self.call_of)

    @rule(user=users, accept=st.booleans())
    def answer(self, user: str, accept: bool) -> None:
        call = self.reg.call_of(user)
        devs = [d for d in self.table.of_user(user) if not d.held]
        if call is None or not devs or user not in call.ringing():
            return
        op = self.reg.accept if accept else self.reg.reject
        notifies = op(self.now, user, call.call_id)
        out = self.table.answered(devs[-1].session_id, call.call_id, accept)
        assert {sid for sid, _ in out.send} == {d.session_id for d in self.table.of_user(user)} - {
            devs[-1].session_id
        }
        self.table.settle({user, *(n.user_id for n in notifies)}, self.call_of)

    @rule(dt=st.sampled_from([0.5, 2.0, 6.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        notifies = self.reg.handle_timer(self.now)
        self.table.settle({n.user_id for n in notifies}, self.call_of)
        out = self.table.handle_timer(self.now, self.call_of)
        for dev in out.expired:
            assert dev.sig_deadline <= self.now
        for dev in out.released:
            assert dev.sig_deadline <= self.now or (dev.hold_deadline or 0) <= self.now
        self.carry(out)
        timer = self.table.get_timer()
        assert timer is None or timer > self.now

    @invariant()
    def indexes_agree(self) -> None:
        t = self.table
        by_user: dict[str, set[str]] = {}
        for sid, dev in t.devices.items():
            assert dev.session_id == sid
            by_user.setdefault(dev.user_id, set()).add(sid)
            if dev.held:
                assert dev.hold_deadline is not None
                assert dev.outbox_bytes == sum(len(x) for x in dev.outbox) <= t.max_held_bytes
                assert len(dev.outbox) <= t.max_held_messages
            else:
                assert dev.hold_deadline is None and not dev.outbox
                assert t.by_conn(dev.conn or "", dev.node) is dev
        assert {u: set(s) for u, s in t._by_user.items()} == by_user
        assert len(t._by_conn) == sum(not d.held for d in t.devices.values())
        for sids in by_user.values():
            # only multi-device logins coexist, at most MAX_DEVICES of them
            assert len(sids) == 1 or all(t.devices[s].multi_device for s in sids)
            assert len(sids) <= MAX_DEVICES

    @invariant()
    def every_call_member_is_reachable_by_the_right_device(self) -> None:
        """A joined member's part is owned by one live device of it; a ringing member's by
        none (all its devices ring); every ownership is of a live device in that call."""
        for user, (call_id, sid) in self.table.owners.items():
            assert sid in self.table.devices and self.call_of(user) == call_id
        for call in self.reg.calls.values():
            for user in call.joined():
                owner = self.table.owners.get(user)
                assert owner is not None and owner[0] == call.call_id, (user, owner)
            for user in call.ringing():
                assert user not in self.table.owners

    @invariant()
    def round_trips(self) -> None:
        copy = SessionTable(max_devices=MAX_DEVICES, resume_grace=GRACE)
        copy.load_json(json.loads(self.snapshot()))
        assert json.dumps(copy.to_json(), sort_keys=True) == self.snapshot()
        assert copy.get_timer() == self.table.get_timer()


SessionMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSessionMachine = SessionMachine.TestCase
