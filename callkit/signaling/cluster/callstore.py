"""Calls in Redis, changed atomically by the same pure rules as one process.

:meth:`RedisCallStore.apply` is the one way a node changes call state:

1. WATCH the index keys of the users / rooms / calls the operation names, read the calls
   they point at (one JSON document each) and WATCH those, then WATCH and read the devices
   and call owners of every user involved;
2. put the loaded calls into a fresh :class:`~callkit.signaling.callstate.CallRegistry`
   (``load``), fire the ringing deadlines already due (so accept-vs-timeout is decided by
   the clock on every node alike), and run the operation on it: the pure rules decide;
3. in one MULTI/EXEC write the changed documents, index keys, owners and the calls' earliest
   deadlines (the shared timer set), and publish every resulting message to the channel of
   the node hosting each target session (or append it to a held session's outbox).

If any watched key changed meanwhile, EXEC fails and the whole operation runs again on fresh
state, so two nodes never both apply a change to one call, and the messages of one call are
published in commit order (Redis runs each EXEC at once). A refused operation
(``CallStateError``) writes and publishes nothing. A ringing timeout handled by several
nodes at once fires once: the loser's retry finds the invitee no longer ringing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from ..callstate import Call, CallRegistry, CallStateError, MemberState, Notify
from ..codes import ErrorCode
from .devices import Delivery, Device, Route
from .keys import Keys
from .link import RedisLink

__all__ = ["Applied", "CallTx", "RedisCallStore", "Renderer", "earliest_deadline"]

T = TypeVar("T")

#: how often one operation is retried after a concurrent change to what it read
MAX_ATTEMPTS = 64

#: ``render(notify, call_after_the_change_or_None, profiles) -> encoded wire message``
Renderer = Callable[[Notify, "Call | None", dict[str, dict[str, str]]], str]


def earliest_deadline(call: Call) -> float | None:
    """The first ringing deadline of ``call`` (its entry in the shared timer set)."""
    deadlines = [
        m.deadline
        for m in call.members.values()
        if m.state is MemberState.RINGING and m.deadline is not None
    ]
    return min(deadlines) if deadlines else None


class CallTx:
    """What an operation sees and may do besides the call rules: the loaded registry, the
    users' devices and call owners; it may set owners and send messages to one session."""

    def __init__(self, registry: CallRegistry, now: float, route: Route) -> None:
        self.registry = registry
        self.now = now
        self.route = route
        #: owner changes to write (user -> (call id, session id), or None to drop)
        self.owner_changes: dict[str, tuple[str, str] | None] = {}
        #: (user, session id, encoded message) to send besides the call's events
        self.direct: list[tuple[str, str, str]] = []

    def owner(self, user: str) -> tuple[str, str] | None:
        """(call id, session id) of the device that owns ``user``'s call, if any."""
        if user in self.owner_changes:
            return self.owner_changes[user]
        return self.route.owners.get(user)

    def devices(self, user: str) -> dict[str, Device]:
        """``user``'s devices (session id -> record)."""
        return self.route.devices.get(user, {})

    def set_owner(self, user: str, call_id: str, session_id: str) -> None:
        """From now on ``session_id`` alone gets and acts on ``user``'s part in ``call_id``."""
        self.owner_changes[user] = (call_id, session_id)

    def send(self, user: str, session_id: str, text: str) -> None:
        """Send ``text`` to one session of ``user`` (after the call's events)."""
        self.direct.append((user, session_id, text))


@dataclass
class Applied(Generic[T]):
    """The outcome of one committed operation."""

    result: T
    #: every notification, in order (due timeouts first)
    notifies: list[Notify]
    #: the calls touched, as they are after the change (ended ones absent)
    calls: dict[str, Call]
    #: held sessions whose outbox overflowed: (user, session id); the caller releases them
    overflowed: list[tuple[str, str]] = field(default_factory=list)
    #: messages published or buffered
    delivered: int = 0


class _Rescope(Exception):
    """The operation touched users it did not name; run it again with them watched."""

    def __init__(self, users: set[str]) -> None:
        self.users = users


class RedisCallStore:
    """Calls, their indexes, owners and timers in Redis (see the module docstring)."""

    def __init__(
        self,
        link: RedisLink,
        keys: Keys,
        *,
        max_outbox: int = 256,
        outbox_ttl: float = 60.0,
        registry_factory: Callable[[], CallRegistry] = CallRegistry,
    ) -> None:
        self.link = link
        self.keys = keys
        self.max_outbox = max_outbox
        self.outbox_ttl = outbox_ttl
        self.registry_factory = registry_factory
        #: EXEC attempts that lost a race and ran again (for tests and metrics)
        self.conflicts = 0

    async def apply(
        self,
        now: float,
        op: Callable[[CallTx], tuple[T, list[Notify]]],
        render: Renderer,
        *,
        users: Iterable[str] = (),
        calls: Iterable[str] = (),
        rooms: Iterable[int] = (),
    ) -> Applied[T]:
        """Run ``op`` atomically on the calls of ``users`` / ``calls`` / ``rooms`` (see the
        module docstring). ``op`` returns (result, notifications) or raises CallStateError
        (nothing is written). Raises StoreUnavailable when Redis cannot be reached."""
        scope = set(users)
        call_ids, room_ids = set(calls), set(rooms)

        async def attempt(client: Any) -> Applied[T]:
            nonlocal scope
            for _ in range(MAX_ATTEMPTS):
                async with client.pipeline(transaction=True) as pipe:
                    try:
                        return await self._attempt(
                            client, pipe, now, op, render, scope, call_ids, room_ids
                        )
                    except WatchError:
                        self.conflicts += 1
                    except _Rescope as more:
                        scope = scope | more.users
            raise CallStateError(
                ErrorCode.INTERNAL, "this call is changing too fast to apply the request; retry"
            )

        return await self.link.run(attempt)

    async def _attempt(
        self,
        client: Any,
        pipe: Pipeline,
        now: float,
        op: Callable[[CallTx], tuple[T, list[Notify]]],
        render: Renderer,
        users: set[str],
        call_ids: set[str],
        room_ids: set[int],
    ) -> Applied[T]:
        k = self.keys
        index_keys = [k.user_call(u) for u in users] + [k.room(r) for r in room_ids]
        explicit = [k.call(c) for c in call_ids]
        if index_keys or explicit:
            await pipe.watch(*index_keys, *explicit)
        ids = set(call_ids)
        if index_keys:
            ids.update(v for v in await client.mget(index_keys) if v)
        ids_list = sorted(ids)
        docs: list[str | None] = []
        if ids_list:
            await pipe.watch(*[k.call(c) for c in ids_list])
            docs = await client.mget([k.call(c) for c in ids_list])
        before_docs = {cid: doc for cid, doc in zip(ids_list, docs, strict=True) if doc is not None}
        loaded = [Call.from_json(json.loads(doc)) for doc in before_docs.values()]
        before = {c.call_id: (set(c.members), c.room_id) for c in loaded}
        involved = users | {u for c in loaded for u in c.members}
        route = await self._read_route(client, pipe, involved)

        registry = self.registry_factory()
        registry.load(loaded)
        tx = CallTx(registry, now, route)
        notifies = registry.handle_timer(now)  # due timeouts first, on every node alike
        result, more = op(tx)
        notifies = notifies + more
        after = dict(registry.calls)

        # users / rooms this operation indexes anew: they must be watched and free
        old_uc = {u: cid for cid, (members, _) in before.items() for u in members}
        new_uc = {u: cid for cid, c in after.items() for u in c.members}
        unnamed = {u for u, cid in new_uc.items() if old_uc.get(u) != cid} - involved
        if unnamed:
            raise _Rescope(unnamed)
        old_rooms = {room: cid for cid, (_, room) in before.items()}
        new_rooms = {c.room_id: cid for cid, c in after.items() if c.room_id not in old_rooms}
        if new_rooms:
            await pipe.watch(*[k.room(r) for r in new_rooms])
            if any(await client.mget([k.room(r) for r in new_rooms])):
                raise WatchError("room id taken on another node")  # draw another one

        loaded_owners = dict(route.owners)
        owners = dict(route.owners)
        for user, owner in tx.owner_changes.items():
            if owner is None:
                owners.pop(user, None)
            else:
                owners[user] = owner
        route.owners = owners
        profiles = await self._profiles(client, {u for c in after.values() for u in c.members})

        changed_docs = {
            cid: json.dumps(c.to_json(), separators=(",", ":")) for cid, c in after.items()
        }
        changed_docs = {
            cid: doc for cid, doc in changed_docs.items() if before_docs.get(cid) != doc
        }
        removed = [cid for cid in before if cid not in after]
        messages: list[tuple[Delivery, str]] = []
        for n in notifies:
            text = render(n, after.get(n.call_id), profiles)
            messages += [(d, text) for d in route.deliveries(n.user_id, n.call_id)]
        for user, sid, text in tx.direct:
            device = route.devices.get(user, {}).get(sid)
            if device is not None:
                messages.append((route.to(sid, device), text))
        # owners of users no longer in the call they owned are dropped
        for user in set(owners) & involved:
            if new_uc.get(user) != owners[user][0]:
                del owners[user]
        owner_writes = {u: owners.get(u) for u in involved if owners.get(u) != loaded_owners.get(u)}
        if not (changed_docs or removed or messages or owner_writes or new_uc != old_uc):
            await pipe.unwatch()
            return Applied(result, notifies, after)

        pipe.multi()
        for cid, doc in changed_docs.items():
            pipe.set(k.call(cid), doc)
        for cid in removed:
            pipe.delete(k.call(cid))
            pipe.zrem(k.timers, cid)
        for cid, call in after.items():
            if cid in changed_docs:
                deadline = earliest_deadline(call)
                if deadline is None:
                    pipe.zrem(k.timers, cid)
                else:
                    pipe.zadd(k.timers, {cid: deadline})
        for user in set(old_uc) | set(new_uc):
            if user not in new_uc:
                pipe.delete(k.user_call(user))
            elif old_uc.get(user) != new_uc[user]:
                pipe.set(k.user_call(user), new_uc[user])
        for room, cid in old_rooms.items():
            if cid not in after:
                pipe.delete(k.room(room))
        for room, cid in new_rooms.items():
            pipe.set(k.room(room), cid)
        for user, owner in owner_writes.items():
            if owner is None:
                pipe.delete(k.owner(user))
            else:
                pipe.set(k.owner(user), json.dumps(owner))
        outbox_at: list[tuple[int, str]] = []
        for delivery, text in messages:
            if delivery.node is None:
                outbox_at.append((len(pipe), delivery.session_id))
                pipe.rpush(k.outbox(delivery.session_id), text)
                pipe.expire(k.outbox(delivery.session_id), int(self.outbox_ttl) + 1)
            else:
                envelope = json.dumps({"s": delivery.session_id, "t": text}, separators=(",", ":"))
                pipe.publish(k.node_channel(delivery.node), envelope)
        replies = await pipe.execute()
        applied = Applied(result, notifies, after, delivered=len(messages))
        sid_user = {sid: u for u, devs in route.devices.items() for sid in devs}
        for index, sid in outbox_at:
            over = (sid_user.get(sid, ""), sid)
            if (
                replies[index] > self.max_outbox
                and sid in sid_user
                and over not in applied.overflowed
            ):
                applied.overflowed.append(over)
        return applied

    async def _read_route(self, client: Any, pipe: Pipeline, users: set[str]) -> Route:
        """WATCH and read the devices and owners of ``users``, and the live nodes."""
        k = self.keys
        ordered = sorted(users)
        if ordered:
            await pipe.watch(*[k.devices(u) for u in ordered], *[k.owner(u) for u in ordered])
        reads = client.pipeline(transaction=False)
        for user in ordered:
            reads.hgetall(k.devices(user))
        for user in ordered:
            reads.get(k.owner(user))
        reads.zrangebyscore(k.nodes, time.time(), "+inf")
        out = await reads.execute()
        n = len(ordered)
        devices = {
            u: {sid: Device.from_json(rec) for sid, rec in out[i].items()}
            for i, u in enumerate(ordered)
            if out[i]
        }
        owners = {}
        for i, u in enumerate(ordered):
            if out[n + i]:
                call_id, sid = json.loads(out[n + i])
                owners[u] = (call_id, sid)
        return Route(devices, owners, set(out[2 * n]))

    async def _profiles(self, client: Any, users: set[str]) -> dict[str, dict[str, str]]:
        ordered = sorted(users)
        if not ordered:
            return {}
        reads = client.pipeline(transaction=False)
        for user in ordered:
            reads.hgetall(self.keys.profile(user))
        return {u: p for u, p in zip(ordered, await reads.execute(), strict=True) if p}
