"""The aiohttp signaling service: a thin adapter around two pure rule books and a store.

Only the WebSocket handler reads from a socket; any task may send. Every operation parses and
authorizes a frame, then runs synchronously, through :meth:`StateStore.apply
<callkit.signaling.store.StateStore.apply>`, on :class:`~callkit.signaling.callstate.CallRegistry`
(the calls) and :class:`~callkit.signaling.sessions.SessionTable` (devices, kick, resume, held
sessions and their expiry, which device owns a user's call; see that module for the rules).
The store hands back the frames for this node's sockets (:meth:`_on_frames`: post, or close
after a notice) and the notifications for the call records (:meth:`_observe`). Timers of both
rule books are data; one task fires them through the store.

A :class:`Session` here is one socket; once logged in it is attached to a
:class:`~callkit.signaling.sessions.Device` by its ``conn`` id. A socket that closes cleanly is
a logout; one that drops without a close frame (TCP reset, EOF, missed pongs) leaves its device
held for ``resume_grace`` seconds after the last sign of life.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from . import protocol as p
from .adminauth import admin_refusal
from .callstate import CallRegistry, CallStateError, MemberState, Notify
from .codes import ErrorCode
from .grants import granted_groups
from .ice import IceServersConfig
from .limits import ConnectionGuard, FrameRate, GuardedSite, RepeatFilter
from .metrics import LoopLagMonitor, ServerMetrics
from .protocol import USER_ID_RE, valid_user_id
from .records.service import RecordService
from .records.store import RecordStore
from .records.tracker import Cause
from .relaydata import check_relay_data
from .requestqueue import RequestQueue
from .rest import AdminApi
from .sessionio import SessionWriter
from .sessions import Outcome, SessionTable
from .store import CLOSE_CODES, Applied, Batch, Frame, MemoryStore, StateStore, Tx, snapshot
from .usersig import UserSigError, verify_user_sig
from .webapp import add_web_routes

log = logging.getLogger("callkit.signaling.server")

#: asyncio logs each failed accept (e.g. "Too many open files"): once per 10 s is enough
_ACCEPT_ERRORS = RepeatFilter(10.0)


def _quiet_accept_errors() -> None:
    """Rate-limit asyncio's per-event error logs (idempotent)."""
    asyncio_log = logging.getLogger("asyncio")
    if _ACCEPT_ERRORS not in asyncio_log.filters:
        asyncio_log.addFilter(_ACCEPT_ERRORS)


__all__ = ["USER_ID_RE", "ServerConfig", "Session", "SignalingServer", "Stats", "valid_user_id"]

#: close code for a socket whose session was resumed on a newer socket
CLOSE_RESUMED = 4001
#: close code for a client that does not read its frames fast enough (a lost link: its
#: session is held for a resume like after a dropped socket)
CLOSE_TOO_SLOW = 4008
#: how long a close frame may take to go out before the connection is aborted
CLOSE_TIMEOUT = 1.0
#: seconds before due timers are tried again when the shared store could not fire them
TIMER_RETRY = 0.2


@dataclass
class ServerConfig:
    """Tunables of the service (every bound the service enforces is here)."""

    #: a client silent for this many seconds gets a WebSocket ping (checked twice as often)
    heartbeat: float = 2.0
    #: a client from which nothing (no frame, no pong) arrived for this long is a lost link;
    #: generous, so that a loaded server does not drop idle clients whose pongs are late
    liveness_timeout: float = 5.0
    #: an unauthenticated socket is closed (1008) after this many seconds
    login_timeout: float = 5.0
    #: token bucket per connection: sustained messages per second and burst size; frames
    #: over it are dropped unread (one -1403 error per second tells the sender)
    rate_per_s: float = 100.0
    rate_burst: float = 200.0
    #: frames dropped within 10 s after which the sender is disconnected (1008) as a flooder
    flood_drops: int = 1000
    #: requests of one socket queued or running at once (they run in order while its pings
    #: and pongs keep being read); with that many, its frames are read only once one is done
    max_requests_in_flight: int = 4
    #: frames larger than this get an error reply; frames over 16x this close the socket (1009)
    max_message_bytes: int = p.MAX_MESSAGE_BYTES
    #: sessions (devices) one user may have at once, held ones included (multi-device on)
    max_sessions_per_user: int = 4
    #: TCP connections the service holds at once (before the upgrade and login too); more
    #: get HTTP 503 at once. ``callkit serve`` raises the open-file limit to fit it
    max_connections: int = 10_000
    #: TCP connections from one client address; more get HTTP 503
    max_connections_per_ip: int = 1024
    #: a connection that is neither a WebSocket nor in a request is closed this many seconds
    #: after it opened or after its last response (slowloris, idle keep-alive sockets)
    handshake_timeout: float = 10.0
    #: how long a user whose socket dropped without a clean close keeps its call membership,
    #: counted from the last frame or pong received from it (a TCP close counts as a sign of
    #: life, missed pongs do not). So a vanished client leaves its call at most this long after
    #: it went silent (<= 10 s, as issue 3 requires), and a call survives a signaling outage of
    #: up to this long (when the client reconnects within it)
    resume_grace: float = 9.0
    #: messages buffered for a held session; one more releases it (the user leaves its call)
    max_held_messages: int = 256
    #: bytes of messages buffered for a held session; more release it too
    max_held_bytes: int = 256 * 1024
    #: bytes queued for one open socket's writer; a client further behind is disconnected
    #: (close code 4008) and treated as a lost link
    max_send_queue_bytes: int = 1024 * 1024
    #: seconds one frame may take to reach the kernel before the client counts as stalled
    send_timeout: float = 10.0
    #: wall clock for UserSig expiry (injectable for tests)
    wall_clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        for name in (
            "heartbeat",
            "liveness_timeout",
            "login_timeout",
            "rate_per_s",
            "rate_burst",
            "send_timeout",
            "handshake_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.resume_grace < 0:
            raise ValueError(f"resume_grace must be >= 0, got {self.resume_grace!r}")
        for name in (
            "max_message_bytes",
            "max_sessions_per_user",
            "max_connections",
            "max_connections_per_ip",
            "flood_drops",
            "max_requests_in_flight",
            "max_held_messages",
            "max_held_bytes",
            "max_send_queue_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")


@dataclass(eq=False)
class Session:
    """One WebSocket; after login attached to its user's :class:`Device` (``session_id``)."""

    ws: web.WebSocketResponse
    #: this socket's id in the session table (unique in this server)
    conn: str = ""
    #: the device's ``sessionId`` (the resume token), once logged in
    session_id: str = ""
    user_id: str | None = None
    #: the sender's frame budget (limits.FrameRate)
    rate: FrameRate | None = None
    #: loop time of the last frame (or pong) received, or of a TCP close
    last_seen: float = 0.0
    #: no longer attached (logged out, kicked, expired, resumed elsewhere, socket gone)
    released: bool = False
    #: the socket's own bounded writer (see sessionio.py) and its TCP transport
    writer: SessionWriter | None = None
    transport: Any = None
    #: the service dropped this socket as a lost link (it could not keep up, or went silent)
    lost: bool = False
    #: the service disconnects this socket for flooding; its frames are no longer read
    flooded: bool = False
    #: its decoded requests, run in order by their own task (the handler keeps reading)
    requests: RequestQueue[p.Request] | None = None
    #: closes the socket unless it logged in in time
    login_timer: asyncio.TimerHandle | None = None

    @property
    def uid(self) -> str:
        """The logged-in user's id; message handlers run only after login."""
        if self.user_id is None:
            raise RuntimeError("session is not logged in")
        return self.user_id

    def post(self, text: str) -> None:
        """Queue an encoded frame on this socket's writer; never waits on the socket."""
        if self.released or self.ws.closed or self.writer is None:
            return
        self.writer.post(text)

    async def send(self, message: p.Message) -> None:
        """Queue ``message`` (see :meth:`post`); kept awaitable for callers' convenience."""
        self.post(message.encode())


@dataclass
class Stats:
    """Counters a test or an operator can read."""

    connections: int = 0
    messages: int = 0
    errors_sent: int = 0
    internal_errors: int = 0
    rate_limited: int = 0
    kicked: int = 0
    #: clients disconnected because they did not read their frames fast enough
    slow_disconnects: int = 0
    #: clients disconnected for sending far over their rate
    flooders: int = 0
    #: clients dropped because nothing (no frame, no pong) came from them in time
    silent_disconnects: int = 0
    sig_expired: int = 0
    held: int = 0
    resumed: int = 0
    refused_connections: int = 0


#: ``GET /calls`` lists at most this many calls
MAX_LISTED_CALLS = 1000


def user_info(
    registry: CallRegistry, sessions: SessionTable, user_id: str
) -> dict[str, Any] | None:
    """What ``GET /users/{id}`` shows: presence, devices, profile, current call (None when
    the user has no device)."""
    devices = sessions.of_user(user_id)
    if not devices:
        return None
    call = registry.call_of(user_id)
    attached = sum(not d.held for d in devices)
    return {
        "userId": user_id,
        "online": attached > 0,
        "devices": attached,
        "heldDevices": len(devices) - attached,
        **sessions.profile(user_id),
        "callId": call.call_id if call is not None else None,
    }


def _store_refusal(exc: CallStateError) -> web.Response:
    """An admin view the store could not answer: 503 with the code and why."""
    return web.json_response({"error": exc.message, "code": int(exc.code)}, status=503)


class SignalingServer:
    """The signaling service: ``url = await start(host, port)``, then ``await stop()``."""

    def __init__(
        self,
        sdk_app_id: int,
        secret_key: str,
        config: ServerConfig | None = None,
        registry: CallRegistry | None = None,
        *,
        ice_servers: IceServersConfig | None = None,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] | None = None,
        dev_login: bool = False,
        db: str | RecordStore | None = None,
        webhooks: list[str] | None = None,
        webhook_secret: str | None = None,
        records_heartbeat: float = 5.0,
        webhook_timeout: float = 5.0,
        store: StateStore | None = None,
        redis: str | None = None,
        node_id: str | None = None,
    ) -> None:
        """``store``: where calls and sessions live (None: a :class:`MemoryStore` over
        ``registry`` in this process, or with ``redis`` a Redis URL, the
        :class:`~callkit.signaling.cluster.RedisStateStore` that several nodes share, this
        one named ``node_id`` (None: a random id); docs/cluster.md); ``db``: call records
        (``sqlite:///path``, ``postgresql://...`` or a store; None: live calls only);
        ``webhooks``: URLs that get signed call events (needs ``db`` and ``webhook_secret``);
        ``records_heartbeat``: seconds between live-record touches; ``webhook_timeout``:
        seconds one delivery attempt may take."""
        self.sdk_app_id = sdk_app_id
        #: STUN/TURN servers put in every login reply (``iceServers``, fresh TURN credentials)
        self.ice_servers = ice_servers or IceServersConfig()
        #: with a context the service listens with TLS: ``wss://`` and ``https://``
        self.ssl_context = ssl_context
        #: monotonic seconds for the call and session rules (ring timeouts, call durations,
        #: UserSig expiry, resume grace); None: the event loop's clock. Tests inject a fake
        #: one and call :meth:`run_timers`
        self.clock = clock
        #: serve POST /dev/usersig, which mints a UserSig for any user id (development only)
        self.dev_login = dev_login
        self.secret_key = secret_key
        self.config = config or ServerConfig()
        cfg = self.config

        def table() -> SessionTable:
            return SessionTable(
                max_devices=cfg.max_sessions_per_user,
                resume_grace=cfg.resume_grace,
                max_held_messages=cfg.max_held_messages,
                max_held_bytes=cfg.max_held_bytes,
            )

        if store is None and redis is not None:
            from .cluster.redisstore import RedisStateStore  # needs redis-py: callkit[redis]

            store = RedisStateStore(redis, node=node_id, sessions_factory=table)
            store.on_state_lost = self._state_lost
        if store is None:
            store = MemoryStore(registry or CallRegistry(), table(), self._now)
        #: where calls and sessions live; frames for this node's sockets come back here
        self.store = store
        store.set_sink(self._on_frames)
        store.set_observer(self._observe)
        #: this process's view: every live call, every device of every user (the memory store)
        self.registry: CallRegistry = getattr(store, "registry", None) or CallRegistry()
        self.sessions: SessionTable = getattr(store, "sessions", None) or SessionTable()
        self.stats = Stats()
        self.metrics = ServerMetrics()
        self.records = RecordService(
            sdk_app_id,
            self.metrics,
            db=db,
            webhooks=webhooks,
            webhook_secret=webhook_secret,
            heartbeat=records_heartbeat,
            webhook_timeout=webhook_timeout,
            wall_clock=self.config.wall_clock,
        )
        self.metrics.bind("connected_users", lambda: len(self.sessions.online_users()))
        self.metrics.bind("live_calls", lambda: len(self.registry.calls))
        self.loop_lag = LoopLagMonitor(self.metrics.loop_lag)
        self.api = AdminApi(self)
        self._sockets: dict[str, Session] = {}  # conn id -> open socket
        self._conn_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._guard: ConnectionGuard | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.url: str | None = None
        self.port: int | None = None
        #: the operation of each request type: ``(tx, session, msg) -> (reply data,
        #: notifications[, direct frames])`` or notifications; pure, run inside the store
        self._handlers: dict[type[p.Request], Callable[[Tx, Session, Any], Any]] = {
            p.Call: self._on_call,
            p.Accept: lambda tx, s, m: self._on_answer(tx, s, m, tx.registry.accept),
            p.Reject: lambda tx, s, m: self._on_answer(tx, s, m, tx.registry.reject),
            p.Ignore: lambda tx, s, m: self._on_answer(tx, s, m, tx.registry.ignore),
            p.Hangup: lambda tx, s, m: self._on_answer(tx, s, m, tx.registry.hangup),
            p.Invite: self._on_invite,
            p.Join: self._on_join,
            p.SwitchMedia: lambda tx, s, m: tx.registry.switch_media_type(
                tx.now, s.uid, self._own(tx, s, m.call_id), m.media_type
            ),
            p.Device: lambda tx, s, m: tx.registry.set_device(
                tx.now, s.uid, self._own(tx, s, m.call_id), audio=m.audio, video=m.video
            ),
            p.SelfInfo: self._on_self_info,
            p.MultiDevice: self._on_multi_device,
            p.Ping: lambda tx, s, m: [],
        }

    # ------------------------------------------------------------------ lifecycle

    def create_app(self) -> web.Application:
        """The aiohttp application (``/ws``, ``/health``, the admin API of rest.py, the web
        phone and SDK)."""
        app = web.Application(middlewares=[self._deadline_middleware])
        app.router.add_get("/ws", self._ws_handler)
        app.router.add_get("/health", self._health)
        app.router.add_get("/calls", self._calls)
        app.router.add_get("/users/{user_id}", self._user)
        add_web_routes(
            app, sdk_app_id=self.sdk_app_id, secret_key=self.secret_key, dev_login=self.dev_login
        )
        self.api.add_routes(app)
        app.cleanup_ctx.append(self._records_ctx)
        app.cleanup_ctx.append(self._background)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start listening; returns the WebSocket URL (``ws://host:port/ws``, or ``wss://``
        with an ``ssl_context``). Raises OSError when the address cannot be bound."""
        self._runner = web.AppRunner(self.create_app(), handle_signals=False)
        await self._runner.setup()
        _quiet_accept_errors()
        cfg = self.config
        self._guard = ConnectionGuard(
            cfg.max_connections,
            cfg.max_connections_per_ip,
            cfg.handshake_timeout,
            on_refused=self._count_refused,
        )
        site = GuardedSite(
            self._runner, host, port, guard=self._guard, ssl_context=self.ssl_context
        )
        try:
            await site.start()
        except OSError:
            runner, self._runner = self._runner, None
            await runner.cleanup()
            raise
        server = cast("asyncio.Server | None", site._server)
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        scheme = "wss" if self.ssl_context is not None else "ws"
        self.url = f"{scheme}://{shown}:{self.port}/ws"
        log.info("signaling listening on %s", self.url)
        return self.url

    async def stop(self) -> None:
        """Close every socket and stop listening; idempotent."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _background(self, app: web.Application):  # type: ignore[no-untyped-def]
        await self.store.start()  # a shared store connects (raises when it cannot)
        self._timer_task = asyncio.create_task(self._timer_loop(), name="signaling-timers")
        liveness = asyncio.create_task(self._liveness_loop(), name="signaling-liveness")
        yield
        liveness.cancel()
        while not self._timer_task.done():  # a store's client may swallow one cancel
            self._timer_task.cancel()
            await asyncio.wait([self._timer_task], timeout=0.5)
        for dev in [d for d in self.sessions.devices.values() if d.held]:
            await self._release(dev.session_id)
        await self.store.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(self._timer_task, *self._tasks, return_exceptions=True)

    async def _liveness_loop(self) -> None:
        """Ping silent clients; drop as a lost link any silent for ``liveness_timeout``."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        while True:
            await asyncio.sleep(min(cfg.heartbeat, cfg.liveness_timeout) / 2)
            now = loop.time()
            for session in list(self._sockets.values()):
                silent = now - session.last_seen
                if session.lost or session.flooded or session.writer is None:
                    continue
                if session.requests is not None and session.requests.full:
                    continue  # not read while its own requests wait on the store
                if silent > cfg.liveness_timeout:
                    session.lost = True
                    self.stats.silent_disconnects += 1
                    log.info("%s went silent for %.1f s", session.user_id or "a client", silent)
                    self._spawn(
                        self._close(session, WSCloseCode.GOING_AWAY, b"silent", flush=False)
                    )
                elif silent >= cfg.heartbeat:
                    session.writer.ping()

    async def _records_ctx(self, app: web.Application):  # type: ignore[no-untyped-def]
        await self.records.start()  # migrations, interrupted calls; raises on a bad database
        self.loop_lag.start()
        yield
        await self.loop_lag.stop()
        await self.records.stop()

    async def end_call(self, call_id: str) -> bool:
        """End a live call as an operator (every member is told); False if not live."""

        def end(tx: Tx) -> None:
            tx.notify(tx.registry.end_call(tx.now, call_id), None, Cause.SERVER)

        try:
            await self._apply(end, calls=[call_id], fire_due=False)
        except CallStateError:
            return False
        log.info("call %s ended by the server", call_id)
        return True

    async def _on_shutdown(self, app: web.Application) -> None:
        sessions = list(self._sockets.values())
        await asyncio.gather(
            *(self._close(s, WSCloseCode.GOING_AWAY, b"server shutdown") for s in sessions)
        )

    def _now(self) -> float:
        """The call state machine's clock: the injected ``clock``, else the loop's."""
        return self.clock() if self.clock is not None else asyncio.get_running_loop().time()

    async def run_timers(self) -> None:
        """Fire every call and session timer due at :meth:`_now` (after moving an injected
        clock)."""
        await self._fire_timers()
        self._wake.set()

    async def _fire_timers(self) -> None:
        self._after(await self.store.fire_timers(self.store.now()))

    async def _timer_loop(self) -> None:
        while True:
            self._wake.clear()
            deadline = await self.store.get_timer()
            timeout = None if deadline is None else max(0.0, deadline - self.store.now())
            # not asyncio.wait_for: on 3.10/3.11 it swallows a cancel that races the wake-up
            # (a stop right after the last logout), and a UserSig deadline is months away
            woken = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait([woken], timeout=timeout)
            finally:
                woken.cancel()
            if self._wake.is_set():
                continue
            try:
                await self._fire_timers()
            except CallStateError as exc:  # the shared store is unreachable: not a bug
                log.warning("timers not fired, retrying: %s", exc.message)
                await asyncio.sleep(TIMER_RETRY)  # (a store that fails at once must not spin)
            except Exception:  # never let the timer die
                self.stats.internal_errors += 1
                log.exception("timer handling failed")

    def _spawn(self, coro: Any) -> None:
        """Run ``coro`` in a kept task; its failure is counted and logged."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.stats.internal_errors += 1
            log.error("background task failed", exc_info=task.exception())

    # ------------------------------------------------------------------ REST

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "ok": True,
                "online": len(self.sessions.online_users()),
                "calls": len(self.registry.calls),
            }
        )

    async def _calls(self, request: web.Request) -> web.Response:
        refusal = admin_refusal(request, self.sdk_app_id, self.secret_key, self.config.wall_clock())
        if refusal is not None:
            return refusal
        # the whole deployment's calls (with a shared store, other nodes' too), at most 1,000
        try:
            ids = await self.store.call_ids(MAX_LISTED_CALLS)
            applied = await self.store.apply(
                lambda tx: [snapshot(c, tx.sessions.profile) for c in tx.registry.calls.values()],
                calls=ids,
                fire_due=False,
            )
        except CallStateError as exc:  # the shared store is unreachable
            return _store_refusal(exc)
        return web.json_response(applied.result)

    async def _user(self, request: web.Request) -> web.Response:
        refusal = admin_refusal(request, self.sdk_app_id, self.secret_key, self.config.wall_clock())
        if refusal is not None:
            return refusal
        user = request.match_info["user_id"]
        info = None
        if valid_user_id(user):  # through the store: a user on another node is found too
            try:
                applied = await self.store.apply(
                    lambda tx: user_info(tx.registry, tx.sessions, user),
                    users=[user],
                    fire_due=False,
                )
            except CallStateError as exc:
                return _store_refusal(exc)
            info = applied.result
        if info is None:
            return web.json_response({"error": "user is not online"}, status=404)
        return web.json_response(info)

    # ------------------------------------------------------------------ websocket

    def _count_refused(self) -> None:
        self.stats.refused_connections += 1

    @web.middleware
    async def _deadline_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """No handshake deadline while a request runs; it restarts after the response."""
        guard = self._guard
        if guard is None:
            return await handler(request)
        guard.busy(request.transport, True)
        try:
            return await handler(request)
        finally:
            guard.busy(request.transport, False)

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        if len(self._sockets) >= self.config.max_connections:
            self.stats.refused_connections += 1
            return web.json_response({"error": "too many connections"}, status=503)
        ws = web.WebSocketResponse(
            autoping=False,
            max_msg_size=self.config.max_message_bytes * 16,
        )
        await ws.prepare(request)
        if self._guard is not None:
            self._guard.upgraded(request.transport)
        loop = asyncio.get_running_loop()
        session = Session(
            ws=ws,
            conn=f"c{next(self._conn_ids)}",
            rate=FrameRate(
                self.config.rate_per_s,
                self.config.rate_burst,
                loop.time(),
                flood_drops=self.config.flood_drops,
            ),
            last_seen=loop.time(),
        )
        session.transport = request.transport
        session.requests = RequestQueue(
            lambda msg: self._on_message(session, msg), self.config.max_requests_in_flight
        )
        session.writer = SessionWriter(
            ws,
            max_bytes=self.config.max_send_queue_bytes,
            send_timeout=self.config.send_timeout,
            on_stalled=lambda why: self._on_stalled(session, why),
        )
        self._sockets[session.conn] = session
        self.stats.connections += 1
        session.login_timer = loop.call_later(
            self.config.login_timeout, self._login_timeout, session
        )
        abrupt = False
        try:
            while True:  # reads pings and pongs while a request waits (unless the queue is full)
                msg = await ws.receive()
                if msg.type is WSMsgType.TEXT:
                    session.last_seen = loop.time()
                    await self._on_text(session, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    session.last_seen = loop.time()
                    if self._allow(session):
                        await self._send_error(
                            session,
                            None,
                            ErrorCode.PROTOCOL_ERROR,
                            "binary frames are not supported",
                        )
                elif msg.type is WSMsgType.PING:
                    session.last_seen = loop.time()
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await ws.pong(msg.data)
                elif msg.type is WSMsgType.PONG:
                    session.last_seen = loop.time()
                else:  # CLOSE (clean), CLOSING (we closed it), CLOSED / ERROR (dropped)
                    abrupt = session.lost or self._dropped(msg, ws, session, loop.time())
                    break
        finally:
            session.login_timer.cancel()
            self._sockets.pop(session.conn, None)
            await session.requests.drain()  # what it sent before it went still applies
            await session.writer.close()
            await self._socket_gone(session, abrupt or session.lost)
        return ws

    def _on_stalled(self, session: Session, why: str) -> None:
        """The client does not read fast enough: drop its socket as a lost link (4008)."""
        if session.lost:
            return
        session.lost = True
        self.stats.slow_disconnects += 1
        log.info("disconnecting %s: %s", session.user_id or "a client", why)
        self._spawn(self._close(session, CLOSE_TOO_SLOW, b"cannot keep up", flush=False))

    async def _close(
        self, session: Session, code: int, message: bytes, *, flush: bool = True
    ) -> None:
        """Close ``session``'s socket after its queued frames (bounded), else abort it."""
        ws = session.ws
        if flush and session.writer is not None:
            await session.writer.flush(CLOSE_TIMEOUT)
        if not ws.closed:
            try:
                await asyncio.wait_for(ws.close(code=code, message=message), CLOSE_TIMEOUT)
                return
            except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                pass
        if session.transport is not None:
            session.transport.abort()  # a peer that reads nothing must not hold the socket

    @staticmethod
    def _dropped(msg: Any, ws: web.WebSocketResponse, session: Session, now: float) -> bool:
        """Did the socket drop without a clean close? Updates ``last_seen`` for a TCP close."""
        if msg.type not in (WSMsgType.CLOSED, WSMsgType.ERROR):
            return False
        exc = msg.data if msg.type is WSMsgType.ERROR else ws.exception()
        if isinstance(exc, WebSocketError):  # a protocol violation, e.g. a huge frame
            return False
        if not isinstance(exc, asyncio.TimeoutError):  # EOF / reset: the peer was there now
            session.last_seen = now
        return True

    def _login_timeout(self, session: Session) -> None:
        if session.user_id is None and not session.ws.closed:
            log.info("closing a socket that did not log in in time")
            self._spawn(self._close(session, WSCloseCode.POLICY_VIOLATION, b"login timeout"))

    def _allow(self, session: Session) -> bool:
        """Is this frame within its sender's rate? Over it the frame is dropped unread; a
        persistent flooder is disconnected (1008)."""
        assert session.rate is not None
        if session.flooded:
            return False
        verdict = session.rate.take(asyncio.get_running_loop().time())
        if verdict == "ok":
            return True
        self.stats.rate_limited += 1
        if verdict == "notify":
            self.stats.errors_sent += 1
            session.post(
                p.ErrorReply(
                    id=None,
                    code=int(ErrorCode.RATE_LIMITED),
                    message=f"too many messages (more than {self.config.rate_per_s:g}/s); "
                    "frames over the rate are dropped unread",
                ).encode()
            )
        elif verdict == "flood" and not session.flooded:
            session.flooded = True  # closed as a policy violation (a logout, not held)
            self.stats.flooders += 1
            log.info("disconnecting %s: message flood", session.user_id or "a client")
            self._spawn(self._close(session, WSCloseCode.POLICY_VIOLATION, b"message flood"))
        return False

    async def _on_text(self, session: Session, text: str) -> None:
        """A text frame (in the reader): rate, decode, queue for :meth:`_on_message`."""
        self.stats.messages += 1
        if not self._allow(session):
            return
        try:
            msg = p.decode(text, max_bytes=self.config.max_message_bytes)
        except p.ProtocolError as exc:
            await self._send_error(session, exc.request_id, exc.code, exc.message)
            return
        assert isinstance(msg, p.Request) and session.requests is not None
        await session.requests.put(msg)  # waits while max_requests_in_flight are

    async def _on_message(self, session: Session, msg: p.Request) -> None:
        """One request (in the socket's request task, in arrival order)."""
        try:
            if isinstance(msg, p.Login):
                await self._on_login(session, msg)
                if session.login_timer is not None:
                    session.login_timer.cancel()
                return
            if session.user_id is None:
                raise CallStateError(ErrorCode.INIT_FAIL, "log in first")
            if isinstance(msg, p.Relay):
                await self._on_relay(session, msg)
                return
            if isinstance(msg, (p.QueryRecords, p.DeleteRecords)):
                data = await self.api.user_request(session.user_id, msg)
                await session.send(p.Reply(id=msg.id, data=data))
                return
            await self._on_request(session, msg)
        except CallStateError as exc:
            await self._send_error(session, msg.id, exc.code, exc.message)
        except Exception:
            self.stats.internal_errors += 1
            log.exception("internal error handling %s", type(msg).__name__)
            await self._send_error(session, msg.id, ErrorCode.INTERNAL, "internal error")

    async def _send_error(
        self, session: Session, request_id: int | None, code: int, message: str
    ) -> None:
        self.stats.errors_sent += 1
        await session.send(p.ErrorReply(id=request_id, code=int(code), message=message))

    # ------------------------------------------------------------------ store

    async def _apply(self, op: Callable[[Tx], Any], **keys: Any) -> Applied[Any]:
        """Run ``op`` through the store (see store.py), then count and log what it did."""
        try:
            applied = await self.store.apply(op, **keys)
        finally:
            self._wake.set()  # deadlines may have moved
        self._after(applied)
        return applied

    def _after(self, applied: Applied[Any]) -> None:
        for out in applied.outcomes:
            self.stats.kicked += len(out.kicked)
            self.stats.sig_expired += len(out.expired)
            self.stats.held += len(out.held)
            self.stats.resumed += out.resumed
            for dev in out.held:
                log.info("holding %s's session after a dropped socket", dev.user_id)
            for dev in out.released:
                log.info("logout %s (session %s…)", dev.user_id, dev.session_id[:6])
        for sid in applied.overflowed:
            log.info("a held session overflowed its buffer; releasing it")
            self._spawn(self._release(sid))

    def _on_frames(self, frames: list[Frame]) -> None:
        """The store's sink: post each frame on its socket; close a socket when told."""
        for frame in frames:
            session = self._sockets.get(frame.conn)
            if session is None:
                continue
            if frame.text is not None:
                session.post(frame.text)
            if frame.close is not None:
                session.released = True
                code, reason = CLOSE_CODES[frame.close]
                flush = frame.close != "resumed"
                self._spawn(self._close(session, code, reason, flush=flush))

    def _state_lost(self) -> None:
        """The shared store came back without its state (a Redis restarted empty): every
        socket here logs in again (close code 1012)."""
        for session in list(self._sockets.values()):
            session.released = True
            self._spawn(self._close(session, 1012, b"state store lost its state"))

    def _observe(self, batches: list[Batch]) -> None:
        """The store's observer: the call records see every change before its frames."""
        for batch in batches:
            if batch.started is not None:
                self.records.started(batch.started)
            if batch.notifies:
                self.records.observe(batch.notifies, batch.calls, batch.actor, batch.cause)

    async def _on_request(self, session: Session, msg: p.Request) -> None:
        """A call request: the handler's rules, the reply, then the events, atomically."""
        handler = self._handlers[type(msg)]

        def op(tx: Tx) -> None:
            tx.sessions.device(session.session_id)  # not kicked, expired or released
            result = handler(tx, session, msg)
            if not isinstance(result, tuple):
                result = ({}, result)
            data, notifies, *direct = result
            tx.post(self.store.node, session.conn, p.Reply(id=msg.id, data=data))
            tx.notify(notifies, session.user_id)
            for target, message in direct[0] if direct else ():
                tx.send(target, message)

        # a longer list is refused by the rules; a shared store must not load 10,000 users
        users = [session.uid, *list(getattr(msg, "callees", ()))[: CallRegistry.MAX_PARTICIPANTS]]
        call_id = getattr(msg, "call_id", None)
        room_id = getattr(msg, "room_id", None)
        await self._apply(
            op,
            users=[u for u in users if isinstance(u, str)],
            calls=[call_id] if isinstance(call_id, str) else [],
            rooms=[room_id] if isinstance(room_id, int) else [],
        )

    def _own(self, tx: Tx, session: Session, call_id: str) -> str:
        """Refuse an action on a call that another device of the same user owns."""
        tx.sessions.check_owner(session.session_id, call_id)
        return call_id

    # ------------------------------------------------------------------ sessions

    async def _on_login(self, session: Session, msg: p.Login) -> None:
        if session.user_id is not None:
            raise CallStateError(ErrorCode.REQUEST_REPEATED, "already logged in")
        if not valid_user_id(msg.user_id):
            raise CallStateError(
                ErrorCode.INIT_FAIL, "invalid userId (letters, digits, '-' and '_', at most 32)"
            )
        wall = self.config.wall_clock()
        try:
            info = verify_user_sig(
                msg.sdk_app_id if msg.sdk_app_id == self.sdk_app_id else -1,
                self.secret_key,
                msg.user_id,
                msg.user_sig,
                now=wall,
            )
        except UserSigError as exc:
            raise CallStateError(
                ErrorCode.INIT_FAIL, f"login refused: {exc.reason}; {exc.hint}"
            ) from None
        if msg.sdk_app_id != self.sdk_app_id:
            raise CallStateError(
                ErrorCode.INIT_FAIL,
                "login refused: wrong sdkAppId; pass init the sdkAppId the server runs with",
            )
        user = msg.user_id
        node, conn = self.store.node, session.conn
        ice = self.ice_servers.for_user(user, wall)

        def login(tx: Tx) -> Outcome:
            out = tx.sessions.login(
                tx.now,
                user,
                conn,
                tx.call_of,
                node=node,
                multi_device=msg.multi_device,
                groups=granted_groups(info.userbuf),
                sig_deadline=tx.now + max(0.0, info.expires_at - wall),
                resume=msg.resume,
            )
            tx.carry(out)  # kicked devices, a half-dead socket of the resumed one
            assert out.device is not None
            call_id = tx.sessions.call_for(out.device.session_id, tx.call_of)
            call = tx.registry.calls.get(call_id) if call_id is not None else None
            snap = snapshot(call, tx.sessions.profile) if call is not None else None
            for text in out.replay:  # what happened while the socket was gone, then the reply
                tx.post(node, conn, text)
            data = {
                "userId": user,
                "sigExpiresAt": info.expires_at,
                "sessionId": out.device.session_id,
                "resumed": out.resumed,
                "resumeGrace": self.config.resume_grace,
                "call": snap,
                "iceServers": ice,
            }
            tx.post(node, conn, p.Reply(id=msg.id, data=data))
            invitation = tx.registry.pending_invitation(user) if out.ring else None
            if invitation is not None:  # it rings on the device that just came
                event = p.Event(
                    event=invitation.event,
                    call_id=invitation.call_id,
                    payload=invitation.payload,
                    call=snap,
                )
                tx.post(node, conn, event)
            return out

        resumed = [msg.resume] if msg.resume else []
        out = (await self._apply(login, users=[user], sessions=resumed)).result
        assert out.device is not None
        session.user_id = user
        session.session_id = out.device.session_id
        self.metrics.logins.inc()
        log.info(
            "login %s (session %s…%s)",
            user,
            session.session_id[:6],
            ", resumed" if out.resumed else "",
        )

    async def _socket_gone(self, session: Session, abrupt: bool) -> None:
        """The session's socket ended: its device is held for a resume, or released."""
        if session.released or session.user_id is None:
            session.released = True
            return
        session.released = True
        silent = asyncio.get_running_loop().time() - session.last_seen
        user, conn, node = session.user_id, session.conn, self.store.node

        def gone(tx: Tx) -> None:
            last_seen = tx.now - silent
            tx.carry(tx.sessions.socket_gone(tx.now, conn, abrupt, last_seen, tx.call_of, node))

        try:
            await self._apply(gone, users=[user], sessions=[session.session_id], fire_due=False)
        except CallStateError as exc:  # Redis lost: its devices go when their node is dead
            log.warning("could not record that %s's socket closed: %s", user, exc.message)

    async def _release(self, session_id: str) -> None:
        """Forget a device; if its user is no longer reachable for its call, it leaves."""

        def release(tx: Tx) -> None:
            tx.carry(tx.sessions.release(tx.now, session_id, tx.call_of))

        try:
            await self._apply(release, sessions=[session_id], fire_due=False)
        except Exception:
            self.stats.internal_errors += 1
            log.exception("release of a session failed")

    # ------------------------------------------------------------------ handlers

    def _check_ids(self, ids: list[str]) -> None:
        for uid in ids:
            if not valid_user_id(uid):
                raise CallStateError(ErrorCode.PARAM_INVALID, f"invalid userId {uid!r:.40}")

    def _on_call(self, tx: Tx, session: Session, msg: p.Call):  # type: ignore[no-untyped-def]
        self._check_ids(msg.callees)
        call, notifies = tx.registry.start_call(
            tx.now,
            session.uid,
            msg.callees,
            msg.media_type,
            group_id=msg.group_id,
            timeout=msg.timeout,
            user_data=msg.user_data,
        )
        tx.sessions.took_call(session.session_id, call.call_id)
        tx.started(call)
        return {"call": snapshot(call, tx.sessions.profile)}, notifies

    def _on_answer(
        self, tx: Tx, session: Session, msg: Any, op: Callable[[float, str, str], list[Notify]]
    ):  # type: ignore[no-untyped-def]
        """accept / reject / ignore / hangup; the first device to answer a ringing call owns
        it, and the user's other devices stop ringing (``reason`` 7 or 8)."""
        user = session.user_id or ""
        self._own(tx, session, msg.call_id)
        call = tx.registry.calls.get(msg.call_id) if isinstance(msg.call_id, str) else None
        member = call.members.get(user) if call is not None else None
        ringing = member is not None and member.state is MemberState.RINGING
        notifies = op(tx.now, user, msg.call_id)
        direct: list[tuple[str, p.Message]] = []
        if ringing:
            accepted = op == tx.registry.accept
            direct = tx.sessions.answered(session.session_id, msg.call_id, accepted).send
        return {}, notifies, direct

    def _on_invite(self, tx: Tx, session: Session, msg: p.Invite) -> list[Notify]:
        self._check_ids(msg.callees)
        call_id = self._own(tx, session, msg.call_id)
        return tx.registry.invite(tx.now, session.uid, call_id, msg.callees, timeout=msg.timeout)

    def _on_join(self, tx: Tx, session: Session, msg: p.Join):  # type: ignore[no-untyped-def]
        call, notifies = tx.registry.join(
            tx.now,
            session.uid,
            msg.room_id,
            msg.media_type,
            group_id=msg.group_id,
            granted_groups=tx.sessions.devices[session.session_id].groups,
        )
        tx.sessions.took_call(session.session_id, call.call_id)
        return {"call": snapshot(call, tx.sessions.profile)}, notifies

    def _on_multi_device(self, tx: Tx, session: Session, msg: p.MultiDevice) -> list[Notify]:
        """From now on this session lets later multi-device logins of its user coexist."""
        tx.sessions.set_multi_device(session.session_id, msg.enable)
        return []

    def _on_self_info(self, tx: Tx, session: Session, msg: p.SelfInfo) -> list[Notify]:
        tx.sessions.set_profile(session.uid, msg.nickname, msg.avatar_url)
        return []

    async def _on_relay(self, session: Session, msg: p.Relay) -> None:
        """SDP and ICE between two members of one call, to the target's owning device."""

        def relay(tx: Tx) -> None:
            tx.sessions.device(session.session_id)  # not kicked, expired or released
            call = tx.registry.calls.get(msg.call_id)
            members = call.joined() if call is not None else []
            if session.uid not in members or msg.to not in members or msg.to == session.uid:
                raise CallStateError(
                    ErrorCode.REQUEST_REFUSED, "relay only between members of the same call"
                )
            self._own(tx, session, msg.call_id)
            self._check_relay(msg)
            forwarded = p.Relayed(
                call_id=msg.call_id, from_user=session.uid, kind=msg.kind, data=msg.data
            ).encode()
            tx.post(self.store.node, session.conn, p.Reply(id=msg.id))
            for dev in tx.sessions.targets(msg.to, msg.call_id):
                tx.send(dev.session_id, forwarded)

        # the sender too: a shared store loads only what is named, and its device is checked
        users = [session.uid, *([msg.to] if isinstance(msg.to, str) else [])]
        calls = [msg.call_id] if isinstance(msg.call_id, str) else []
        await self._apply(relay, users=users, calls=calls, fire_due=False)

    @staticmethod
    def _check_relay(msg: p.Relay) -> None:
        if msg.kind not in p.Relay.KINDS:
            raise CallStateError(ErrorCode.PARAM_INVALID, f"unknown relay kind {msg.kind!r:.20}")
        try:
            check_relay_data(msg.kind, msg.data)
        except ValueError as exc:
            raise CallStateError(ErrorCode.PARAM_INVALID, f"relay: {exc}") from None
        if len(p.json.dumps(msg.data)) > p.MAX_RELAY_BYTES:
            raise CallStateError(ErrorCode.PARAM_INVALID, "relay payload too large")

    # ------------------------------------------------------------------ introspection

    def online_users(self) -> list[str]:
        """User ids with at least one open session."""
        return self.sessions.online_users()

    def held_users(self) -> list[str]:
        """User ids with a session waiting for a resume."""
        return self.sessions.held_users()

    def user_info(self, user_id: str) -> dict[str, Any] | None:
        """What ``GET /users/{id}`` shows of a user this process's store holds."""
        return user_info(self.registry, self.sessions, user_id)

    def idle(self) -> bool:
        """True when no call, session, owner or profile is left (after every socket closed)."""
        return self.registry.is_idle() and self.sessions.is_idle() and not self._sockets
