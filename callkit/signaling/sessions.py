"""Session rules: pure, synchronous, time passed in (the companion of callstate.py).

:class:`SessionTable` knows every logged-in device of every user and decides what happens
to them; it never touches a socket. Each operation takes ``now`` (seconds, the same clock as
the :class:`~callkit.signaling.callstate.CallRegistry`), validates first (a refusal raises
:class:`~callkit.signaling.callstate.CallStateError` and leaves the table as it was), then
changes the table and returns one :class:`Outcome`: what the adapter must carry out, in order
(frames to send, sockets to close, users that must leave their call). The deadlines (UserSig
expiry, end of a resume grace) are timers: the adapter calls :meth:`SessionTable.handle_timer`
when :meth:`SessionTable.get_timer` is due.

The rules (moved here from server.py; tests/test_sessions.py pins each with a fake clock):

- A :class:`Device` is one login of a user. While a socket is attached, ``conn`` names it;
  a device whose socket dropped without a clean close is *held* (``conn`` None) until
  ``hold_deadline``, and a login with ``resume = session_id`` re-attaches to it (same
  session id, same call ownership, its buffered frames replayed first).
- A login without multi-device, or next to a device without it, *kicks* the user's other
  devices (``onKickedOffline``); with multi-device on everywhere a user may have up to
  ``max_devices`` devices (held ones count).
- The device that places, accepts, rejects or joins a call *owns* the user's part in it:
  that call's events and relays go to it alone and only it may act on the call. While a
  user rings and no device answered, every device rings, one that logs in rings too, and
  the first to answer stops the others (``onCallCancelled`` with reason 7 or 8).
- A device is *released* (logout, kick, UserSig expiry, grace over, buffer overflow); if its
  user is then no longer reachable for its call (the owning device is gone, or while ringing
  no device is left) the user must leave the call: :attr:`Outcome.leave`.
- Frames for a held device are buffered up to ``max_held_messages`` / ``max_held_bytes``;
  one more releases it.

Every record is a plain dataclass that round-trips through JSON (:meth:`Device.to_json`,
:meth:`SessionTable.to_json`), so a shared store (Redis) can keep a user's devices as one
document and run these same rules on what it loaded.
"""

from __future__ import annotations

import heapq
import itertools
import math
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import protocol as p
from .callstate import CallStateError
from .codes import CallEndReason, ErrorCode

__all__ = ["Close", "Device", "Outcome", "SessionTable"]

#: the user's current call id (ringing or joined), as the call registry knows it
CallOf = Callable[[str], "str | None"]


@dataclass
class Device:
    """One login of a user: a socket attached now (``conn``), or held for a resume."""

    #: the opaque token a client sends back as ``resume``; stable across resumes
    session_id: str
    user_id: str
    #: the attached socket (an id the adapter chose, unique per node); None while held
    conn: str | None
    #: the node that holds the socket ("" for a single server)
    node: str = ""
    multi_device: bool = False
    #: group ids the UserSig's userbuf grants (join by room id without an invitation)
    groups: frozenset[str] = frozenset()
    #: when the UserSig expires (table clock)
    sig_deadline: float = math.inf
    #: when a held device is released (table clock); None while a socket is attached
    hold_deadline: float | None = None
    #: encoded frames buffered while held, and their size in bytes
    outbox: list[str] = field(default_factory=list)
    outbox_bytes: int = 0

    @property
    def held(self) -> bool:
        """No socket is attached: the device waits for a resume."""
        return self.conn is None

    def to_json(self) -> dict[str, Any]:
        """A plain JSON dict (infinite deadlines become None)."""
        return {
            "sessionId": self.session_id,
            "userId": self.user_id,
            "conn": self.conn,
            "node": self.node,
            "multiDevice": self.multi_device,
            "groups": sorted(self.groups),
            "sigDeadline": None if math.isinf(self.sig_deadline) else float(self.sig_deadline),
            "holdDeadline": None if self.hold_deadline is None else float(self.hold_deadline),
            "outbox": list(self.outbox),
            "outboxBytes": self.outbox_bytes,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Device:
        """The inverse of :meth:`to_json`."""
        sig = obj["sigDeadline"]
        return cls(
            session_id=obj["sessionId"],
            user_id=obj["userId"],
            conn=obj["conn"],
            node=obj["node"],
            multi_device=obj["multiDevice"],
            groups=frozenset(obj["groups"]),
            sig_deadline=math.inf if sig is None else float(sig),
            hold_deadline=obj["holdDeadline"],
            outbox=list(obj["outbox"]),
            outbox_bytes=obj["outboxBytes"],
        )


@dataclass(frozen=True)
class Close:
    """A socket the adapter must close: ``why`` is "kicked" (send ``onKickedOffline``
    first), "expired" (send ``onUserSigExpired`` first) or "resumed" (its session went on
    over a newer socket: close at once with code 4001)."""

    conn: str
    node: str
    why: str


@dataclass
class Outcome:
    """What one operation asks of the adapter, each list in order."""

    #: frames for devices: (session id, message); a held device's go to its buffer
    send: list[tuple[str, p.Message]] = field(default_factory=list)
    #: sockets to close (after their notice, see :class:`Close`)
    close: list[Close] = field(default_factory=list)
    #: users that must leave their call now (``CallRegistry.disconnect``); afterwards the
    #: adapter calls :meth:`SessionTable.settle` for them, once their events are delivered
    leave: list[str] = field(default_factory=list)
    #: devices released by this operation (for counters and logs)
    released: list[Device] = field(default_factory=list)
    #: devices kicked by a newer login, and devices whose UserSig expired
    kicked: list[Device] = field(default_factory=list)
    expired: list[Device] = field(default_factory=list)
    #: devices now held for a resume
    held: list[Device] = field(default_factory=list)
    #: session ids whose buffer overflowed: release them once the current delivery is done
    overflowed: list[str] = field(default_factory=list)
    #: login: the device, whether it resumed a held one, the frames it missed (send them
    #: before the reply), and whether it must ring for the call its user rings in
    device: Device | None = None
    resumed: bool = False
    replay: list[str] = field(default_factory=list)
    ring: bool = False


class SessionTable:
    """Every device of every user, which device owns each user's call, and profiles."""

    def __init__(
        self,
        *,
        max_devices: int = 4,
        resume_grace: float = 9.0,
        max_held_messages: int = 256,
        max_held_bytes: int = 256 * 1024,
        new_session_id: Callable[[], str] | None = None,
    ) -> None:
        self.max_devices = max_devices
        self.resume_grace = resume_grace
        self.max_held_messages = max_held_messages
        self.max_held_bytes = max_held_bytes
        self._new_session_id = new_session_id or (lambda: secrets.token_urlsafe(18))
        #: session id -> device
        self.devices: dict[str, Device] = {}
        #: user -> session ids, in login order
        self._by_user: dict[str, list[str]] = {}
        #: (node, conn) -> session id
        self._by_conn: dict[tuple[str, str], str] = {}
        #: user -> (call id, owning session id); the session may be gone until settled
        self.owners: dict[str, tuple[str, str]] = {}
        #: user -> {"nickname", "avatarUrl"}
        self.profiles: dict[str, dict[str, str]] = {}
        # (deadline, seq, session id); stale entries are skipped
        self._timers: list[tuple[float, int, str]] = []
        self._seq = itertools.count()

    # ---------------------------------------------------------------- queries

    def of_user(self, user_id: str) -> list[Device]:
        """Every device of ``user_id``: attached ones first, then held ones."""
        devs = [self.devices[s] for s in self._by_user.get(user_id, ())]
        return [d for d in devs if not d.held] + [d for d in devs if d.held]

    def by_conn(self, conn: str, node: str = "") -> Device | None:
        """The device a socket is attached to."""
        sid = self._by_conn.get((node, conn))
        return None if sid is None else self.devices[sid]

    def online_users(self) -> list[str]:
        """Users with at least one attached device."""
        return [u for u in self._by_user if any(not d.held for d in self.of_user(u))]

    def held_users(self) -> list[str]:
        """Users with at least one held device."""
        return [u for u in self._by_user if any(d.held for d in self.of_user(u))]

    def targets(self, user_id: str, call_id: str) -> list[Device]:
        """Where ``user_id``'s frames about ``call_id`` go: the owning device (none when
        it is gone), else every device."""
        owner = self.owners.get(user_id)
        if owner is not None and owner[0] == call_id:
            dev = self.devices.get(owner[1])
            return [] if dev is None else [dev]
        return self.of_user(user_id)

    def device(self, session_id: str) -> Device:
        """The device ``session_id`` names; refused when it is gone (logged out, kicked,
        expired, released): its socket must log in again."""
        dev = self.devices.get(session_id)
        if dev is None:
            raise CallStateError(ErrorCode.INIT_FAIL, "this session has ended; log in again")
        return dev

    def call_for(self, session_id: str, call_of: CallOf) -> str | None:
        """The call this device owns, or rings in while no device of its user answered."""
        dev = self.device(session_id)
        owner = self.owners.get(dev.user_id)
        if owner is not None:
            return owner[0] if owner[1] == session_id else None
        return call_of(dev.user_id)

    def check_owner(self, session_id: str, call_id: object) -> None:
        """Refuse an action on a call that another device of the same user owns."""
        dev = self.device(session_id)
        owner = self.owners.get(dev.user_id)
        if owner is not None and owner[0] == call_id and owner[1] != session_id:
            raise CallStateError(
                ErrorCode.REQUEST_REFUSED, "this call is handled on another device"
            )

    def profile(self, user_id: str) -> dict[str, str]:
        """``{"nickname", "avatarUrl"}`` of a user (empty strings when never set)."""
        return self.profiles.get(user_id) or {"nickname": "", "avatarUrl": ""}

    def is_idle(self) -> bool:
        """True when no device, owner, profile or live timer is left."""
        return not (self.devices or self._by_user or self.owners or self.profiles) and (
            self.get_timer() is None
        )

    def get_timer(self) -> float | None:
        """The earliest UserSig expiry or end of a grace, or None."""
        while self._timers and not self._timer_live(self._timers[0]):
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    # ---------------------------------------------------------------- operations

    def login(
        self,
        now: float,
        user_id: str,
        conn: str,
        call_of: CallOf,
        *,
        node: str = "",
        multi_device: bool = False,
        groups: frozenset[str] = frozenset(),
        sig_deadline: float = math.inf,
        resume: str | None = None,
    ) -> Outcome:
        """A socket logged in as ``user_id`` (authenticated by the adapter): resume the held
        (or half-dead) device ``resume`` names, kick the user's other devices unless
        multi-device is on for all, and attach."""
        if (node, conn) in self._by_conn:
            raise CallStateError(ErrorCode.REQUEST_REPEATED, "already logged in")
        old = self.devices.get(resume) if resume else None
        if old is not None and old.user_id != user_id:
            old = None
        others = [d for d in self.of_user(user_id) if d is not old]
        keep = multi_device and all(d.multi_device for d in others)
        if keep and len(others) >= self.max_devices:
            raise CallStateError(
                ErrorCode.REQUEST_REFUSED,
                f"too many sessions for this user (at most {self.max_devices})",
            )
        out = Outcome()
        if not keep:
            for other in others:
                out.kicked.append(other)
                self._release(other, call_of, out, "kicked")
            if user_id not in self._by_user:  # a fresh start: the old profile goes
                self.profiles.pop(user_id, None)
        if old is not None:
            out.replay, old.outbox, old.outbox_bytes = old.outbox, [], 0
            if old.conn is not None:  # still open here: a half-dead connection
                out.close.append(Close(old.conn, old.node, "resumed"))
                del self._by_conn[(old.node, old.conn)]
            dev = old
            dev.hold_deadline = None
            out.resumed = True
        else:
            dev = Device(session_id=self._fresh_session_id(), user_id=user_id, conn=None)
            self.devices[dev.session_id] = dev
            self._by_user.setdefault(user_id, []).append(dev.session_id)
        dev.conn, dev.node = conn, node
        dev.multi_device, dev.groups, dev.sig_deadline = multi_device, groups, sig_deadline
        # attached devices come first in of_user: keep login order among them
        sids = self._by_user[user_id]
        sids.remove(dev.session_id)
        sids.append(dev.session_id)
        self._by_conn[(node, conn)] = dev.session_id
        self._arm(dev.sig_deadline, dev.session_id)
        out.device = dev
        out.ring = not out.resumed and self.call_for(dev.session_id, call_of) is not None
        return out

    def socket_gone(
        self, now: float, conn: str, abrupt: bool, last_seen: float, call_of: CallOf, node: str = ""
    ) -> Outcome:
        """A device's socket ended. A clean close is a logout; a dropped socket (``abrupt``)
        of a device with a stake in a call is held until ``last_seen + resume_grace``."""
        out = Outcome()
        dev = self.by_conn(conn, node)
        if dev is None:
            return out
        del self._by_conn[(node, conn)]
        if abrupt and self.resume_grace > 0 and self._has_stake(dev, call_of):
            dev.conn = None
            dev.hold_deadline = last_seen + self.resume_grace
            self._arm(dev.hold_deadline, dev.session_id)
            out.held.append(dev)
            return out
        self._release(dev, call_of, out, "logout")
        return out

    def release(self, now: float, session_id: str, call_of: CallOf) -> Outcome:
        """Forget a device (its buffer overflowed, or the service shuts down)."""
        out = Outcome()
        dev = self.devices.get(session_id)
        if dev is not None:
            self._release(dev, call_of, out, "released")
        return out

    def buffer(self, now: float, session_id: str, text: str, size: int) -> Outcome:
        """Keep an encoded frame for a held device; over the bounds the buffer is dropped
        and the device must be released (:attr:`Outcome.overflowed`)."""
        out = Outcome()
        dev = self.devices.get(session_id)
        if dev is None or not dev.held:
            return out
        if (
            len(dev.outbox) >= self.max_held_messages
            or dev.outbox_bytes + size > self.max_held_bytes
        ):
            dev.outbox, dev.outbox_bytes = [], 0
            out.overflowed.append(session_id)
            return out
        dev.outbox.append(text)
        dev.outbox_bytes += size
        return out

    def took_call(self, session_id: str, call_id: str) -> None:
        """The device placed or joined ``call_id``: it owns its user's part in it."""
        dev = self.device(session_id)
        self.owners[dev.user_id] = (call_id, session_id)

    def answered(self, session_id: str, call_id: str, accepted: bool) -> Outcome:
        """The device answered (accept, or reject / ignore / hangup) the call its user rang
        in: it owns the user's part in it; the user's other devices stop ringing."""
        dev = self.device(session_id)
        self.owners[dev.user_id] = (call_id, session_id)
        reason = (
            CallEndReason.OTHER_DEVICE_ACCEPTED if accepted else CallEndReason.OTHER_DEVICE_REJECT
        )
        cancelled = p.Event(
            event="onCallCancelled",
            call_id=call_id,
            payload={"userId": dev.user_id, "reason": int(reason)},
            call=None,
        )
        others = [d for d in self.of_user(dev.user_id) if d is not dev]
        return Outcome(send=[(d.session_id, cancelled) for d in others])

    def set_multi_device(self, session_id: str, enable: bool) -> None:
        """From now on this device lets later multi-device logins of its user coexist."""
        self.device(session_id).multi_device = enable

    def set_profile(self, user_id: str, nickname: str, avatar_url: str) -> None:
        """The user's nickname and avatar, shown in call snapshots."""
        self.profiles[user_id] = {"nickname": nickname, "avatarUrl": avatar_url}

    def settle(self, users: Iterable[str], call_of: CallOf) -> None:
        """After the events of a change were delivered: drop each user's stale ownership
        (its call ended, changed, or its owning device is gone), and the profile of a user
        with no device left."""
        for user in users:
            owner = self.owners.get(user)
            if owner is not None and (call_of(user) != owner[0] or owner[1] not in self.devices):
                del self.owners[user]
            if user not in self._by_user:
                self.profiles.pop(user, None)
                self.owners.pop(user, None)

    def handle_timer(self, now: float, call_of: CallOf) -> Outcome:
        """Release every device whose UserSig expired or whose grace ran out by ``now``."""
        out = Outcome()
        while self._timers and self._timers[0][0] <= now:
            entry = heapq.heappop(self._timers)
            if not self._timer_live(entry):
                continue
            dev = self.devices[entry[2]]
            if dev.sig_deadline <= now:
                out.expired.append(dev)
                self._release(dev, call_of, out, "expired")
            else:
                self._release(dev, call_of, out, "grace over")
        return out

    # ---------------------------------------------------------------- persistence

    def to_json(self) -> dict[str, Any]:
        """The whole table as plain JSON (timers are derived from the devices)."""
        return {
            "devices": [d.to_json() for d in self.devices.values()],
            "owners": {u: list(o) for u, o in self.owners.items()},
            "profiles": {u: dict(pr) for u, pr in self.profiles.items()},
        }

    def load_json(self, obj: dict[str, Any]) -> None:
        """Replace the table's contents with :meth:`to_json`'s output (timers re-armed)."""
        self.devices, self._by_user, self._by_conn, self._timers = {}, {}, {}, []
        for raw in obj["devices"]:
            dev = Device.from_json(raw)
            self.devices[dev.session_id] = dev
            self._by_user.setdefault(dev.user_id, []).append(dev.session_id)
            if dev.conn is not None:
                self._by_conn[(dev.node, dev.conn)] = dev.session_id
            self._arm(dev.sig_deadline, dev.session_id)
            if dev.hold_deadline is not None:
                self._arm(dev.hold_deadline, dev.session_id)
        self.owners = {u: (o[0], o[1]) for u, o in obj["owners"].items()}
        self.profiles = {u: dict(pr) for u, pr in obj["profiles"].items()}

    # ---------------------------------------------------------------- internals

    def _has_stake(self, dev: Device, call_of: CallOf) -> bool:
        """Would releasing this device take its user out of a call?"""
        call = call_of(dev.user_id)
        owner = self.owners.get(dev.user_id)
        if owner is not None and call is not None and owner[0] == call:
            return owner[1] == dev.session_id
        return call is not None and not any(d is not dev for d in self.of_user(dev.user_id))

    def _release(self, dev: Device, call_of: CallOf, out: Outcome, why: str) -> None:
        """Forget ``dev``; its user leaves its call when no longer reachable for it."""
        self.devices.pop(dev.session_id, None)
        sids = self._by_user.get(dev.user_id, [])
        if dev.session_id in sids:
            sids.remove(dev.session_id)
        if not sids:
            self._by_user.pop(dev.user_id, None)
        if dev.conn is not None:
            self._by_conn.pop((dev.node, dev.conn), None)
            if why in ("kicked", "expired"):
                out.close.append(Close(dev.conn, dev.node, why))
        out.released.append(dev)
        user = dev.user_id
        call = call_of(user)
        owner = self.owners.get(user)
        if call is not None and owner is not None and owner[0] == call:
            present = owner[1] in self.devices  # only the owning device counts
        else:
            present = user in self._by_user  # ringing: any device of the user
        if call is not None and not present:
            self.owners[user] = (call, dev.session_id)  # its events go nowhere until settled
            if user not in out.leave:
                out.leave.append(user)

    def _arm(self, deadline: float, session_id: str) -> None:
        if math.isfinite(deadline):
            heapq.heappush(self._timers, (deadline, next(self._seq), session_id))

    def _timer_live(self, entry: tuple[float, int, str]) -> bool:
        deadline, _, session_id = entry
        dev = self.devices.get(session_id)
        return dev is not None and (
            dev.sig_deadline == deadline or (dev.held and dev.hold_deadline == deadline)
        )

    def _fresh_session_id(self) -> str:
        for _ in range(100):
            sid = self._new_session_id()
            if sid not in self.devices:
                return sid
        raise CallStateError(ErrorCode.INTERNAL, "could not pick a fresh session id")
