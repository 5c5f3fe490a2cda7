"""The engine's WebSocket link to the signaling service: requests with replies, pushes in order.

The link logs in as part of :meth:`SignalingClient.connect`, trying each of its URLs in turn
(the nodes of one service). When the socket drops without the service having closed it on
purpose, or the service is silent for ``HEARTBEAT_TIMEOUT`` s, the link reconnects with
backoff, moving to the next URL on every attempt (round robin), and logs in again with
``resume`` set to its session id, so the service re-attaches the call membership it held
meanwhile (see docs/protocol.md, "Resuming"). Requests made while it reconnects wait for it
(up to ``REQUEST_TIMEOUT``). It keeps trying, with backoff, for as long as it is not
closed: ``on_lost(reason)`` runs once per drop, ``on_grace_over()`` once the service's resume
grace is over (the call is gone there), ``on_resumed(reply_data)`` when it is back. It gives up
only when the service ends the session on purpose (kicked, expired, refused login); then
``on_closed(reason)`` runs, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import ssl as ssl_module
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from callkit.signaling import protocol as p
from callkit.signaling.codes import ErrorCode

from .connect_errors import describe_connect_error
from .errors import CallError

log = logging.getLogger("callkit.client")

REQUEST_TIMEOUT = 10.0
#: seconds between pings to the service
HEARTBEAT = 2.0
#: a service from which nothing (no frame, no pong) arrived for this long is a dropped link:
#: three missed pings, so a loaded service whose pongs are late is not dropped needlessly
HEARTBEAT_TIMEOUT = 6.0
#: how long to keep reconnecting when the service did not announce its resume grace
DEFAULT_RESUME_GRACE = 9.0
#: backoff between reconnect attempts: first delay, cap (each with up to 25 % jitter); the
#: link keeps trying at the cap for as long as it is not closed
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 2.0
#: close codes after which reconnecting is pointless: kicked / expired / policy (1008),
#: resumed on another socket (4001)
FINAL_CLOSE_CODES = frozenset({1008, 4001})


def signaling_urls(urls: str | Sequence[str]) -> list[str]:
    """The service URLs as a non-empty list of strings (one URL or a list of the nodes' URLs);
    raises ``CallError(-1202)`` saying what is wrong."""
    if isinstance(urls, str):
        urls = [urls]
    elif not isinstance(urls, (list, tuple)):
        raise CallError(
            ErrorCode.PARAM_INVALID,
            f"url must be a string or a list of strings, got {type(urls).__name__}",
        )
    if not urls:
        raise CallError(ErrorCode.PARAM_INVALID, "url list is empty: give at least one URL")
    for url in urls:
        if not isinstance(url, str) or not url:
            raise CallError(
                ErrorCode.PARAM_INVALID, f"every url must be a non-empty string, got {url!r:.60}"
            )
    return list(urls)


class SignalingClient:
    """One logical link to the service. ``on_push`` gets every server push, in order,
    synchronously; ``on_resumed(reply_data)`` runs after each successful re-login; and
    ``on_closed(reason)`` once when the link is lost for good (never after :meth:`close`).

    ``urls`` is one URL or the URLs of several nodes of one service: login tries them in order,
    and each reconnect attempt moves to the next one."""

    def __init__(
        self,
        urls: str | Sequence[str],
        on_push: Callable[[p.Message], None],
        on_closed: Callable[[str], None],
        *,
        on_resumed: Callable[[dict[str, Any]], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
        on_grace_over: Callable[[], None] | None = None,
        heartbeat: float = HEARTBEAT,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self.urls = signaling_urls(urls)
        self._at = 0  # index of the URL in use (or tried last)
        self._ssl = ssl
        self._on_push = on_push
        self._on_closed = on_closed
        self._on_resumed = on_resumed
        self._on_lost = on_lost
        self._on_grace_over = on_grace_over
        self._heartbeat = heartbeat
        self._heartbeat_timeout = heartbeat_timeout
        self._ids = itertools.count(1)
        self._pending: dict[
            int, tuple[asyncio.Future[dict[str, Any]], Callable[[dict[str, Any]], None] | None]
        ] = {}
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._login: dict[str, Any] | None = None
        #: the service's session id (sent back as ``resume``) and its announced grace
        self.session_id: str | None = None
        self.resume_grace = DEFAULT_RESUME_GRACE
        #: loop time of the last frame from the service (or of a TCP close)
        self._last_heard = 0.0
        self._up = False  # logged in on an open socket
        self._gone = False  # lost for good, or closed
        self._changed = asyncio.Event()  # set whenever _up or _gone changes
        self._final = False  # the service ended this session on purpose (kicked, ...)
        self._closing = False
        #: how many times the link came back (tests and tools read it)
        self.reconnects = 0

    @property
    def url(self) -> str:
        """The URL of the node in use (or tried last while reconnecting)."""
        return self.urls[self._at]

    @property
    def connected(self) -> bool:
        """Logged in on an open socket (False while reconnecting)."""
        return self._up and self._ws is not None and not self._ws.closed

    async def connect(self, **login: Any) -> dict[str, Any]:
        """Open the socket and log in with ``login`` (``Login`` fields), trying each URL in
        turn until one answers; returns the reply's data. Raises CallError(-1405) saying why
        when no URL can be reached, or the login's code when the service refuses it."""
        self._http = aiohttp.ClientSession()
        failures: list[str] = []
        try:
            for at in range(len(self.urls)):
                self._at = at
                try:
                    ws = await self._open()
                    try:
                        data = await self._log_in(ws, dict(login))
                    except BaseException:
                        await ws.close()
                        raise
                    break
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                    failures.append(describe_connect_error(self.url, exc))
                except CallError as exc:  # a node that dies during login: try the next one
                    if exc.code != ErrorCode.SIGNALING_SEND_FAIL or at == len(self.urls) - 1:
                        raise
                    failures.append(f"{self.url}: {exc.message}")
            else:
                raise CallError(ErrorCode.SIGNALING_UNREACHABLE, "; ".join(failures))
        except BaseException:
            await self._http.close()
            self._http = None
            raise
        if failures:
            log.info("logged in at %s after: %s", self.url, "; ".join(failures))
        self._login = dict(login)
        self._ws = ws
        self._set_up(True)
        self._reader = asyncio.create_task(self._run(), name="callkit-signaling-reader")
        return data

    def update_login(self, **fields: Any) -> None:
        """Change ``Login`` fields sent when the link logs in again (resume)."""
        if self._login is not None:
            self._login.update(fields)

    async def _open(self) -> aiohttp.ClientWebSocketResponse:
        assert self._http is not None
        return await asyncio.wait_for(
            self._http.ws_connect(
                self.url,
                autoping=False,  # _read answers pings and sends its own (see _read)
                ssl=self._ssl if self._ssl is not None else True,
                timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
            ),
            REQUEST_TIMEOUT / 2,
        )

    async def _log_in(
        self, ws: aiohttp.ClientWebSocketResponse, login: dict[str, Any]
    ) -> dict[str, Any]:
        """Send a Login on ``ws`` and read until its reply; pushes before it are handled."""
        request_id = next(self._ids)
        if self.session_id is not None:
            login["resume"] = self.session_id
        await ws.send_str(p.Login(id=request_id, **login).encode())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REQUEST_TIMEOUT
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise CallError(
                    ErrorCode.SIGNALING_SEND_FAIL, f"no reply to login within {REQUEST_TIMEOUT} s"
                )
            try:
                msg = await ws.receive(timeout=left)
            except asyncio.TimeoutError:
                raise CallError(
                    ErrorCode.SIGNALING_SEND_FAIL, f"no reply to login within {REQUEST_TIMEOUT} s"
                ) from None
            if msg.type is aiohttp.WSMsgType.PING:
                await ws.pong(msg.data)
                continue
            if msg.type is not aiohttp.WSMsgType.TEXT:
                if msg.type is aiohttp.WSMsgType.PONG:
                    continue
                raise CallError(
                    ErrorCode.SIGNALING_SEND_FAIL,
                    f"connection closed during login ({ws.close_code})",
                )
            self._last_heard = loop.time()
            try:
                message = p.decode_server(msg.data)
            except p.ProtocolError as exc:
                log.warning("ignoring bad frame from server: %s", exc.message)
                continue
            if isinstance(message, (p.Reply, p.ErrorReply)) and message.id == request_id:
                if isinstance(message, p.ErrorReply):
                    raise CallError(message.code, message.message)
                self.session_id = message.data.get("sessionId") or None
                grace = message.data.get("resumeGrace")
                if isinstance(grace, (int, float)) and not isinstance(grace, bool):
                    self.resume_grace = max(0.0, float(grace))
                return message.data
            self._handle(message)

    def _set_up(self, up: bool) -> None:
        self._up = up
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_up(self, timeout: float) -> None:
        """Wait until the link is logged in again (or gone); raises CallError(-1401)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._up:
            left = deadline - loop.time()
            if self._gone or self._closing or left <= 0:
                raise CallError(ErrorCode.SIGNALING_SEND_FAIL, "not connected to signaling")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def request(
        self,
        message_type: type[p.Request],
        *,
        on_reply: Callable[[dict[str, Any]], None] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Send a request and wait for its reply's ``data``; raises CallError with the
        server's code, or -1401 when the link is down for longer than ``REQUEST_TIMEOUT``.
        ``on_reply`` runs in the reader, before any later push is handled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REQUEST_TIMEOUT
        if not self._up:
            await self._wait_up(REQUEST_TIMEOUT)
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[request_id] = (future, on_reply)
        try:
            assert self._ws is not None
            await self._ws.send_str(message_type(id=request_id, **fields).encode())
            return await asyncio.wait_for(asyncio.shield(future), max(0.1, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise CallError(
                ErrorCode.SIGNALING_SEND_FAIL,
                f"no reply to {message_type.TYPE} within {REQUEST_TIMEOUT} s",
            ) from None
        except (ConnectionError, RuntimeError) as exc:
            raise CallError(ErrorCode.SIGNALING_SEND_FAIL, f"send failed: {exc}") from None
        finally:
            self._pending.pop(request_id, None)

    # ------------------------------------------------------------------ reading

    async def _run(self) -> None:
        """Read pushes; on a dropped socket reconnect and resume; report a final loss."""
        reason = "connection closed"
        try:
            while True:
                reason, retry = await self._read()
                self._set_up(False)
                self._fail_pending(f"signaling lost: {reason}")
                if self._closing or self._final or not retry:
                    break
                log.info("signaling link lost (%s); reconnecting", reason)
                self._hook(self._on_lost, reason)
                failure = await self._reconnect()
                if failure is None:
                    continue
                reason = f"{reason}; {failure}"
                break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # pragma: no cover - defensive: the reader must not die silently
            log.exception("signaling reader failed")
            reason = f"reader failed: {exc}"
        finally:
            self._gone = True
            self._set_up(False)
            self._fail_pending(f"signaling lost: {reason}")
            if not self._closing:
                self._on_closed(reason)

    async def _read(self) -> tuple[str, bool]:
        """Read the current socket until it ends; returns (why, worth reconnecting).

        It pings the service every ``heartbeat`` s of silence and drops the link when nothing
        (no frame, no pong) came for ``heartbeat_timeout`` s: aiohttp's own heartbeat gives a
        pong only heartbeat/2, which a busy service misses."""
        ws = self._ws
        assert ws is not None
        loop = asyncio.get_running_loop()
        self._last_heard = loop.time()
        silent = False
        while True:
            now = loop.time()
            if now - self._last_heard >= self._heartbeat_timeout:
                silent = True
                # a receive timeout set code 1006, so close() does not wait for the reply
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(ws.close(), 1.0)
                break
            quiet_for = now - self._last_heard
            wait = self._heartbeat - quiet_for % self._heartbeat
            try:
                msg = await ws.receive(timeout=max(0.01, wait))
            except asyncio.TimeoutError:
                if loop.time() - self._last_heard < self._heartbeat_timeout:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await ws.ping()
                continue
            if msg.type is aiohttp.WSMsgType.TEXT:
                self._last_heard = loop.time()
                try:
                    message = p.decode_server(msg.data)
                except p.ProtocolError as exc:
                    log.warning("ignoring bad frame from server: %s", exc.message)
                    continue
                self._handle(message)
            elif msg.type is aiohttp.WSMsgType.PING:
                self._last_heard = loop.time()
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.pong(msg.data)
            elif msg.type is aiohttp.WSMsgType.PONG:
                self._last_heard = loop.time()
            elif msg.type is aiohttp.WSMsgType.BINARY:
                continue
            else:
                break
        if silent:
            return "no heartbeat from the service", True
        code = ws.close_code
        self._last_heard = loop.time()  # a close or reset: the path worked until now
        return f"closed ({code})", code not in FINAL_CLOSE_CODES

    def _hook(self, fn: Callable[..., None] | None, *args: Any) -> None:
        if fn is not None:
            try:
                fn(*args)
            except Exception:
                log.exception("signaling hook failed")

    async def _reconnect(self) -> str | None:
        """Reconnect with backoff (for as long as the link is not closed) and resume, each
        attempt at the next URL (round robin); None on success, else why it gave up (a refused
        login). Once the service's resume grace is over, ``on_grace_over`` runs (the service
        has forgotten our call by then)."""
        loop = asyncio.get_running_loop()
        # the service holds our session resume_grace s after it last heard from us; say so a
        # little earlier so the local call never outlives the service's view of it
        grace_deadline = self._last_heard + max(1.0, self.resume_grace - 0.5)
        grace_over = False
        delay = BACKOFF_FIRST
        attempts = 0
        old = self._ws
        if old is not None and not old.closed:
            await old.close()
        while not self._closing:
            wait = delay * (1 + 0.25 * random.random())
            if not grace_over:
                wait = min(wait, max(0.0, grace_deadline - loop.time()))
            await asyncio.sleep(wait)
            if not grace_over and loop.time() >= grace_deadline:
                grace_over = True
                self._hook(self._on_grace_over)
            delay = min(delay * 2, BACKOFF_MAX)
            attempts += 1
            if self._closing:
                break
            self._at = (self._at + 1) % len(self.urls)
            ws: aiohttp.ClientWebSocketResponse | None = None
            try:
                ws = await self._open()
                assert self._login is not None
                data = await self._log_in(ws, dict(self._login))
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                log.debug("reconnect attempt %d failed: %r", attempts, exc)
                if ws is not None:
                    await ws.close()
                continue
            except CallError as exc:
                if ws is not None:
                    await ws.close()
                if exc.code == ErrorCode.SIGNALING_SEND_FAIL:
                    continue
                return f"login refused on reconnect: {exc.message} (code {exc.code})"
            self._ws = ws
            self.reconnects += 1
            self._set_up(True)
            log.info(
                "signaling link back at %s after %d attempt(s); resumed=%s",
                self.url,
                attempts,
                data.get("resumed"),
            )
            self._hook(self._on_resumed, data)
            return None
        return "closed while reconnecting"

    def _fail_pending(self, reason: str) -> None:
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(CallError(ErrorCode.SIGNALING_SEND_FAIL, reason))

    def _handle(self, message: p.Message) -> None:
        if isinstance(message, (p.Reply, p.ErrorReply)):
            entry = self._pending.get(message.id) if message.id is not None else None
            if entry is None:
                if isinstance(message, p.ErrorReply):
                    log.warning("server error %s: %s", message.code, message.message)
                return
            future, on_reply = entry
            if future.done():
                return
            if isinstance(message, p.ErrorReply):
                future.set_exception(CallError(message.code, message.message))
                return
            if on_reply is not None:
                try:
                    on_reply(message.data)
                except Exception:
                    log.exception("reply hook failed")
            future.set_result(message.data)
            return
        if isinstance(message, (p.Kicked, p.SigExpired)):
            self._final = True  # the service closes this session: do not come back
        try:
            self._on_push(message)
        except Exception:
            log.exception("handling %s failed", type(message).__name__)

    async def close(self) -> None:
        """Close the socket, stop reconnecting and wait for the reader; idempotent."""
        self._closing = True
        self._changed.set()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            if not self._reader.done():
                self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        self._gone = True
        self._up = False
        self._fail_pending("signaling closed")
        if self._http is not None:
            await self._http.close()
            self._http = None
