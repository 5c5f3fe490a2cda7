"""Hostile input against a live SignalingServer on 127.0.0.1: limits, then a fuzz run.

The fuzz run sends well over 10,000 frames (random JSON and text, binary frames, and real
requests -- call / accept / hangup / relay ... with live call ids -- mutated by hypothesis)
from several sockets at once, then checks that nothing blew up, that the server forgets
everything once the sockets are gone, and that a normal call still works.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callkit.signaling import ServerConfig, SignalingServer
from callkit.signaling import protocol as p

from .cluster_nodes import NodeSpread
from .conftest import SDK_APP_ID, SECRET, sig
from .test_server import RawClient, login

# ------------------------------------------------------------------ limits


async def started(config: ServerConfig) -> SignalingServer:
    server = SignalingServer(SDK_APP_ID, SECRET, config)
    await server.start("127.0.0.1", 0)
    return server


async def test_oversized_frames_get_an_error_then_a_close(server: SignalingServer) -> None:
    alice = await login(server.url or "", "alice")
    big = json.dumps({"v": 1, "type": "ping", "id": 5, "pad": "x" * 70_000})
    await alice.send_raw(big)
    frame = await alice.recv()
    assert frame == {
        "v": 1,
        "type": "error",
        "code": -1403,  # no id: the frame is not read
        "message": "message larger than 65536 bytes",
    }
    # multi-byte characters count in bytes, not characters
    await alice.send_raw(
        json.dumps({"v": 1, "type": "ping", "id": 6, "pad": "é" * 40_000}, ensure_ascii=False)
    )
    assert (await alice.recv())["code"] == -1403
    assert (await alice.request("ping"))["type"] == "ok"  # the connection stays up
    await alice.send_raw("x" * (2 * 1024 * 1024))  # beyond 1 MiB: the socket is closed
    msg = await alice.ws.receive(timeout=5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert alice.ws.close_code == 1009
    await alice.close()


async def test_message_rate_is_limited_per_connection() -> None:
    server = await started(ServerConfig(rate_per_s=20, rate_burst=40))
    try:
        fast = await login(server.url or "", "fast")
        calm = await login(server.url or "", "calm")
        for i in range(100):
            await fast.ws.send_str(json.dumps({"v": 1, "type": "ping", "id": 1000 + i}))
        frames = []
        with contextlib.suppress(asyncio.TimeoutError):
            while True:
                frames.append(await fast.recv(timeout=1.0))
        answered = [f for f in frames if f["type"] == "ok"]
        limited = [f for f in frames if f["type"] == "error"]
        assert 39 <= len(answered) <= 52, len(answered)  # burst 40 (- login, + refill) pass
        # frames over the rate are dropped unread: one error per second says so, no ids
        assert len(limited) == 1, limited
        assert limited[0]["code"] == -1403 and "too many messages" in limited[0]["message"]
        assert "id" not in limited[0]
        # other connections are not affected, and the fast one recovers
        assert (await calm.request("ping"))["type"] == "ok"
        await asyncio.sleep(0.2)
        assert (await fast.request("ping"))["type"] == "ok"
        assert server.stats.rate_limited == 100 - len(answered)
        await fast.close()
        await calm.close()
    finally:
        await server.stop()


async def test_unauthenticated_socket_is_closed_with_1008() -> None:
    server = await started(ServerConfig(login_timeout=0.3))
    try:
        idle = await RawClient.connect(server.url or "")
        chatty = await RawClient.connect(server.url or "")
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(3):  # requests without a login do not keep the socket open
            reply = await chatty.request("ping")
            assert reply["code"] == -1201
        for client in (idle, chatty):
            msg = await client.ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert client.ws.close_code == 1008
            await client.close()
        assert loop.time() - start < 2
        # a socket that logs in in time stays
        user = await login(server.url or "", "alice")
        await asyncio.sleep(0.5)
        assert (await user.request("ping"))["type"] == "ok"
        await user.close()
    finally:
        await server.stop()


async def test_connection_caps() -> None:
    server = await started(ServerConfig(max_sessions_per_user=2, max_connections=5))
    try:
        url = server.url or ""
        devices = []
        for _ in range(2):
            client = await RawClient.connect(url)
            reply = await client.request(
                "login", sdkAppId=SDK_APP_ID, userId="bob", userSig=sig("bob"), multiDevice=True
            )
            assert reply["type"] == "ok"
            devices.append(client)
        third = await RawClient.connect(url)
        reply = await third.request(
            "login", sdkAppId=SDK_APP_ID, userId="bob", userSig=sig("bob"), multiDevice=True
        )
        assert reply["type"] == "error" and reply["code"] == -1203
        assert reply["message"] == "too many sessions for this user (at most 2)"
        more = [await RawClient.connect(url) for _ in range(2)]  # 5 sockets open now
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(url)
            assert err.value.status == 503
        assert server.stats.refused_connections == 1
        for c in (*devices, third, *more):
            await c.close()
        await asyncio.sleep(0.1)
        assert server.idle()
    finally:
        await server.stop()


def test_frame_size_counts_utf8_bytes() -> None:
    assert p.frame_size("abc") == 3 and p.frame_size("é") == 2 and p.frame_size(b"ab") == 2
    with pytest.raises(p.ProtocolError) as err:
        p.decode('{"type": "ping", "id": 1, "x": "' + "é" * 40_000 + '"}')
    assert err.value.code == -1403


# ------------------------------------------------------------------ the fuzz run

FUZZ_EXAMPLES = 220
LANE_USERS = ["fz0", "fz1", "fz2", "fz3", "fz4", "fz5", "fzm", "fzm", None, None]
MULTI = {6, 7}
ONLINE = ["fz0", "fz1", "fz2", "fz3", "fz4", "fz5", "fzm"]
USER_POOL = [*ONLINE, "nobody", "", "bad id", "x" * 40]
TYPES = [
    "login",
    "call",
    "accept",
    "reject",
    "ignore",
    "hangup",
    "invite",
    "join",
    "switchMedia",
    "device",
    "relay",
    "selfInfo",
    "ping",
]


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=6), children, max_size=4
    )


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    _containers,
    max_leaves=8,
)


@dataclass(frozen=True)
class Ref:
    """A placeholder resolved when sending: the n-th most recent live call id / room id."""

    kind: str
    n: int


def request_fields(draw: Any, type_: str) -> dict[str, Any]:
    user = st.sampled_from(ONLINE) | st.sampled_from(USER_POOL)
    users = st.lists(st.sampled_from(ONLINE), min_size=1, max_size=2, unique=True) | st.lists(
        st.sampled_from(USER_POOL), max_size=3
    )
    call = st.builds(Ref, st.just("call"), st.integers(0, 5))
    fields: dict[str, Any] = {}
    if type_ == "login":
        who = draw(st.sampled_from(USER_POOL))
        fields = {
            "sdkAppId": draw(st.sampled_from([SDK_APP_ID, SDK_APP_ID + 1])),
            "userId": who,
            "userSig": draw(st.sampled_from(["garbage", Ref("sig", 0)])),
            "multiDevice": draw(st.booleans()),
        }
        if draw(st.booleans()):
            fields["resume"] = draw(st.text(max_size=30))
    elif type_ == "call":
        fields = {
            "callees": draw(users),
            "mediaType": draw(st.sampled_from([1, 2, 3])),
            "timeout": draw(st.sampled_from([1, 0.3, 3, -1])),
            "groupId": draw(st.sampled_from(["", "g1"])),
        }
    elif type_ in ("accept", "reject", "ignore", "hangup"):
        fields = {"callId": draw(call)}
    elif type_ == "invite":
        fields = {"callId": draw(call), "callees": draw(users), "timeout": 1}
    elif type_ == "join":
        fields = {
            "roomId": draw(st.builds(Ref, st.just("room"), st.integers(0, 5))),
            "mediaType": draw(st.sampled_from([1, 2])),
        }
    elif type_ == "switchMedia":
        fields = {"callId": draw(call), "mediaType": draw(st.sampled_from([1, 2]))}
    elif type_ == "device":
        fields = {"callId": draw(call), "audio": draw(st.booleans()), "video": draw(st.booleans())}
    elif type_ == "relay":
        fields = {
            "callId": draw(call),
            "to": draw(user),
            "kind": draw(st.sampled_from(["offer", "answer", "candidate", "smoke"])),
            "data": draw(st.sampled_from([{"sdp": "v=0", "type": "offer"}, {}])),
        }
    elif type_ == "selfInfo":
        fields = {"nickname": draw(st.text(max_size=10)), "avatarUrl": "https://x/a.png"}
    return fields


MUTATION = st.one_of(
    st.tuples(st.just("drop"), st.integers(0, 8)),
    st.tuples(st.just("set"), st.integers(0, 8), JSON),
    st.tuples(st.just("add"), st.text(max_size=8), JSON),
    st.tuples(st.just("type"), st.sampled_from([*TYPES, "teleport", "", "ok", "event"])),
    st.tuples(st.just("v"), st.sampled_from([0, 2, "1", None])),
    st.tuples(st.just("truncate"), st.integers(1, 60)),
)


@st.composite
def action(draw: Any) -> tuple[int, str, Any]:
    """(lane, kind, payload): a request (maybe mutated), random JSON, text or bytes."""
    lane = draw(st.integers(0, len(LANE_USERS) - 1))
    kind = draw(
        st.sampled_from(
            ["flow"]
            + ["request"] * 5
            + ["mutated"] * 4
            + ["json", "text", "bytes"]
            + ["kick"] * (lane == 8)
        )
    )
    if kind == "kick":  # a stranger logs in as a lane's user: that lane is kicked (or not)
        return lane, kind, (draw(st.sampled_from(ONLINE)), draw(st.booleans()))
    if kind == "flow":  # a whole call between two lanes; maybe one step mutated
        callee = draw(st.integers(0, len(ONLINE) - 1))
        step = draw(st.integers(0, 8))
        return (
            lane,
            kind,
            (
                callee,
                draw(st.sampled_from([1, 2])),
                step,
                draw(st.lists(MUTATION, min_size=1, max_size=2)),
            ),
        )
    if kind in ("request", "mutated"):
        type_ = draw(st.sampled_from(TYPES[1:] * 3 + TYPES))  # logins are rarer
        fields = request_fields(draw, type_)
        mutations = draw(st.lists(MUTATION, min_size=1, max_size=3)) if kind == "mutated" else []
        return lane, kind, (type_, fields, mutations)
    if kind == "json":
        return lane, kind, draw(JSON)
    if kind == "text":
        return lane, kind, draw(st.text(max_size=80))
    return lane, kind, draw(st.binary(max_size=40))


def generate_actions(examples: int) -> list[tuple[int, str, Any]]:
    out: list[tuple[int, str, Any]] = []

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(action(), min_size=50, max_size=50))
    def collect(actions: list[tuple[int, str, Any]]) -> None:
        out.extend(actions)

    collect()
    return out


@dataclass(eq=False)
class Lane:
    """One fuzzing socket; re-opens (and logs in again) when the server closes it."""

    index: int
    user: str | None
    url: str
    http: aiohttp.ClientSession | None = None
    ws: aiohttp.ClientWebSocketResponse | None = None
    reader: asyncio.Task[None] | None = None
    sent: int = 0
    replies: int = 0
    opened: int = 0
    calls: list[str] = field(default_factory=list)
    rooms: list[int] = field(default_factory=list)
    frames: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    last_reply: dict[str, Any] = field(default_factory=dict)

    async def open(self) -> None:
        self.opened += 1
        if self.http is None:
            self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.url, max_msg_size=0)
        self.sent = self.replies = 0
        self.reader = asyncio.ensure_future(self._read(self.ws))
        self.reader.add_done_callback(lambda _: self.changed.set())
        if self.user is not None:
            await self.send_json(
                {
                    "v": 1,
                    "type": "login",
                    "id": 1,
                    "sdkAppId": SDK_APP_ID,
                    "userId": self.user,
                    "userSig": sig(self.user),
                    "multiDevice": self.index in MULTI,
                }
            )

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            self.frames += 1
            frame = json.loads(msg.data)
            if frame["type"] in ("ok", "error"):
                self.replies += 1
                self.last_reply = frame
                self.changed.set()
            call = frame.get("call") or (frame.get("data") or {}).get("call")
            call_id = frame.get("callId") or (call or {}).get("callId")
            if isinstance(call_id, str) and call_id not in self.calls[-6:]:
                self.calls.append(call_id)
            if isinstance(call, dict) and isinstance(call.get("roomID"), int):
                self.rooms.append(call["roomID"])

    @property
    def alive(self) -> bool:
        return self.ws is not None and not self.ws.closed

    async def send(self, data: str | bytes) -> None:
        if not self.alive:
            await self.open()
        assert self.ws is not None
        try:
            if isinstance(data, bytes):
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_str(data)
            self.sent += 1
        except (ConnectionError, RuntimeError):
            pass

    async def send_json(self, obj: Any) -> None:
        await self.send(json.dumps(obj))

    async def close(self, abrupt: bool) -> None:
        if self.ws is not None and not self.ws.closed:
            if abrupt and self.ws._response.connection is not None:  # type: ignore[union-attr]
                self.ws._response.connection.transport.abort()  # type: ignore[union-attr]
            await self.ws.close()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)
        if self.http is not None:
            await self.http.close()
            self.http = None


def resolve(value: Any, lanes: list[Lane], lane: Lane) -> Any:
    if isinstance(value, Ref):
        pool = lane.calls if value.kind == "call" else lane.rooms
        if not pool:  # borrow another lane's, else a made-up one
            pool = [
                x for other in lanes for x in (other.calls if value.kind == "call" else other.rooms)
            ]
        if not pool:
            return "no-such-call" if value.kind == "call" else 4242
        return pool[-1 - value.n % min(len(pool), 6)]
    if isinstance(value, list):
        return [resolve(v, lanes, lane) for v in value]
    return value


def render(kind: str, payload: Any, lanes: list[Lane], lane: Lane, rid: int) -> str | bytes:
    if kind == "json":
        return json.dumps(payload)
    if kind in ("text", "bytes"):
        return payload  # type: ignore[no-any-return]
    type_, fields, mutations = payload
    if fields.get("userSig") == Ref("sig", 0):  # a valid sig: logins that kick lanes
        fields = {**fields, "userSig": sig(str(fields["userId"]) or "fz0")}
    wire: dict[str, Any] = {
        "v": 1,
        "type": type_,
        "id": rid,
        **{k: resolve(v, lanes, lane) for k, v in fields.items()},
    }
    truncate = 0
    for op, *args in mutations:
        keys = sorted(wire)
        if op == "drop":
            wire.pop(keys[args[0] % len(keys)], None)
        elif op == "set":
            wire[keys[args[0] % len(keys)]] = args[1]
        elif op == "add":
            wire[args[0]] = args[1]
        elif op == "type":
            wire["type"] = args[0]
        elif op == "v":
            wire["v"] = args[0]
        elif op == "truncate":
            truncate = args[0]
    text = json.dumps(wire)
    return text[:-truncate] if truncate else text


async def run_flow(lanes: list[Lane], caller: Lane, payload: Any, rid: int) -> None:
    """call -> accept -> relay both ways -> device -> hangup between two lanes, with real
    call ids; step ``mutate_at`` is sent mutated instead."""
    callee_index, media, mutate_at, mutations = payload
    if caller.user in (None, ONLINE[callee_index]):
        callee_index = (callee_index + 1) % 6
    callee = lanes[callee_index]
    target = ONLINE[callee_index]
    steps = [
        (caller, "call", {"callees": [target], "mediaType": media, "timeout": 2}),
        (callee, "accept", {"callId": Ref("call", 0)}),
        (
            caller,
            "relay",
            {
                "callId": Ref("call", 0),
                "to": target,
                "kind": "offer",
                "data": {"sdp": "v=0", "type": "offer"},
            },
        ),
        (
            callee,
            "relay",
            {
                "callId": Ref("call", 0),
                "to": caller.user,
                "kind": "answer",
                "data": {"sdp": "v=0", "type": "answer"},
            },
        ),
        (callee, "device", {"callId": Ref("call", 0), "audio": False}),
        (caller, "switchMedia", {"callId": Ref("call", 0), "mediaType": 3 - media}),
        (caller, "invite", {"callId": Ref("call", 0), "callees": ["nobody"], "timeout": 0.5}),
        (callee, "hangup", {"callId": Ref("call", 0)}),
        (caller, "hangup", {"callId": Ref("call", 0)}),
    ]
    for lane in (caller, callee):  # first leave whatever call the lane is in
        if lane.calls and lane.alive:
            await lane.send_json(
                {"v": 1, "type": "hangup", "id": rid + 9, "callId": lane.calls[-1]}
            )
    await drain([caller, callee])
    call_id: str | None = None
    for n, (lane, type_, fields) in enumerate(steps):
        if not lane.alive:
            await lane.open()
        if call_id is not None:  # the call this flow placed, not whatever came last
            fields = {k: call_id if isinstance(v, Ref) else v for k, v in fields.items()}
        muts = mutations if n == mutate_at else []
        await lane.send(render("mutated", (type_, fields, muts), lanes, lane, rid + n))
        await drain([caller, callee])
        if n == 0:
            call = (caller.last_reply.get("data") or {}).get("call")
            if not call or len(call["members"]) < 2:  # refused, or the callee was busy
                return
            call_id = call["callId"]


async def drain(lanes: list[Lane], timeout: float = 10.0) -> None:
    """Wait until every open lane has a reply for everything it sent."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        behind = [lane for lane in lanes if lane.alive and lane.replies < lane.sent]
        if not behind:
            return
        if loop.time() > deadline:
            raise AssertionError(
                "replies missing: "
                + ", ".join(f"lane {lane.index}: {lane.replies}/{lane.sent}" for lane in behind)
            )
        lane = behind[0]
        lane.changed.clear()
        if lane.alive and lane.replies < lane.sent:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(lane.changed.wait(), 0.05)


async def normal_call_works(url: str) -> None:
    alice = await login(url, "alice")
    bob = await login(url, "bob")
    reply = await alice.request("call", callees=["bob"], mediaType=2)
    assert reply["type"] == "ok", reply
    call_id = reply["data"]["call"]["callId"]
    assert (await bob.event("onCallReceived"))["callId"] == call_id
    assert (await bob.request("accept", callId=call_id))["type"] == "ok"
    await alice.event("onCallBegin")
    assert (
        await bob.request(
            "relay", callId=call_id, to="alice", kind="offer", data={"sdp": "v=0", "type": "offer"}
        )
    )["type"] == "ok"
    assert (await alice.request("hangup", callId=call_id))["type"] == "ok"
    await bob.event("onCallEnd")
    await alice.close()
    await bob.close()


async def fuzz_lanes(urls: list[str], examples: int) -> tuple[int, float, int, float]:
    """Open the lanes (lane i at ``urls[i % len(urls)]``), play ``examples`` hypothesis
    examples of actions, then close every lane (half cleanly, half dropped). Returns the
    number of actions, seconds to generate and to play them, and sockets re-opened."""
    t0 = time.monotonic()
    actions = generate_actions(examples=examples)
    generated = time.monotonic() - t0
    assert len(actions) >= 50 * examples
    lanes = [Lane(i, user, urls[i % len(urls)]) for i, user in enumerate(LANE_USERS)]
    try:
        for lane in lanes:
            await lane.open()
        await drain(lanes)
        t1 = time.monotonic()
        for i, (index, kind, payload) in enumerate(actions):
            lane = lanes[index]
            if not lane.alive:
                await lane.open()
            if kind == "flow":
                await run_flow(lanes, lane, payload, 100_000 + 10 * i)
            elif kind == "kick":
                await lane.close(abrupt=False)
                await lane.open()
                user, multi = payload
                await lane.send_json(
                    {
                        "v": 1,
                        "type": "login",
                        "id": 100 + i,
                        "sdkAppId": SDK_APP_ID,
                        "userId": user,
                        "userSig": sig(user),
                        "multiDevice": multi,
                    }
                )
            else:
                await lane.send(render(kind, payload, lanes, lane, 100 + i))
            if i % 25 == 24:
                await drain(lanes)
            if i == len(actions) // 2:  # one frame over the hard limit: the socket closes
                await lanes[0].send("x" * (17 * 64 * 1024))
        await drain(lanes)
        elapsed = time.monotonic() - t1
        # every socket still open answers, then they go: half cleanly, half dropped
        for lane in lanes:
            if lane.alive:
                await lane.send_json({"v": 1, "type": "ping", "id": 1})
        await drain(lanes)
        reopened = sum(lane.opened for lane in lanes) - len(lanes)
        for i, lane in enumerate(lanes):
            await lane.close(abrupt=i % 2 == 1)
    finally:
        for lane in lanes:
            await lane.close(abrupt=False)
    return len(actions), generated, reopened, elapsed


FUZZ_CONFIG = dict(rate_per_s=100_000, rate_burst=100_000, login_timeout=2.0, resume_grace=0.5)


@pytest.mark.slow
async def test_fuzz_live_server(error_log: Any) -> None:
    server = await started(ServerConfig(**FUZZ_CONFIG))  # type: ignore[arg-type]
    url = server.url or ""
    try:
        actions, generated, reopened, elapsed = await fuzz_lanes([url], FUZZ_EXAMPLES)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not server.idle() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert server.idle(), (
            server.online_users(),
            server.held_users(),
            list(server.registry.calls),
        )
        assert server.stats.internal_errors == 0
        signaling_errors = [r for r in error_log.records if r.name.startswith("callkit.signaling")]
        assert not signaling_errors, [r.getMessage() for r in signaling_errors]
        assert server.stats.messages >= 10_000
        await normal_call_works(url)
        assert server.stats.internal_errors == 0
        ok = server.stats.messages - server.stats.errors_sent
        print(
            f"\nfuzz: {actions} actions ({generated:.1f} s to generate), "
            f"{server.stats.messages} frames handled in {elapsed:.1f} s "
            f"({server.stats.messages / elapsed:.0f} msgs/s), {ok} ok / "
            f"{server.stats.errors_sent} error replies, {reopened} sockets re-opened, "
            f"{server.stats.kicked} kicks, {server.stats.held} holds"
        )
    finally:
        await server.stop()
    logging.getLogger("callkit.signaling").debug("fuzz done")


@pytest.mark.slow
async def test_fuzz_live_cluster(redis_url: str, error_log: Any) -> None:
    """The same fuzzing against three Redis-backed nodes, lanes spread over them (a quarter
    of the examples: each frame is a Redis transaction). Afterwards Redis holds no call,
    index or device, no node logged an error, and a normal call works across nodes."""
    spread = NodeSpread(redis_url, config=ServerConfig(**FUZZ_CONFIG))  # type: ignore[arg-type]
    await spread.start()
    urls = [s.url or "" for s in spread.servers]
    try:
        actions, generated, reopened, elapsed = await fuzz_lanes(urls, FUZZ_EXAMPLES // 4)
        link = spread.servers[0].store.link  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        left: list[str] = ["?"]
        while left and loop.time() < deadline:  # held devices go after their 0.5 s grace
            await asyncio.sleep(0.1)
            keys = await link.run(lambda r: r.keys("ck:*"))
            left = [k for k in keys if k.startswith(("ck:call:", "ck:uc:", "ck:room:", "ck:user:"))]
        assert left == []
        messages = sum(s.stats.messages for s in spread.servers)
        assert all(s.stats.internal_errors == 0 for s in spread.servers)
        signaling_errors = [r for r in error_log.records if r.name.startswith("callkit.signaling")]
        assert not signaling_errors, [r.getMessage() for r in signaling_errors]
        assert messages >= 2_000
        await normal_call_works(urls[1])
        print(
            f"\nfuzz over 3 nodes: {actions} actions ({generated:.1f} s to generate), "
            f"{messages} frames handled in {elapsed:.1f} s ({messages / elapsed:.0f} msgs/s), "
            f"{reopened} sockets re-opened, conflicts retried: "
            f"{sum(s.store.conflicts for s in spread.servers)}"
        )
    finally:
        await spread.stop()
