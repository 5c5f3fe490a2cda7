"""Per-session output: a bounded queue of frames drained by the session's own writer task.

Nothing on the service awaits a client's socket on another's behalf: handlers, timers and
delivery only *post* encoded frames here (never blocking). The writer task sends them one at
a time. A client that cannot keep up -- its queue would exceed ``max_bytes``, or one frame
takes longer than ``send_timeout`` to hand to the kernel -- is reported once through
``on_stalled``; the server then disconnects it and treats it as a lost link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("callkit.signaling.sessionio")

__all__ = ["SessionWriter", "text_bytes"]


class _Socket(Protocol):
    async def send_str(self, data: str) -> None: ...

    async def ping(self, message: bytes = b"") -> None: ...


def text_bytes(text: str) -> int:
    """UTF-8 size of a frame (cheap for ASCII, which almost every frame is)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class SessionWriter:
    """The outgoing queue of one WebSocket and the task that drains it."""

    def __init__(
        self,
        ws: _Socket,
        *,
        max_bytes: int,
        send_timeout: float,
        on_stalled: Callable[[str], None],
        name: str = "session-writer",
    ) -> None:
        self._ws = ws
        self.max_bytes = max_bytes
        self.send_timeout = send_timeout
        self._on_stalled = on_stalled
        self._frames: deque[str | None] = deque()  # None: a ping
        #: bytes queued and not yet handed to the socket
        self.queued_bytes = 0
        self._ready = asyncio.Event()
        self.stalled = False
        self.closed = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name=name)

    def post(self, text: str) -> bool:
        """Queue ``text``; False (and the stall reported) when the queue would overflow."""
        if self.closed or self.stalled:
            return False
        size = text_bytes(text)
        if self.queued_bytes + size > self.max_bytes and self._frames:
            self._stall(f"outgoing queue over {self.max_bytes} bytes")
            return False
        self._frames.append(text)
        self.queued_bytes += size
        self._ready.set()
        return True

    def ping(self) -> None:
        """Queue a WebSocket ping (after the frames already queued)."""
        if not (self.closed or self.stalled):
            self._frames.append(None)
            self._ready.set()

    def _stall(self, why: str) -> None:
        if self.stalled:
            return
        self.stalled = True
        self._frames.clear()
        self.queued_bytes = 0
        self._on_stalled(why)

    async def _run(self) -> None:
        while not self.closed:
            if not self._frames:
                self._ready.clear()
                await self._ready.wait()
                continue
            text = self._frames[0]
            try:
                send = self._ws.ping() if text is None else self._ws.send_str(text)
                await asyncio.wait_for(send, self.send_timeout)
            except asyncio.TimeoutError:
                self._stall(f"a frame took over {self.send_timeout:g} s to send")
                return
            except (ConnectionError, RuntimeError) as exc:  # the socket went away
                log.debug("writer stops: %s", exc)
                self.closed = True
                return
            if self._frames and self._frames[0] is text:
                self._frames.popleft()
                self.queued_bytes -= 0 if text is None else text_bytes(text)

    async def flush(self, timeout: float) -> bool:
        """Wait (up to ``timeout``) until every queued frame was sent; True if it was."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._frames and not (self.closed or self.stalled or self._task.done()):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return not self._frames

    async def close(self) -> None:
        """Stop the writer; frames still queued are dropped."""
        self.closed = True
        self._frames.clear()
        self.queued_bytes = 0
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
