"""The state store: where the call rules and the session rules keep their state.

The service changes state only through :meth:`StateStore.apply`: it names what an operation
touches (users, calls, rooms, sessions), the store gives the operation a :class:`Tx` holding
the two pure rule books (:class:`~callkit.signaling.callstate.CallRegistry`,
:class:`~callkit.signaling.sessions.SessionTable`) with those documents in them, the operation
runs the rules synchronously through the Tx, and the store makes the change and the
:class:`Frame` s it produced happen together.

Two implementations:

- :class:`MemoryStore` (the default): everything in this process, exactly one server's
  behaviour; ``apply`` runs the operation on the one registry and table and hands the frames to
  the sink at once.
- A Redis store (issue 15b, ``callkit serve --redis``), for several nodes. Its ``apply`` should:

  1. WATCH and read the documents the keys name, generously: for each user its device
     record (:meth:`~callkit.signaling.sessions.Device.to_json`), owner entry and profile, and
     the call it is in (user -> call index); for each call (named, or found by user / room) the
     call document (:meth:`~callkit.signaling.callstate.Call.to_json`) and the device records,
     owners and profiles of all its members, so routing any of its events needs nothing more;
  2. build a fresh registry (:meth:`CallRegistry.load`) and table
     (:meth:`SessionTable.load_json`, or ``SessionTable`` filled with the loaded devices) and a
     :class:`Tx` on them with ``now`` (``time.time()``: every node's clock must agree);
  3. run ``op(tx)``. It may run again after a conflict, so ``op`` does nothing but call the
     Tx and the rules and return a value; a :class:`CallStateError` from it means "refused:
     write nothing";
  4. in one MULTI/EXEC (or a Lua compare-and-set) write back every changed document and index
     (compare :meth:`Tx.changed` with what was loaded), each call's earliest deadline and each
     device's next deadline into the shared timer set, and publish every frame of
     :attr:`Tx.frames` to the channel of ``frame.node`` in order, so each call's frames go out
     in commit order. Frames for held devices never appear: the Tx already put them in the
     device's ``outbox`` (part of its record), bounded by the table;
  5. return :class:`Applied`; each node's subscriber hands the frames addressed to it to the
     sink (:meth:`StateStore.set_sink`).

  What server.py names per operation: a login ``users=[user], sessions=[resume]``; a
  request ``users=[actor, *callees], calls=[callId], rooms=[roomId]`` (those it has); a relay
  ``users=[to], calls=[callId]`` (``fire_due=False``); a socket's end ``users=[user],
  sessions=[id]``; a release ``sessions=[id]``; an operator's end of a call ``calls=[id]``.
  The acting socket's own device is always among them (its user is named).

  Timers: :meth:`StateStore.get_timer` is the earliest deadline the node should wake for,
  and :meth:`StateStore.fire_timers` handles what is due through ``apply`` as well, so the
  rules' own re-check makes a deadline fire once even when several nodes poll it.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from . import protocol as p
from .callstate import Call, CallRegistry, Notify
from .records.tracker import Cause
from .sessionio import text_bytes
from .sessions import Outcome, SessionTable

__all__ = ["Applied", "Batch", "Frame", "MemoryStore", "StateStore", "Tx", "render_event"]

T = TypeVar("T")

#: why a socket is closed -> (close code, reason); "kicked" and "expired" carry a notice frame
CLOSE_CODES: dict[str, tuple[int, bytes]] = {
    "kicked": (1008, b"kicked"),
    "expired": (1008, b"usersig expired"),
    "resumed": (4001, b"session resumed elsewhere"),
}


@dataclass(frozen=True)
class Frame:
    """One encoded message for one socket (``node``, ``conn``), and/or an order to close it
    afterwards (``close``: a key of :data:`CLOSE_CODES`)."""

    node: str
    conn: str
    text: str | None
    close: str | None = None


@dataclass(frozen=True)
class Batch:
    """Notifications of one step of an operation, with who caused them, and the calls they
    are about as they were right after that step (for the call records)."""

    notifies: list[Notify]
    actor: str | None
    cause: Cause
    #: call id -> a copy of the call after this step (absent: the call ended)
    calls: dict[str, Call] = field(default_factory=dict)
    #: a call this step placed (recorded before its notifications)
    started: Call | None = None


def render_event(n: Notify, call: Call | None, profile: Callable[[str], dict[str, str]]) -> str:
    """The wire ``event`` for a notification: the call's snapshot after the change, each
    member with its ``nickname`` and ``avatarUrl``."""
    return p.Event(
        event=n.event,
        call_id=n.call_id,
        payload=n.payload,
        call=snapshot(call, profile) if call is not None else None,
    ).encode()


def snapshot(call: Call, profile: Callable[[str], dict[str, str]]) -> dict[str, Any]:
    """The call snapshot with profiles."""
    snap = call.snapshot()
    for member in snap["members"]:
        member.update(profile(member["userId"]))
    return snap


class Tx:
    """What one operation sees and does: the rule books with the loaded documents, ``now``,
    and the frames it sends, in order. Pure: no I/O, so a store may run it again."""

    def __init__(self, registry: CallRegistry, sessions: SessionTable, now: float) -> None:
        self.registry = registry
        self.sessions = sessions
        self.now = now
        #: every frame, in the order the sockets must get them
        self.frames: list[Frame] = []
        #: every notification, by step (for call records)
        self.batches: list[Batch] = []
        #: session outcomes folded in (for counters and logs on the node that applied them)
        self.outcomes: list[Outcome] = []
        #: held devices whose buffer overflowed: release them in a later operation
        self.overflowed: list[str] = []

    def call_of(self, user_id: str) -> str | None:
        """The id of the call ``user_id`` rings in or joined."""
        call = self.registry.call_of(user_id)
        return None if call is None else call.call_id

    def post(self, node: str, conn: str, message: p.Message | str) -> None:
        """Send to one socket (e.g. the reply to a request, on the socket that asked)."""
        text = message if isinstance(message, str) else message.encode()
        self.frames.append(Frame(node, conn, text))

    def send(self, session_id: str, message: p.Message | str) -> None:
        """Send to one device: its socket, or its buffer while it is held."""
        dev = self.sessions.devices.get(session_id)
        if dev is None:
            return
        text = message if isinstance(message, str) else message.encode()
        if dev.conn is not None:
            self.frames.append(Frame(dev.node, dev.conn, text))
            return
        out = self.sessions.buffer(self.now, session_id, text, text_bytes(text))
        self.overflowed += out.overflowed

    def notify(
        self, notifies: list[Notify], actor: str | None = None, cause: Cause = Cause.NORMAL
    ) -> None:
        """Deliver notifications to their users' devices (the owning one, else all), in order;
        then drop ownerships that went stale (see :meth:`SessionTable.settle`)."""
        touched = {actor} if actor is not None else set()
        if notifies:
            after = {}
            for call_id in {n.call_id for n in notifies}:
                call = self.registry.calls.get(call_id)
                if call is not None:  # members as they are now; the call may change later
                    after[call_id] = dataclasses.replace(call, members=dict(call.members))
            self.batches.append(Batch(list(notifies), actor, cause, after))
        for n in notifies:
            call = self.registry.calls.get(n.call_id)
            text = render_event(n, call, self.sessions.profile)
            for dev in self.sessions.targets(n.user_id, n.call_id):
                self.send(dev.session_id, text)
            touched.add(n.user_id)
        self.sessions.settle(touched, self.call_of)

    def started(self, call: Call) -> None:
        """A call was placed: its record starts before its first notifications."""
        self.batches.append(Batch([], None, Cause.NORMAL, started=call))

    def carry(self, out: Outcome) -> None:
        """Fold in a session rule's outcome: frames, notices and closes, calls left."""
        self.outcomes.append(out)
        for sid, message in out.send:
            self.send(sid, message)
        for close in out.close:
            notice: p.Message | None = {"kicked": p.Kicked(), "expired": p.SigExpired()}.get(
                close.why
            )
            self.frames.append(
                Frame(
                    close.node,
                    close.conn,
                    notice.encode() if notice is not None else None,
                    close.why,
                )
            )
        for user in out.leave:
            # the released owner stays until these are delivered: its events go nowhere
            self.notify(self.registry.disconnect(self.now, user), user, Cause.OFFLINE)
        self.sessions.settle({d.user_id for d in out.released}, self.call_of)


@dataclass
class Applied(Generic[T]):
    """What one committed operation did."""

    result: T
    #: the notifications by step (call records observe them)
    batches: list[Batch]
    #: the calls as they are after the change (ended ones absent)
    calls: dict[str, Call]
    #: the session outcomes (counters and logs)
    outcomes: list[Outcome] = field(default_factory=list)
    #: held devices whose buffer overflowed: release them next
    overflowed: list[str] = field(default_factory=list)


#: hands frames for this node's sockets to the server, in order
Sink = Callable[[list[Frame]], None]
#: told of every committed change, on the node that applied it, before its frames go out
Observer = Callable[[list[Batch]], None]


class StateStore(abc.ABC):
    """Where calls and sessions live; see the module docstring for what an implementation
    must guarantee. All methods but :meth:`now` and :meth:`set_sink` may do I/O."""

    #: this node's id; every Frame whose ``node`` is it goes to this process's sink
    node: str = ""

    def __init__(self) -> None:
        self._sink: Sink = lambda frames: None
        self._observer: Observer = lambda batches: None

    def set_sink(self, sink: Sink) -> None:
        """Where frames for this node's sockets go (the server's writer), in order."""
        self._sink = sink

    def set_observer(self, observer: Observer) -> None:
        """Who hears of each committed change (the call records), on the applying node."""
        self._observer = observer

    @abc.abstractmethod
    def now(self) -> float:
        """The rules' clock (the memory store: the loop's monotonic clock or an injected
        one; a shared store: ``time.time()``)."""

    async def start(self) -> None:
        """Connect (a shared store); the memory store has nothing to do."""
        return None

    async def close(self) -> None:
        """Disconnect; idempotent."""
        return None

    @abc.abstractmethod
    async def apply(
        self,
        op: Callable[[Tx], T],
        *,
        users: Iterable[str] = (),
        calls: Iterable[str] = (),
        rooms: Iterable[int] = (),
        sessions: Iterable[str] = (),
        fire_due: bool = True,
    ) -> Applied[T]:
        """Run ``op`` atomically on the documents of ``users`` / ``calls`` / ``rooms`` /
        ``sessions`` (session ids: their devices' users count as named). With ``fire_due``,
        ringing deadlines already due among the loaded calls fire first (so accept-vs-timeout
        is decided by the clock). The observer hears of the change, then the frames go to
        the sinks in order. A :class:`CallStateError` from ``op`` propagates after the due
        timeouts were committed and sent."""

    @abc.abstractmethod
    async def get_timer(self) -> float | None:
        """The earliest deadline (ringing timeout, UserSig expiry, end of a grace) due on
        this node, or None."""

    @abc.abstractmethod
    async def fire_timers(self, now: float) -> Applied[None]:
        """Handle every deadline due at ``now`` (calls first, then devices)."""

    @abc.abstractmethod
    async def call_ids(self, limit: int) -> list[str]:
        """Ids of up to ``limit`` live calls of the whole deployment (for the admin views:
        load them with :meth:`apply`)."""


class MemoryStore(StateStore):
    """Everything in this process: one registry, one session table (the default)."""

    def __init__(
        self,
        registry: CallRegistry | None = None,
        sessions: SessionTable | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__()
        self.registry = registry or CallRegistry()
        self.sessions = sessions or SessionTable()
        self._clock = clock or time.monotonic

    def now(self) -> float:
        return self._clock()

    async def apply(
        self,
        op: Callable[[Tx], T],
        *,
        users: Iterable[str] = (),
        calls: Iterable[str] = (),
        rooms: Iterable[int] = (),
        sessions: Iterable[str] = (),
        fire_due: bool = True,
    ) -> Applied[T]:
        tx = Tx(self.registry, self.sessions, self.now())
        if fire_due:
            tx.notify(self.registry.handle_timer(tx.now))
        try:
            result = op(tx)
        finally:
            if tx.batches:
                self._observer(tx.batches)
            self._sink(tx.frames)
        return Applied(result, tx.batches, self.registry.calls, tx.outcomes, tx.overflowed)

    async def get_timer(self) -> float | None:
        timers = (self.registry.get_timer(), self.sessions.get_timer())
        deadlines = [t for t in timers if t is not None]
        return min(deadlines) if deadlines else None

    async def call_ids(self, limit: int) -> list[str]:
        return list(itertools.islice(self.registry.calls, max(0, limit)))

    async def fire_timers(self, now: float) -> Applied[None]:
        def fire(tx: Tx) -> None:
            tx.notify(tx.registry.handle_timer(now))
            tx.carry(tx.sessions.handle_timer(now, tx.call_of))

        return await self.apply(fire, fire_due=False)
