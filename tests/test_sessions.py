"""The pure session rules (devices, kick, resume, held sessions, expiry, call ownership) with a
fake clock: no sockets, no sleeps. A real (pure) CallRegistry says which call a user is in."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from callkit.signaling import protocol as p
from callkit.signaling.callstate import CallRegistry, CallStateError
from callkit.signaling.codes import CallEndReason, ErrorCode
from callkit.signaling.sessions import Close, Device, SessionTable

GRACE = 9.0


class World:
    """A session table and a call registry driven together, as the server drives them."""

    def __init__(self, **kwargs: object) -> None:
        ids = itertools.count(1)
        conns = itertools.count(1)
        self.table = SessionTable(
            resume_grace=GRACE,
            new_session_id=lambda: f"s{next(ids)}",
            **kwargs,  # type: ignore[arg-type]
        )
        self.calls = CallRegistry(new_call_id=lambda: "call1", new_room_id=lambda: 7)
        self._conns = conns

    def call_of(self, user: str) -> str | None:
        call = self.calls.call_of(user)
        return None if call is None else call.call_id

    def login(self, now: float, user: str, **kwargs: object) -> Device:
        out = self.table.login(now, user, f"c{next(self._conns)}", self.call_of, **kwargs)  # type: ignore[arg-type]
        assert out.device is not None
        return out.device

    def snapshot(self) -> str:
        return json.dumps(self.table.to_json(), sort_keys=True)


def test_second_login_kicks_the_first_and_its_call_is_left() -> None:
    w = World()
    phone = w.login(0, "bob", sig_deadline=100)
    w.table.set_profile("bob", "Bob", "")
    w.calls.start_call(0, "alice", ["bob"], 1)
    out = w.table.login(1, "bob", "c9", w.call_of)
    assert [d.session_id for d in out.kicked] == [phone.session_id]
    assert out.close == [Close(phone.conn or "", "", "kicked")]
    assert out.leave == ["bob"]  # ringing with no device left: bob leaves (no response)
    assert out.device is not None and out.device.session_id != phone.session_id
    assert "bob" not in w.table.profiles  # a fresh start
    # until the leave is delivered, the left call's events go nowhere (not to the new device)
    assert w.table.targets("bob", "call1") == []
    w.calls.disconnect(1, "bob")
    w.table.settle(["bob"], w.call_of)
    assert w.table.owners == {}
    assert w.table.of_user("bob") == [out.device]


def test_multi_device_coexists_up_to_the_limit_and_a_refusal_changes_nothing() -> None:
    w = World(max_devices=2)
    a = w.login(0, "bob", multi_device=True)
    b = w.login(0, "bob", multi_device=True)
    assert w.table.of_user("bob") == [a, b]
    before = w.snapshot()
    with pytest.raises(CallStateError) as err:
        w.login(0, "bob", multi_device=True)
    assert err.value.code == ErrorCode.REQUEST_REFUSED
    assert "at most 2" in err.value.message
    assert w.snapshot() == before
    # a single-device login replaces them all
    out = w.table.login(1, "bob", "c99", w.call_of)
    assert {d.session_id for d in out.kicked} == {a.session_id, b.session_id}
    assert w.table.of_user("bob") == [out.device]


def test_multi_device_login_next_to_a_single_device_one_kicks_it() -> None:
    w = World()
    single = w.login(0, "bob")
    out = w.table.login(0, "bob", "c9", w.call_of, multi_device=True)
    assert out.kicked == [single]
    w.table.set_multi_device(out.device.session_id if out.device else "", False)
    out2 = w.table.login(0, "bob", "c10", w.call_of, multi_device=True)
    assert out2.kicked == [out.device]


def test_clean_close_is_a_logout_and_the_call_is_left_at_once() -> None:
    w = World()
    w.login(0, "alice")
    bob = w.login(0, "bob")
    w.calls.start_call(0, "alice", ["bob"], 1)
    out = w.table.socket_gone(1, bob.conn or "", False, 1, w.call_of)
    assert out.held == [] and out.released == [bob] and out.leave == ["bob"]
    assert w.table.of_user("bob") == []


def test_dropped_socket_is_held_for_the_grace_from_last_seen_then_leaves() -> None:
    w = World()
    alice = w.login(0, "alice")
    w.login(0, "bob")
    call, _ = w.calls.start_call(0, "alice", ["bob"], 1)
    w.table.took_call(alice.session_id, call.call_id)
    out = w.table.socket_gone(10, alice.conn or "", True, last_seen=8, call_of=w.call_of)
    assert out.held == [alice] and out.leave == [] and alice.held
    assert w.table.held_users() == ["alice"] and "alice" not in w.table.online_users()
    assert w.table.get_timer() == 8 + GRACE
    assert w.table.handle_timer(16.9, w.call_of).released == []
    out = w.table.handle_timer(17, w.call_of)
    assert out.released == [alice] and out.leave == ["alice"] and out.close == []
    assert w.table.get_timer() is None


def test_dropped_socket_without_a_stake_is_released_not_held() -> None:
    w = World()
    bob = w.login(0, "bob")
    out = w.table.socket_gone(1, bob.conn or "", True, 1, w.call_of)
    assert out.released == [bob] and out.held == []
    # a second device of a ringing user: the other one still rings, so no stake either
    w = World()
    a = w.login(0, "bob", multi_device=True)
    w.login(0, "bob", multi_device=True)
    w.calls.start_call(0, "alice", ["bob"], 1)
    out = w.table.socket_gone(1, a.conn or "", True, 1, w.call_of)
    assert out.released == [a] and out.leave == []
    # no grace configured: never held
    w = World()
    w.table.resume_grace = 0
    w.login(0, "alice")
    bob = w.login(0, "bob")
    w.calls.start_call(0, "alice", ["bob"], 1)
    out = w.table.socket_gone(1, bob.conn or "", True, 1, w.call_of)
    assert out.held == [] and out.leave == ["bob"]


def test_resume_reattaches_replays_the_buffer_and_cancels_the_grace() -> None:
    w = World()
    alice = w.login(0, "alice")
    w.login(0, "bob")
    call, _ = w.calls.start_call(0, "alice", ["bob"], 1)
    w.table.took_call(alice.session_id, call.call_id)
    w.table.socket_gone(1, alice.conn or "", True, 1, w.call_of)
    for text in ("one", "two"):
        assert w.table.buffer(2, alice.session_id, text, len(text)).overflowed == []
    out = w.table.login(3, "alice", "c50", w.call_of, resume=alice.session_id)
    assert out.resumed and out.device is alice and out.replay == ["one", "two"]
    assert alice.conn == "c50" and not alice.held and alice.outbox == []
    assert out.kicked == [] and out.ring is False
    assert w.table.call_for(alice.session_id, w.call_of) == call.call_id
    assert w.table.handle_timer(100, w.call_of).released == []  # the grace timer is gone


def test_resume_of_a_half_dead_socket_closes_the_old_one() -> None:
    w = World()
    alice = w.login(0, "alice")
    old_conn = alice.conn or ""
    out = w.table.login(1, "alice", "c77", w.call_of, resume=alice.session_id)
    assert out.close == [Close(old_conn, "", "resumed")]
    assert out.device is alice and alice.conn == "c77"
    # the old socket's end later changes nothing
    assert w.table.socket_gone(2, old_conn, True, 2, w.call_of).released == []
    assert w.table.of_user("alice") == [alice]


def test_a_resume_token_of_another_user_is_not_taken_over() -> None:
    w = World()
    w.login(0, "alice")
    bob = w.login(0, "bob")
    w.calls.start_call(0, "bob", ["alice"], 1)
    w.table.socket_gone(1, bob.conn or "", True, 1, w.call_of)
    out = w.table.login(2, "mallory", "c66", w.call_of, resume=bob.session_id)
    assert not out.resumed and out.replay == [] and out.device is not None
    assert out.device.session_id != bob.session_id
    assert w.table.devices[bob.session_id].held  # bob's held session is untouched


def test_usersig_expiry_closes_the_socket_and_leaves_the_call() -> None:
    w = World()
    alice = w.login(0, "alice", sig_deadline=50)
    w.login(0, "bob")
    w.calls.start_call(0, "alice", ["bob"], 1)
    assert w.table.get_timer() == 50
    assert w.table.handle_timer(49.9, w.call_of).expired == []
    out = w.table.handle_timer(50, w.call_of)
    assert out.expired == [alice] and out.close == [Close(alice.conn or "", "", "expired")]
    assert out.leave == ["alice"]
    # a resumed login with a new UserSig moves the deadline
    w2 = World()
    dev = w2.login(0, "carol", sig_deadline=5)
    w2.table.login(1, "carol", "c9", w2.call_of, resume=dev.session_id, sig_deadline=60)
    assert w2.table.handle_timer(30, w2.call_of).expired == []
    assert w2.table.get_timer() == 60


def test_held_buffer_is_bounded_in_messages_and_bytes() -> None:
    w = World(max_held_messages=3, max_held_bytes=10)
    w.login(0, "alice")
    bob = w.login(0, "bob")
    w.calls.start_call(0, "alice", ["bob"], 1)
    w.table.socket_gone(1, bob.conn or "", True, 1, w.call_of)
    assert [w.table.buffer(1, bob.session_id, "x", 1).overflowed for _ in range(3)] == [[]] * 3
    assert w.table.buffer(1, bob.session_id, "x", 1).overflowed == [bob.session_id]
    assert bob.outbox == [] and bob.outbox_bytes == 0
    assert w.table.buffer(1, bob.session_id, "y" * 11, 11).overflowed == [bob.session_id]
    out = w.table.release(2, bob.session_id, w.call_of)
    assert out.released == [bob] and out.leave == ["bob"]
    # an attached device has no buffer
    carol = w.login(0, "carol")
    assert w.table.buffer(1, carol.session_id, "z", 1).overflowed == [] and carol.outbox == []


def test_first_device_to_answer_owns_the_call_and_the_others_stop_ringing() -> None:
    w = World()
    w.login(0, "alice")
    phone = w.login(0, "bob", multi_device=True)
    laptop = w.login(0, "bob", multi_device=True)
    call, _ = w.calls.start_call(0, "alice", ["bob"], 1)
    assert w.table.targets("bob", call.call_id) == [phone, laptop]  # every device rings
    out = w.table.answered(laptop.session_id, call.call_id, accepted=True)
    assert len(out.send) == 1 and out.send[0][0] == phone.session_id
    event = out.send[0][1]
    assert isinstance(event, p.Event) and event.event == "onCallCancelled"
    assert event.payload == {"userId": "bob", "reason": int(CallEndReason.OTHER_DEVICE_ACCEPTED)}
    assert w.table.targets("bob", call.call_id) == [laptop]
    with pytest.raises(CallStateError) as err:
        w.table.check_owner(phone.session_id, call.call_id)
    assert err.value.code == ErrorCode.REQUEST_REFUSED
    w.table.check_owner(laptop.session_id, call.call_id)
    assert w.table.call_for(phone.session_id, w.call_of) is None
    # a reject by the first device says reason 8
    w2 = World()
    w2.login(0, "alice")
    a = w2.login(0, "bob", multi_device=True)
    w2.login(0, "bob", multi_device=True)
    w2.calls.start_call(0, "alice", ["bob"], 1)
    out = w2.table.answered(a.session_id, "call1", accepted=False)
    ev = out.send[0][1]
    assert isinstance(ev, p.Event)
    assert ev.payload["reason"] == int(CallEndReason.OTHER_DEVICE_REJECT)


def test_only_the_owning_device_keeps_its_user_in_the_call() -> None:
    w = World()
    w.login(0, "alice")
    phone = w.login(0, "bob", multi_device=True)
    laptop = w.login(0, "bob", multi_device=True)
    call, _ = w.calls.start_call(0, "alice", ["bob"], 1)
    w.table.answered(phone.session_id, call.call_id, accepted=True)
    w.calls.accept(1, "bob", call.call_id)
    assert w.table.release(2, laptop.session_id, w.call_of).leave == []
    assert w.table.release(2, phone.session_id, w.call_of).leave == ["bob"]


def test_a_device_that_logs_in_while_its_user_rings_rings_too() -> None:
    w = World()
    w.login(0, "alice")
    w.login(0, "bob", multi_device=True)
    call, _ = w.calls.start_call(0, "alice", ["bob"], 1)
    out = w.table.login(1, "bob", "c9", w.call_of, multi_device=True)
    assert out.ring and not out.kicked
    # once a device owns it, a new device does not ring and gets no call
    assert out.device is not None
    w.table.answered(out.device.session_id, call.call_id, accepted=True)
    out2 = w.table.login(2, "bob", "c10", w.call_of, multi_device=True)
    assert not out2.ring


def test_settle_drops_stale_owners_and_profiles_of_users_without_devices() -> None:
    w = World()
    alice = w.login(0, "alice")
    w.table.set_profile("alice", "Al", "http://x")
    assert w.table.profile("alice") == {"nickname": "Al", "avatarUrl": "http://x"}
    call, _ = w.calls.start_call(0, "alice", ["bob"], 1)
    w.table.took_call(alice.session_id, call.call_id)
    w.table.settle(["alice"], w.call_of)
    assert "alice" in w.table.owners  # still its call
    w.calls.hangup(1, "alice", call.call_id)
    w.table.settle(["alice"], w.call_of)
    assert w.table.owners == {}
    w.table.socket_gone(2, alice.conn or "", False, 2, w.call_of)
    w.table.settle(["alice"], w.call_of)
    assert w.table.is_idle() and w.table.profile("alice")["nickname"] == ""


def test_a_socket_logs_in_once() -> None:
    w = World()
    w.table.login(0, "alice", "c1", w.call_of)
    before = w.snapshot()
    with pytest.raises(CallStateError) as err:
        w.table.login(0, "bob", "c1", w.call_of)
    assert err.value.code == ErrorCode.REQUEST_REPEATED and w.snapshot() == before


def test_the_table_round_trips_through_json() -> None:
    w = World()
    alice = w.login(0, "alice", sig_deadline=500, groups=frozenset({"g1", "g2"}))
    w.login(0, "bob", multi_device=True)
    w.login(0, "bob", multi_device=True)
    w.table.set_profile("bob", "Bob", "a.png")
    call, _ = w.calls.start_call(0, "alice", ["bob"], 1)
    w.table.took_call(alice.session_id, call.call_id)
    w.table.socket_gone(1, alice.conn or "", True, 1, w.call_of)
    w.table.buffer(1, alice.session_id, "héllo", 6)
    text = json.dumps(w.table.to_json())
    copy = SessionTable(resume_grace=GRACE)
    copy.load_json(json.loads(text))
    assert json.dumps(copy.to_json()) == text
    assert copy.get_timer() == w.table.get_timer() == 1 + GRACE
    assert copy.devices[alice.session_id] == alice
    assert copy.targets("bob", call.call_id) == w.table.targets("bob", call.call_id)
    assert Device.from_json(json.loads(json.dumps(alice.to_json()))) == alice
    free = Device("s", "u", "c")
    assert Device.from_json(free.to_json()).sig_deadline == math.inf


def test_a_released_device_is_refused_not_a_crash() -> None:
    w = World()
    old = w.login(0, "bob")
    w.table.login(1, "bob", "c9", w.call_of)  # kicks the first
    for act in (
        lambda: w.table.check_owner(old.session_id, "call1"),
        lambda: w.table.took_call(old.session_id, "call1"),
        lambda: w.table.answered(old.session_id, "call1", accepted=True),
        lambda: w.table.set_multi_device(old.session_id, True),
        lambda: w.table.call_for(old.session_id, w.call_of),
    ):
        with pytest.raises(CallStateError) as err:
            act()
        assert err.value.code == ErrorCode.INIT_FAIL and "log in again" in err.value.message
