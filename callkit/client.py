"""The engine's WebSocket link to the signaling service: requests with replies, pushes in order."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, Callable

import aiohttp

from signaling import protocol as p
from signaling.codes import ErrorCode

from .errors import CallError

log = logging.getLogger("callkit.client")

REQUEST_TIMEOUT = 10.0


class SignalingClient:
    """One WebSocket connection. ``on_push`` gets every server push, in order, synchronously."""

    def __init__(self, url: str, on_push: Callable[[p.Message], None],
                 on_closed: Callable[[str], None]) -> None:
        self.url = url
        self._on_push = on_push
        self._on_closed = on_closed
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[dict[str, Any]],
                                       Callable[[dict[str, Any]], None] | None]] = {}
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def connect(self) -> None:
        """Open the socket; raises CallError(-1201) when the service cannot be reached."""
        self._http = aiohttp.ClientSession()
        try:
            self._ws = await self._http.ws_connect(self.url, heartbeat=4.0, timeout=aiohttp.
                                                   ClientWSTimeout(ws_close=2.0))
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            await self._http.close()
            self._http = None
            raise CallError(ErrorCode.INIT_FAIL, f"cannot reach signaling at {self.url}: "
                                                 f"{exc}") from None
        self._reader = asyncio.create_task(self._read(), name="callkit-signaling-reader")

    async def request(self, message_type: type[p.Request], *,
                      on_reply: Callable[[dict[str, Any]], None] | None = None,
                      **fields: Any) -> dict[str, Any]:
        """Send a request and wait for its reply's ``data``; raises CallError with the
        server's code. ``on_reply`` runs in the reader, before any later push is handled."""
        if not self.connected:
            raise CallError(ErrorCode.SIGNALING_SEND_FAIL, "not connected to signaling")
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (future, on_reply)
        try:
            assert self._ws is not None
            await self._ws.send_str(message_type(id=request_id, **fields).encode())
            return await asyncio.wait_for(asyncio.shield(future), REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            raise CallError(ErrorCode.SIGNALING_SEND_FAIL,
                            f"no reply to {message_type.TYPE} within {REQUEST_TIMEOUT} s") from None
        except (ConnectionError, RuntimeError) as exc:
            raise CallError(ErrorCode.SIGNALING_SEND_FAIL, f"send failed: {exc}") from None
        finally:
            self._pending.pop(request_id, None)

    async def _read(self) -> None:
        assert self._ws is not None
        reason = "connection closed"
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    message = p.decode_server(msg.data)
                except p.ProtocolError as exc:
                    log.warning("ignoring bad frame from server: %s", exc.message)
                    continue
                self._handle(message)
            if self._ws.close_code is not None:
                reason = f"connection closed ({self._ws.close_code})"
        except Exception as exc:  # pragma: no cover - defensive: the reader must not die silently
            log.exception("signaling reader failed")
            reason = f"reader failed: {exc}"
        finally:
            for future, _ in self._pending.values():
                if not future.done():
                    future.set_exception(CallError(ErrorCode.SIGNALING_SEND_FAIL, reason))
            if not self._closing:
                self._on_closed(reason)

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
        try:
            self._on_push(message)
        except Exception:
            log.exception("handling %s failed", type(message).__name__)

    async def close(self) -> None:
        """Close the socket and wait for the reader; idempotent."""
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
            self._reader = None
        if self._http is not None:
            await self._http.close()
            self._http = None
