"""The aiohttp signaling service: a thin adapter around the pure CallRegistry.

Only the WebSocket handler reads from a socket; any task may send. Every operation is a
synchronous call into :class:`~signaling.callstate.CallRegistry` with ``now`` from the loop's
monotonic clock; the notifications it returns are delivered in order to the users' sessions.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import WSCloseCode, WSMsgType, web

from . import protocol as p
from .callstate import CallRegistry, CallStateError, Notify
from .codes import ErrorCode
from .usersig import UserSigError, verify_user_sig

log = logging.getLogger("signaling.server")

USER_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def valid_user_id(user_id: object) -> bool:
    """TUICallKit user ids: letters, digits, '-' and '_', 1 to 32 bytes."""
    return isinstance(user_id, str) and USER_ID_RE.match(user_id) is not None


@dataclass
class ServerConfig:
    """Tunables of the service."""

    #: seconds between WebSocket pings; a peer that misses a pong is dropped (~1.5x this)
    heartbeat: float = 4.0
    #: an unauthenticated socket is closed after this many seconds
    login_timeout: float = 5.0
    #: token bucket per connection: sustained messages per second and burst size
    rate_per_s: float = 100.0
    rate_burst: float = 200.0
    #: frames larger than this get an error reply; much larger ones close the socket
    max_message_bytes: int = p.MAX_MESSAGE_BYTES
    #: open sessions allowed per user (with multi-device on)
    max_sessions_per_user: int = 4
    #: wall clock for UserSig expiry (injectable for tests)
    wall_clock: Callable[[], float] = time.time


@dataclass(eq=False)
class Session:
    """One authenticated WebSocket connection."""

    ws: web.WebSocketResponse
    user_id: str | None = None
    multi_device: bool = False
    sig_expires_at: float = 0.0
    nickname: str = ""
    avatar_url: str = ""
    tokens: float = 0.0
    last_refill: float = 0.0
    expiry_handle: asyncio.TimerHandle | None = None
    closed: bool = False

    async def send(self, message: p.Message) -> None:
        if self.closed or self.ws.closed:
            return
        try:
            await self.ws.send_str(message.encode())
        except (ConnectionError, RuntimeError) as exc:  # peer went away mid-send
            log.debug("send to %s failed: %s", self.user_id, exc)


@dataclass
class Stats:
    """Counters a test or an operator can read."""

    connections: int = 0
    messages: int = 0
    errors_sent: int = 0
    internal_errors: int = 0
    users: dict[str, int] = field(default_factory=dict)


class SignalingServer:
    """The signaling service: ``url = await start(host, port)``, then ``await stop()``."""

    def __init__(self, sdk_app_id: int, secret_key: str, config: ServerConfig | None = None,
                 registry: CallRegistry | None = None) -> None:
        self.sdk_app_id = sdk_app_id
        self.secret_key = secret_key
        self.config = config or ServerConfig()
        self.registry = registry or CallRegistry()
        self.stats = Stats()
        self._online: dict[str, list[Session]] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.url: str | None = None
        self.port: int | None = None
        self._handlers: dict[type[p.Request], Callable[[Session, Any, float], Any]] = {
            p.Call: self._on_call,
            p.Accept: lambda s, m, now: self.registry.accept(now, s.user_id, m.call_id),
            p.Reject: lambda s, m, now: self.registry.reject(now, s.user_id, m.call_id),
            p.Ignore: lambda s, m, now: self.registry.ignore(now, s.user_id, m.call_id),
            p.Hangup: lambda s, m, now: self.registry.hangup(now, s.user_id, m.call_id),
            p.Invite: self._on_invite,
            p.Join: self._on_join,
            p.SwitchMedia: lambda s, m, now: self.registry.switch_media_type(
                now, s.user_id, m.call_id, m.media_type),
            p.Device: lambda s, m, now: self.registry.set_device(
                now, s.user_id, m.call_id, audio=m.audio, video=m.video),
            p.SelfInfo: self._on_self_info,
            p.Ping: lambda s, m, now: [],
        }

    # ------------------------------------------------------------------ lifecycle

    def create_app(self) -> web.Application:
        """The aiohttp application (``/ws`` and a small REST surface)."""
        app = web.Application()
        app.router.add_get("/ws", self._ws_handler)
        app.router.add_get("/health", self._health)
        app.router.add_get("/calls", self._calls)
        app.cleanup_ctx.append(self._background)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start listening; returns the WebSocket URL (``ws://host:port/ws``)."""
        self._runner = web.AppRunner(self.create_app(), handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"ws://{shown}:{self.port}/ws"
        log.info("signaling listening on %s", self.url)
        return self.url

    async def stop(self) -> None:
        """Close every socket and stop listening; idempotent."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _background(self, app: web.Application):  # type: ignore[no-untyped-def]
        self._timer_task = asyncio.create_task(self._timer_loop(), name="signaling-timers")
        yield
        self._timer_task.cancel()
        try:
            await self._timer_task
        except asyncio.CancelledError:
            pass

    async def _on_shutdown(self, app: web.Application) -> None:
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")

    async def _timer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            deadline = self.registry.get_timer()
            self._wake.clear()
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            except asyncio.TimeoutError:
                pass
            try:
                await self._deliver(self.registry.handle_timer(loop.time()))
            except Exception:  # never let the timer die
                self.stats.internal_errors += 1
                log.exception("timer handling failed")

    # ------------------------------------------------------------------ REST

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "online": len(self._online),
                                  "calls": len(self.registry.calls)})

    async def _calls(self, request: web.Request) -> web.Response:
        return web.json_response([c.snapshot() for c in self.registry.calls.values()])

    # ------------------------------------------------------------------ websocket

    async def _ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=self.config.heartbeat,
                                   max_msg_size=self.config.max_message_bytes * 16)
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        session = Session(ws=ws, tokens=self.config.rate_burst, last_refill=loop.time())
        self._sockets.add(ws)
        self.stats.connections += 1
        login_timer = loop.call_later(self.config.login_timeout, self._login_timeout, session)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_text(session, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self._send_error(session, None, ErrorCode.PROTOCOL_ERROR,
                                           "binary frames are not supported")
                if session.user_id is not None:
                    login_timer.cancel()
        finally:
            login_timer.cancel()
            self._sockets.discard(ws)
            await self._drop_session(session)
        return ws

    def _login_timeout(self, session: Session) -> None:
        if session.user_id is None and not session.ws.closed:
            log.info("closing a socket that did not log in in time")
            asyncio.ensure_future(session.ws.close(code=WSCloseCode.POLICY_VIOLATION,
                                                   message=b"login timeout"))

    def _allow(self, session: Session) -> bool:
        now = asyncio.get_running_loop().time()
        cfg = self.config
        session.tokens = min(cfg.rate_burst,
                             session.tokens + (now - session.last_refill) * cfg.rate_per_s)
        session.last_refill = now
        if session.tokens < 1.0:
            return False
        session.tokens -= 1.0
        return True

    async def _on_text(self, session: Session, text: str) -> None:
        self.stats.messages += 1
        if not self._allow(session):
            await self._send_error(session, None, ErrorCode.RATE_LIMITED, "too many messages")
            return
        try:
            msg = p.decode(text)
        except p.ProtocolError as exc:
            await self._send_error(session, exc.request_id, exc.code, exc.message)
            return
        assert isinstance(msg, p.Request)
        try:
            if isinstance(msg, p.Login):
                await self._on_login(session, msg)
                return
            if session.user_id is None:
                raise CallStateError(ErrorCode.INIT_FAIL, "log in first")
            if isinstance(msg, p.Relay):
                await self._on_relay(session, msg)
                return
            now = asyncio.get_running_loop().time()
            # expire due ring timers first, so accept-vs-timeout is decided by the clock
            await self._deliver(self.registry.handle_timer(now))
            result = self._handlers[type(msg)](session, msg, now)
            data, notifies = result if isinstance(result, tuple) else ({}, result)
            await session.send(p.Reply(id=msg.id, data=data))
            await self._deliver(notifies)
            self._wake.set()
        except CallStateError as exc:
            await self._send_error(session, msg.id, exc.code, exc.message)
        except Exception:
            self.stats.internal_errors += 1
            log.exception("internal error handling %s", type(msg).__name__)
            await self._send_error(session, msg.id, ErrorCode.INTERNAL, "internal error")

    async def _send_error(self, session: Session, request_id: int | None, code: int,
                          message: str) -> None:
        self.stats.errors_sent += 1
        await session.send(p.ErrorReply(id=request_id, code=int(code), message=message))

    async def _deliver(self, notifies: list[Notify]) -> None:
        """Send each notification to every online session of its user, in order."""
        for n in notifies:
            call = self.registry.calls.get(n.call_id)
            event = p.Event(event=n.event, call_id=n.call_id, payload=n.payload,
                            call=call.snapshot() if call is not None else None)
            for session in list(self._online.get(n.user_id, ())):
                await session.send(event)

    # ------------------------------------------------------------------ handlers

    async def _on_login(self, session: Session, msg: p.Login) -> None:
        if session.user_id is not None:
            raise CallStateError(ErrorCode.REQUEST_REPEATED, "already logged in")
        if not valid_user_id(msg.user_id):
            raise CallStateError(ErrorCode.INIT_FAIL, "invalid userId")
        try:
            info = verify_user_sig(msg.sdk_app_id if msg.sdk_app_id == self.sdk_app_id else -1,
                                   self.secret_key, msg.user_id, msg.user_sig,
                                   now=self.config.wall_clock())
        except UserSigError as exc:
            raise CallStateError(ErrorCode.INIT_FAIL, f"login refused: {exc.reason}") from None
        if msg.sdk_app_id != self.sdk_app_id:
            raise CallStateError(ErrorCode.INIT_FAIL, "login refused: wrong sdkAppId")
        existing = self._online.get(msg.user_id, [])
        if msg.multi_device and existing and all(s.multi_device for s in existing):
            if len(existing) >= self.config.max_sessions_per_user:
                raise CallStateError(ErrorCode.REQUEST_REFUSED, "too many sessions for this user")
        else:
            for old in list(existing):
                await self._kick(old)
        session.user_id = msg.user_id
        session.multi_device = msg.multi_device
        session.sig_expires_at = info.expires_at
        self._online.setdefault(msg.user_id, []).append(session)
        delay = max(0.0, info.expires_at - self.config.wall_clock())
        session.expiry_handle = asyncio.get_running_loop().call_later(
            delay, lambda: asyncio.ensure_future(self._expire(session)))
        await session.send(p.Reply(id=msg.id, data={"userId": msg.user_id,
                                                     "sigExpiresAt": info.expires_at}))

    async def _kick(self, session: Session) -> None:
        await session.send(p.Kicked())
        await self._drop_session(session)
        await session.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"kicked")

    async def _expire(self, session: Session) -> None:
        if session.closed:
            return
        await session.send(p.SigExpired())
        await self._drop_session(session)
        await session.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"usersig expired")

    async def _drop_session(self, session: Session) -> None:
        """Forget a session; if it was its user's last one, the user leaves any call."""
        if session.closed:
            return
        session.closed = True
        if session.expiry_handle is not None:
            session.expiry_handle.cancel()
        user = session.user_id
        if user is None:
            return
        sessions = self._online.get(user, [])
        if session in sessions:
            sessions.remove(session)
        if sessions:
            return
        self._online.pop(user, None)
        try:
            notifies = self.registry.disconnect(asyncio.get_running_loop().time(), user)
        except Exception:
            self.stats.internal_errors += 1
            log.exception("disconnect of %s failed", user)
            return
        await self._deliver(notifies)
        self._wake.set()

    def _check_ids(self, ids: list[str]) -> None:
        for uid in ids:
            if not valid_user_id(uid):
                raise CallStateError(ErrorCode.PARAM_INVALID, f"invalid userId {uid!r:.40}")

    def _on_call(self, session: Session, msg: p.Call, now: float):  # type: ignore[no-untyped-def]
        self._check_ids(msg.callees)
        call, notifies = self.registry.start_call(
            now, session.user_id, msg.callees, msg.media_type, group_id=msg.group_id,
            timeout=msg.timeout, user_data=msg.user_data)
        return {"call": call.snapshot()}, notifies

    def _on_invite(self, session: Session, msg: p.Invite, now: float) -> list[Notify]:
        self._check_ids(msg.callees)
        return self.registry.invite(now, session.user_id, msg.call_id, msg.callees,
                                    timeout=msg.timeout)

    def _on_join(self, session: Session, msg: p.Join, now: float):  # type: ignore[no-untyped-def]
        call, notifies = self.registry.join(now, session.user_id, msg.room_id, msg.media_type)
        return {"call": call.snapshot()}, notifies

    def _on_self_info(self, session: Session, msg: p.SelfInfo, now: float) -> list[Notify]:
        session.nickname, session.avatar_url = msg.nickname, msg.avatar_url
        return []

    async def _on_relay(self, session: Session, msg: p.Relay) -> None:
        call = self.registry.calls.get(msg.call_id)
        members = call.joined() if call is not None else []
        if session.user_id not in members or msg.to not in members or msg.to == session.user_id:
            raise CallStateError(ErrorCode.REQUEST_REFUSED,
                                 "relay only between members of the same call")
        if msg.kind not in p.Relay.KINDS:
            raise CallStateError(ErrorCode.PARAM_INVALID, f"unknown relay kind {msg.kind!r:.20}")
        if len(p.json.dumps(msg.data)) > p.MAX_RELAY_BYTES:
            raise CallStateError(ErrorCode.PARAM_INVALID, "relay payload too large")
        forwarded = p.Relayed(call_id=msg.call_id, from_user=session.user_id, kind=msg.kind,
                              data=msg.data)
        await session.send(p.Reply(id=msg.id))
        for target in list(self._online.get(msg.to, ())):
            await target.send(forwarded)

    # ------------------------------------------------------------------ introspection

    def online_users(self) -> list[str]:
        """User ids with at least one open session."""
        return list(self._online)
