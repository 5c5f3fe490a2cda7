"""The Redis state store: several signaling nodes share users, devices, calls and timers.

:class:`RedisStateStore` implements store.py's :class:`~callkit.signaling.store.StateStore`
(read that docstring first). :meth:`RedisStateStore.apply`:

1. reads, in one Lua script (one round trip), the index keys of the users / rooms / calls an
   operation names, the call documents they point at (``Call.to_json``) and the session
   document of every user involved: the named users and every member of a loaded call
   (devices, call owner, profile: sessions.py's table cut per user, :func:`split_users`);
2. loads them into a fresh ``CallRegistry`` and ``SessionTable`` and runs the operation on a
   :class:`~callkit.signaling.store.Tx`: the same pure rules as one process decide;
3. commits with a Lua compare-and-set (one round trip): if every key read still holds what
   was read (SHA-1) and every new room id is free, it writes every changed document and
   index, each call's earliest ringing deadline and each user's earliest session deadline
   into the shared timer sets, and publishes the operation's frames to the channel of each
   frame's node (this node's own frames too), so the frames of one call leave in commit
   order. Otherwise nothing is written and the operation runs again on fresh state.

Each node subscribes to its channel and hands its frames to the server's sink, in order.

Timers: every node polls the two timer sets (:meth:`get_timer` never sleeps longer than
``poll``) and fires what is due through ``apply``; the rules' re-check on freshly loaded state
makes a deadline fire once across nodes, and fire even when the node that armed it died.

Node liveness: each node keeps its entry in ``{p}:nodes`` ``liveness_ttl`` (10 s) ahead,
beating every third of it; exactly one live node claims a node whose entry lapsed and turns
each of its sockets into a dropped socket (``SessionTable.socket_gone``): the devices are held
for a resume within the grace, on any node, and their frames are buffered meanwhile. A node
that was only stalled and finds its entry gone closes its sockets (``on_state_lost``).

A lost Redis link: ``apply`` raises ``StoreUnavailable`` (-1406, naming the Redis address)
and nothing changes; the subscription and liveness reconnect by themselves. A Redis that came
back *empty* (restarted without persistence) lost every call and device: the node notices
(its epoch key is gone) and calls ``on_state_lost`` so the server can close its sockets and
let the clients log in again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from redis.exceptions import WatchError

from ..callstate import Call, CallRegistry, CallStateError, MemberState
from ..codes import ErrorCode
from ..sessions import SessionTable
from ..store import Applied, Frame, StateStore, Tx
from .keys import Keys
from .link import LINK_ERRORS, RedisLink, stop_tasks
from .nodes import NodeLiveness

__all__ = ["RedisStateStore", "call_deadline", "merge_users", "split_users", "user_deadline"]

log = logging.getLogger("callkit.signaling.cluster")

T = TypeVar("T")

#: how often one operation runs again after a concurrent change to what it read
MAX_ATTEMPTS = 64


def call_deadline(call: Call) -> float | None:
    """The first ringing deadline of ``call`` (its entry in the call timer set)."""
    deadlines = [
        m.deadline
        for m in call.members.values()
        if m.state is MemberState.RINGING and m.deadline is not None
    ]
    return min(deadlines) if deadlines else None


def split_users(table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``SessionTable.to_json()`` cut into one document per user (devices, owner, profile)."""
    docs: dict[str, dict[str, Any]] = {}

    def doc(user: str) -> dict[str, Any]:
        return docs.setdefault(user, {"user": user, "devices": [], "owner": None, "profile": None})

    for device in table["devices"]:
        doc(device["userId"])["devices"].append(device)
    for user, owner in table["owners"].items():
        doc(user)["owner"] = owner
    for user, profile in table["profiles"].items():
        doc(user)["profile"] = profile
    return docs


def merge_users(docs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The ``SessionTable`` JSON made of per-user documents (:func:`split_users` reversed)."""
    table: dict[str, Any] = {"devices": [], "owners": {}, "profiles": {}}
    for doc in docs:
        table["devices"] += doc["devices"]
        if doc["owner"] is not None:
            table["owners"][doc["user"]] = doc["owner"]
        if doc["profile"] is not None:
            table["profiles"][doc["user"]] = doc["profile"]
    return table


def user_deadline(doc: dict[str, Any]) -> float | None:
    """The earliest UserSig expiry or end of a resume grace in one user's document."""
    times = [
        t
        for d in doc["devices"]
        for t in (d.get("sigDeadline"), d.get("holdDeadline"))
        if t is not None
    ]
    return min(times) if times else None


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _sha1(value: str | None) -> str | bool:
    return False if value is None else hashlib.sha1(value.encode()).hexdigest()


class _Writes:
    """The commands one commit runs (strings only: Lua would turn numbers into integers)."""

    def __init__(self) -> None:
        self.ops: list[list[str]] = []

    def add(self, *command: str) -> None:
        self.ops.append(list(command))


def _hold_dead_sockets(tx: Tx, live_nodes: set[str]) -> None:
    """Frames for a socket on a node that is no longer alive (killed, not yet taken over):
    that socket counts as dropped now (its device is held for the grace, as a take-over would
    do) and the frames go to the device's buffer, so a resume on another node replays them."""
    held: dict[tuple[str, str], str] = {}  # (node, conn) -> session id
    for _ in range(1000):  # each round holds at least one device; bounded anyway
        pending, tx.frames = tx.frames, []
        dead = [f for f in pending if f.node not in live_nodes]
        tx.frames = [f for f in pending if f.node in live_nodes]
        if not dead:
            return
        for frame in dead:
            where = (frame.node, frame.conn)
            dev = tx.sessions.by_conn(frame.conn, frame.node)
            if dev is not None:
                held[where] = dev.session_id
                out = tx.sessions.socket_gone(
                    tx.now, frame.conn, True, tx.now, tx.call_of, frame.node
                )
                tx.carry(out)  # may add frames: the next round routes them
            sid = held.get(where)
            if sid is not None and frame.text is not None and frame.close is None:
                tx.send(sid, frame.text)


#: Lua: read everything one operation needs in one round trip: the users of the named
#: session ids, the user -> call and room -> call indexes, the call documents (named or
#: found), and the session document of every named user and every member of a loaded call
#: (run by SHA-1: EVALSHA). Returns [[[key, value or false], ...],
#: [live node, ...]] (keys are built here from the prefix: single-instance Redis, not Redis
#: Cluster; ARGV[3] is the wall-clock time, for node liveness).
_READ = """
local p, req = ARGV[1], cjson.decode(ARGV[2])
local seen, out = {}, {}
local function get(key)
  if seen[key] == nil then
    local v = redis.call('get', key)
    seen[key] = v or false
    out[#out + 1] = {key, v or false}
  end
  return seen[key]
end
local calls, users, named = {}, {}, req.users
for _, s in ipairs(req.sessions) do
  local u = get(p .. ':sess:' .. s)
  if u then named[#named + 1] = u end
end
for _, c in ipairs(req.calls) do calls[c] = true end
for _, u in ipairs(named) do
  users[u] = true
  local c = get(p .. ':uc:' .. u)
  if c then calls[c] = true end
end
for _, r in ipairs(req.rooms) do
  local c = get(p .. ':room:' .. r)
  if c then calls[c] = true end
end
for c, _ in pairs(calls) do
  local doc = get(p .. ':call:' .. c)
  if doc then
    for _, m in ipairs(cjson.decode(doc).members) do users[m.userId] = true end
  end
end
for u, _ in pairs(users) do get(p .. ':user:' .. u) end
return cjson.encode({out, redis.call('zrangebyscore', p .. ':nodes', ARGV[3], '+inf')})
"""

#: Lua: compare-and-set. ARGV[1]: [[key, sha1 of the value read, or false if absent], ...];
#: if every key still holds that, run ARGV[2]'s commands ([[command, args...], ...]) and
#: return {1, channels...}: the channels a PUBLISH reached no subscriber on (a node whose
#: subscription is reconnecting, or a dead one); else change nothing and return {0} (the
#: caller loads again and retries).
_COMMIT = """
for _, e in ipairs(cjson.decode(ARGV[1])) do
  local v = redis.call('get', e[1])
  if e[2] == false then
    if v then return {0} end
  elseif (not v) or redis.sha1hex(v) ~= e[2] then
    return {0}
  end
end
local unheard = {1}
for _, command in ipairs(cjson.decode(ARGV[2])) do
  local got = redis.call(unpack(command))
  if command[1] == 'publish' and got == 0 then unheard[#unheard + 1] = command[2] end
end
return unheard
"""


class _Rescope(Exception):
    """The operation touched users it did not load; run it again with them."""

    def __init__(self, users: set[str]) -> None:
        self.users = users


class RedisStateStore(StateStore):
    """Users, devices, calls and timers in one Redis shared by several nodes."""

    def __init__(
        self,
        url: str,
        *,
        node: str | None = None,
        prefix: str = "ck",
        sessions_factory: Callable[[], SessionTable] = SessionTable,
        registry_factory: Callable[[], CallRegistry] = CallRegistry,
        wall_clock: Callable[[], float] = time.time,
        liveness_ttl: float = 10.0,
        poll: float = 0.1,
        op_timeout: float = 2.0,
    ) -> None:
        super().__init__()
        #: this node's id: ``node`` (or "node") plus this process's incarnation, so a node
        #: restarted under the same name is a new node: the old incarnation's sockets are
        #: taken over as dead ones, and no frame for them reaches a new socket
        self.node = f"{node or 'node'}.{secrets.token_hex(3)}"
        self.link = RedisLink(url, op_timeout=op_timeout)
        self.keys = Keys(prefix)
        self.sessions_factory = sessions_factory
        self.registry_factory = registry_factory
        self.wall_clock = wall_clock
        self.poll = poll
        #: the liveness beat's own small pool: a pool saturated by requests must not make
        #: a live node look dead
        self.beat_link = RedisLink(url, op_timeout=op_timeout, max_connections=2)
        self.liveness = NodeLiveness(
            self.beat_link, self.keys, self.node, ttl=liveness_ttl, wall_clock=wall_clock
        )
        #: called (no arguments) when this node's sockets lost their state: Redis came back
        #: without the cluster's state, or another node took this one for dead and took over
        #: its sockets (the server closes them; the clients log in or resume again)
        self.on_state_lost: Callable[[], Any] | None = None
        self.liveness.on_claimed = self._claimed
        #: commits that lost a race and ran again (tests and metrics read it)
        self.conflicts = 0
        #: dead nodes this node took over
        self.takeovers: list[str] = []
        #: commits whose frames for this node's own sockets reached no subscriber (its
        #: subscription was reconnecting) and were handed to the sink directly
        self.frames_delivered_locally = 0
        self._epoch: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: the two scripts, run by SHA-1 (EVALSHA; loaded again by redis-py after NOSCRIPT)
        self._read = self.link.client.register_script(_READ)
        self._commit = self.link.client.register_script(_COMMIT)
        #: the timer sets' earliest deadline as last read (wall clock) and when it was read,
        #: lowered by every deadline this node commits: :meth:`get_timer` reads Redis at most
        #: once per ``poll`` (not once per request)
        self._timer_known: float | None = None
        self._timer_read_at = float("-inf")

    # ---------------------------------------------------------------- lifecycle

    def now(self) -> float:
        return self.wall_clock()

    async def start(self) -> None:
        """Connect, subscribe to this node's channel and start beating; raises
        ``StoreUnavailable`` when Redis cannot be reached."""
        await self.liveness.beat()
        await self._check_epoch()
        ready = asyncio.Event()
        self._tasks = [
            asyncio.create_task(
                self.link.subscribe(
                    self.keys.node_channel(self.node),
                    self._on_message,
                    self._on_reconnect,
                    ready=ready,
                ),
                name=f"cluster-{self.node}-frames",
            ),
            asyncio.create_task(
                self.liveness.run(self._take_over), name=f"cluster-{self.node}-liveness"
            ),
        ]
        await asyncio.wait_for(ready.wait(), self.link.op_timeout * 2)
        log.info("node %s joined the cluster at %s", self.node, self.link.where)

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        await stop_tasks(tasks)
        with contextlib.suppress(*LINK_ERRORS, CallStateError):
            await self.liveness.leave()
        await self.link.close()
        await self.beat_link.close()

    async def _check_epoch(self) -> None:
        """Remember the cluster's epoch key; a Redis without it lost the cluster's state."""
        key = self.keys.epoch
        fresh = secrets.token_hex(8)
        await self.link.run(lambda r: r.set(key, fresh, nx=True))
        epoch = await self.link.run(lambda r: r.get(key))
        lost = self._epoch is not None and epoch != self._epoch
        self._epoch = epoch
        if lost:
            log.error("Redis at %s came back without the cluster's state", self.link.where)
            if self.on_state_lost is not None:
                self.on_state_lost()

    def _claimed(self) -> None:
        if self.on_state_lost is not None:
            self.on_state_lost()

    async def _on_reconnect(self) -> None:
        await self.liveness.beat()
        await self._check_epoch()

    async def _on_message(self, text: str) -> None:
        frames = [Frame(self.node, conn, body, close) for conn, body, close in json.loads(text)]
        self._sink(frames)

    async def _take_over(self, node: str, lapsed: float) -> None:
        """``node`` died: each of its sockets counts as dropped at its last beat."""
        self.takeovers.append(node)
        users = await self.link.run(lambda r: r.smembers(self.keys.node_users(node)))
        last_seen = lapsed - self.liveness.ttl

        def drop(user: str) -> Callable[[Tx], None]:
            def op(tx: Tx) -> None:
                for dev in list(tx.sessions.of_user(user)):
                    if dev.node == node and dev.conn is not None:
                        out = tx.sessions.socket_gone(
                            tx.now, dev.conn, True, last_seen, tx.call_of, node=node
                        )
                        tx.carry(out)

            return op

        for user in sorted(users):
            await self.apply(drop(user), users=[user], fire_due=False)
        await self.link.run(lambda r: r.delete(self.keys.node_users(node)))
        log.warning("took over %d user(s) of dead node %s", len(users), node)

    # ---------------------------------------------------------------- operations

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
        scope = {u for u in users if isinstance(u, str) and u}
        call_ids = {c for c in calls if isinstance(c, str) and c}
        room_ids = {r for r in rooms if isinstance(r, int) and not isinstance(r, bool)}
        sids = [s for s in sessions if isinstance(s, str) and s]
        now = self.now()

        async def attempt(client: Any) -> tuple[Applied[T], CallStateError | None]:
            nonlocal scope
            for _ in range(MAX_ATTEMPTS):
                try:
                    return await self._attempt(
                        client, now, op, scope, sids, call_ids, room_ids, fire_due
                    )
                except WatchError:
                    self.conflicts += 1
                except _Rescope as more:
                    scope = scope | more.users
            raise CallStateError(
                ErrorCode.INTERNAL, "this call is changing too fast to apply the request; retry"
            )

        applied, refused = await self.link.run(attempt)
        if refused is not None:
            raise refused
        return applied

    async def _attempt(
        self,
        client: Any,
        now: float,
        op: Callable[[Tx], T],
        users: set[str],
        sids: list[str],
        call_ids: set[str],
        room_ids: set[int],
        fire_due: bool,
    ) -> tuple[Applied[T], CallStateError | None]:
        k = self.keys
        request = {
            "users": sorted(users),
            "sessions": sids,
            "calls": sorted(call_ids),
            "rooms": sorted(room_ids),
        }
        args = [k.prefix, _dumps(request), repr(self.wall_clock())]
        read = await self._read(keys=[], args=args, client=client)
        pairs, alive = json.loads(read)  # cjson writes an empty list as {}
        seen: dict[str, str | None] = {key: value or None for key, value in pairs or []}
        live_nodes = {self.node, *(alive or [])}
        call_prefix, user_prefix = k.call(""), k.user("")
        before_calls = {
            key[len(call_prefix) :]: doc
            for key, doc in seen.items()
            if key.startswith(call_prefix) and doc is not None
        }
        before_users = {
            key[len(user_prefix) :]: doc
            for key, doc in seen.items()
            if key.startswith(user_prefix) and doc is not None
        }
        involved = {key[len(user_prefix) :] for key in seen if key.startswith(user_prefix)}
        loaded = [Call.from_json(json.loads(doc)) for doc in before_calls.values()]
        # before the rules run: they change the loaded calls in place
        old_uc = {u: c.call_id for c in loaded for u in c.members}
        old_rooms = {c.room_id: c.call_id for c in loaded}
        registry = self.registry_factory()
        registry.load(loaded)
        sessions = self.sessions_factory()
        sessions.load_json(merge_users(json.loads(d) for d in before_users.values()))
        before_sids = set(sessions.devices)
        tx = Tx(registry, sessions, now)
        if fire_due:
            tx.notify(registry.handle_timer(now))
        refused: CallStateError | None = None
        result: Any = None
        try:
            result = op(tx)
        except CallStateError as exc:  # the rules changed nothing; due timeouts still count
            refused = exc
        _hold_dead_sockets(tx, live_nodes)

        after = registry.calls
        new_uc = {u: cid for cid, c in after.items() for u in c.members}
        after_users = {u: _dumps(d) for u, d in split_users(sessions.to_json()).items()}
        touched = {u for u, cid in new_uc.items() if old_uc.get(u) != cid} | set(after_users)
        unloaded = touched - involved
        if unloaded:
            raise _Rescope(unloaded)
        new_rooms = {c.room_id: cid for cid, c in after.items() if c.room_id not in old_rooms}
        call_writes = {cid: _dumps(c.to_json()) for cid, c in after.items()}
        call_writes = {c: d for c, d in call_writes.items() if before_calls.get(c) != d}
        user_writes = {u: d for u, d in after_users.items() if before_users.get(u) != d}
        user_drops = [u for u in before_users if u not in after_users]
        ended = [cid for cid in before_calls if cid not in after]
        applied = Applied(result, tx.batches, dict(after), tx.outcomes, tx.overflowed)
        changed = call_writes or user_writes or user_drops or ended or new_uc != old_uc
        if not (changed or tx.frames):
            return applied, refused

        w = _Writes()
        armed: list[float] = []  # the deadlines this commit writes
        for cid, doc in call_writes.items():
            w.add("set", k.call(cid), doc)
            deadline = call_deadline(after[cid])
            if deadline is None:
                w.add("zrem", k.call_timers, cid)
            else:
                w.add("zadd", k.call_timers, repr(deadline), cid)
                armed.append(deadline)
        for cid in ended:
            w.add("del", k.call(cid))
            w.add("zrem", k.call_timers, cid)
        for user in set(old_uc) | set(new_uc):
            if user not in new_uc:
                w.add("del", k.user_call(user))
            elif old_uc.get(user) != new_uc[user]:
                w.add("set", k.user_call(user), new_uc[user])
        for room, cid in old_rooms.items():
            if cid not in after:
                w.add("del", k.room(room))
        for room, cid in new_rooms.items():
            w.add("set", k.room(room), cid)
        for user, doc in user_writes.items():
            parsed = json.loads(doc)
            w.add("set", k.user(user), doc)
            deadline = user_deadline(parsed)
            if deadline is None:
                w.add("zrem", k.user_timers, user)
            else:
                w.add("zadd", k.user_timers, repr(deadline), user)
                armed.append(deadline)
            for node in {d["node"] for d in parsed["devices"] if d["conn"] is not None}:
                w.add("sadd", k.node_users(node), user)
        for user in user_drops:
            w.add("del", k.user(user))
            w.add("zrem", k.user_timers, user)
        after_sids = set(sessions.devices)
        for sid in after_sids - before_sids:
            w.add("set", k.session(sid), sessions.devices[sid].user_id)
        for sid in before_sids - after_sids:
            w.add("del", k.session(sid))
        by_node: dict[str, list[list[str | None]]] = {}
        for frame in tx.frames:
            by_node.setdefault(frame.node, []).append([frame.conn, frame.text, frame.close])
        for node, frames in by_node.items():
            w.add("publish", k.node_channel(node), _dumps(frames))
        # commit only if nothing read changed and the new rooms are free (compare-and-set)
        expected = [[key, _sha1(value)] for key, value in seen.items()]
        expected += [[k.room(r), False] for r in new_rooms]
        done = await self._commit(keys=[], args=[_dumps(expected), _dumps(w.ops)], client=client)
        if not done or int(done[0]) != 1:
            raise WatchError("a document changed meanwhile")
        own = k.node_channel(self.node)
        if any((c.decode() if isinstance(c, bytes) else c) == own for c in done[1:]):
            # this node's own subscription is down (Redis restarted, the link reconnecting):
            # its sockets' frames reached nobody, so they are handed over here, in order
            self.frames_delivered_locally += 1
            self._sink([f for f in tx.frames if f.node == self.node])
        if armed:
            known = self._timer_known
            self._timer_known = min(armed) if known is None else min(known, *armed)
        if tx.batches:
            self._observer(tx.batches)
        return applied, refused

    # ---------------------------------------------------------------- timers

    async def call_ids(self, limit: int) -> list[str]:
        """SCAN the call documents (bounded by ``limit``; no KEYS on a shared Redis)."""
        prefix = self.keys.call("")

        async def scan(r: Any) -> list[str]:
            found: list[str] = []
            async for key in r.scan_iter(match=prefix + "*", count=500):
                if len(found) >= limit:
                    break
                name = key.decode() if isinstance(key, bytes) else str(key)
                found.append(name[len(prefix) :])
            return found

        return await self.link.run(scan)

    async def get_timer(self) -> float | None:
        """The earliest shared deadline, but never later than ``poll`` after the last read
        (other nodes arm timers too); on a lost link, ``poll`` from now (retry). Redis is
        read at most once per ``poll``: in between, the last read lowered by the deadlines
        this node committed since answers (every request wakes the timer loop)."""
        k = self.keys
        now = self.now()
        if 0 <= now - self._timer_read_at < self.poll:  # (a clock set back reads again)
            next_read = self._timer_read_at + self.poll
            return next_read if self._timer_known is None else min(next_read, self._timer_known)
        try:
            reads = await self.link.run(lambda r: _first_scores(r, k.call_timers, k.user_timers))
        except CallStateError:
            return now + self.poll
        self._timer_read_at = now
        self._timer_known = min(reads) if reads else None
        return min([now + self.poll, *reads])

    async def fire_timers(self, now: float) -> Applied[None]:
        """Fire the due ringing deadlines (calls), then the due session deadlines (users)."""
        k = self.keys
        total: Applied[None] = Applied(None, [], {}, [], [])
        self._timer_read_at = float("-inf")  # what fires moves the deadlines: read them again
        due_calls, due_users = await self.link.run(
            lambda r: _due(r, now, k.call_timers, k.user_timers)
        )
        for cid in due_calls:
            self._merge(total, await self.apply(lambda tx: None, calls=[cid]))
            await self._resync(k.call_timers, cid, k.call(cid), now)
        for user in due_users:

            def expire(tx: Tx) -> None:
                tx.carry(tx.sessions.handle_timer(tx.now, tx.call_of))

            self._merge(total, await self.apply(expire, users=[user], fire_due=False))
            await self._resync(k.user_timers, user, k.user(user), now)
        return total

    async def _resync(self, timers: str, member: str, doc_key: str, now: float) -> None:
        """An entry still due after firing is stale (its document is gone or changed
        elsewhere): set it from the document, atomically (WATCH), so it cannot spin."""

        async def fix(r: Any) -> None:
            score = await r.zscore(timers, member)
            if score is None or score > now:
                return
            async with r.pipeline(transaction=True) as pipe:
                await pipe.watch(doc_key)
                doc = await pipe.get(doc_key)
                deadline = None
                if doc is not None:
                    obj = json.loads(doc)
                    if timers == self.keys.call_timers:
                        deadline = call_deadline(Call.from_json(obj))
                    else:
                        deadline = user_deadline(obj)
                pipe.multi()
                if deadline is None or deadline <= now:
                    pipe.zrem(timers, member)
                else:
                    pipe.zadd(timers, {member: deadline})
                with contextlib.suppress(WatchError):
                    await pipe.execute()

        await self.link.run(fix)

    @staticmethod
    def _merge(total: Applied[None], got: Applied[Any]) -> None:
        total.batches += got.batches
        total.calls.update(got.calls)
        total.outcomes += got.outcomes
        total.overflowed += got.overflowed


async def _due(r: Any, now: float, *keys: str) -> list[list[str]]:
    """The first 64 members due at ``now`` of each sorted set, in one round trip."""
    reads = r.pipeline(transaction=False)
    for key in keys:
        reads.zrangebyscore(key, "-inf", now, start=0, num=64)
    return list(await reads.execute())


async def _first_scores(r: Any, *keys: str) -> list[float]:
    reads = r.pipeline(transaction=False)
    for key in keys:
        reads.zrange(key, 0, 0, withscores=True)
    return [float(first[0][1]) for first in await reads.execute() if first]
