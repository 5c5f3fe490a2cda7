"""Connection limits that hold below the HTTP layer, and logging that cannot flood.

- :class:`ConnectionCounter` (pure): TCP connections in total and per client IP, counted from
  ``accept`` (before any HTTP or login), so idle half-open sockets count against the caps.
- :class:`GuardedSite`: an aiohttp TCP site whose every connection goes through the counter
  and a *handshake deadline*: a connection that is not a WebSocket and has no request in
  progress is closed ``handshake_timeout`` seconds after it opened or after its last response
  (slowloris: headers dribbled forever, or idle keep-alive sockets held open).
- :func:`ensure_open_files`: raise the soft RLIMIT_NOFILE to what ``max_connections`` needs,
  or say what to raise.
- :class:`RepeatFilter`: a logging filter letting one record per message per interval through,
  e.g. asyncio's "socket.accept() out of system resource" storm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("callkit.signaling.limits")

__all__ = [
    "ConnectionCounter",
    "FrameRate",
    "GuardedSite",
    "RepeatFilter",
    "ensure_open_files",
    "open_files_needed",
]

#: descriptors the process needs besides client sockets (listeners, logs, database, DNS ...)
FD_HEADROOM = 64
_REFUSAL_BODY = b'{"error":"too many connections"}'
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(_REFUSAL_BODY)
) + _REFUSAL_BODY


class ConnectionCounter:
    """Open connections in total and per client address; pure bookkeeping."""

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self.per_ip: dict[str, int] = {}

    def admit(self, ip: str) -> str | None:
        """Count a new connection from ``ip``; None if admitted, else why it is refused."""
        if self.total >= self.max_total:
            return f"more than {self.max_total} connections"
        if self.per_ip.get(ip, 0) >= self.max_per_ip:
            return f"more than {self.max_per_ip} connections from {ip}"
        self.total += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        return None

    def release(self, ip: str) -> None:
        """Forget one admitted connection from ``ip``."""
        self.total -= 1
        left = self.per_ip.get(ip, 0) - 1
        if left > 0:
            self.per_ip[ip] = left
        else:
            self.per_ip.pop(ip, None)


class RepeatFilter(logging.Filter):
    """Let a given message through at most once per ``interval`` seconds; the next one that
    passes says how many were suppressed in between."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = f"{record.name}:{record.msg}"
        now = self._clock()
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self.interval:
            self._last[key] = (seen[0], seen[1] + 1)
            return False
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} ({seen[1]} similar messages suppressed)"
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = (now, 0)
        return True


def open_files_needed(max_connections: int) -> int:
    """File descriptors a service holding ``max_connections`` client sockets needs."""
    return max_connections + FD_HEADROOM


def ensure_open_files(max_connections: int) -> str | None:
    """Raise the soft RLIMIT_NOFILE to what ``max_connections`` needs (up to the hard limit).

    Returns None when the limit suffices (now), else an error message saying what to raise.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    needed = open_files_needed(max_connections)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    if hard != resource.RLIM_INFINITY and hard < needed:
        return (
            f"max connections {max_connections} need {needed} open files, but the hard limit "
            f"is {hard}: raise it (ulimit -Hn {needed}, or LimitNOFILE= in the systemd unit) "
            f"or lower the maximum number of connections"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    log.info("raised the open-file limit from %d to %d", soft, needed)
    return None


class _Guarded(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol: counting, refusal and the deadline."""

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self._guard = guard
        self._inner = inner
        self._ip: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.transport: Any = None
        self.upgraded = False

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        why = self._guard.counter.admit(ip)
        if why is not None:
            self._guard.refused(why)
            transport.write(_REFUSAL)  # goes out at once: a fresh socket's buffer is empty
            transport.close()
            return
        self._ip = ip
        self.transport = transport
        self._guard.live[transport] = self
        self.arm()
        self._inner.connection_made(transport)

    def arm(self) -> None:
        """(Re)start the deadline: the connection must be upgraded or busy by then."""
        self.disarm()
        if self.upgraded:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._guard.handshake_timeout, self._expired)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._guard.stats["handshake_timeouts"] += 1
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._ip is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._ip is not None else None

    def pause_writing(self) -> None:
        if self._ip is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._ip is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ip is None:
            return
        self.disarm()
        self._guard.live.pop(self.transport, None)
        self._guard.counter.release(self._ip)
        self._ip = None
        self._inner.connection_lost(exc)


class ConnectionGuard:
    """Every TCP connection of a :class:`GuardedSite`: caps, deadline, refusal logging."""

    def __init__(
        self,
        max_total: int,
        max_per_ip: int,
        handshake_timeout: float,
        *,
        on_refused: Callable[[], None] | None = None,
        log_interval: float = 10.0,
    ) -> None:
        self._on_refused = on_refused
        self.counter = ConnectionCounter(max_total, max_per_ip)
        self.handshake_timeout = handshake_timeout
        self.live: dict[Any, _Guarded] = {}
        self.stats = {"refused": 0, "handshake_timeouts": 0}
        self._log_filter = RepeatFilter(log_interval)

    def factory(self, inner_factory: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` wrapping aiohttp's."""
        return lambda: _Guarded(self, inner_factory())

    def refused(self, why: str) -> None:
        """Count a refused connection; log it at most once per interval."""
        self.stats["refused"] += 1
        if self._on_refused is not None:
            self._on_refused()
        record = log.makeRecord(
            log.name, logging.WARNING, __file__, 0, "refusing connections: %s", (why,), None
        )
        if self._log_filter.filter(record):
            log.handle(record)

    def busy(self, transport: Any, busy: bool) -> None:
        """A request started (``busy``) or ended on ``transport``: stop or restart the clock."""
        conn = self.live.get(transport)
        if conn is not None:
            if busy:
                conn.disarm()
            else:
                conn.arm()

    def upgraded(self, transport: Any) -> None:
        """``transport`` is a WebSocket now: the WebSocket's own timers take over."""
        conn = self.live.get(transport)
        if conn is not None:
            conn.upgraded = True
            conn.disarm()


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` whose connections pass through a :class:`ConnectionGuard`."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, guard: ConnectionGuard, **kw: Any
    ) -> None:
        super().__init__(runner, host, port, **kw)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.guard.factory(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


class FrameRate:
    """One sender's frame budget: a token bucket checked before a frame is parsed.

    :meth:`take` says what to do with the next frame: ``"ok"`` (within the rate), ``"drop"``
    (over it: drop unread), ``"notify"`` (drop, and tell the sender -- at most once per
    second), or ``"flood"`` (more than ``flood_drops`` frames dropped within ``window``
    seconds: disconnect the sender). Pure: time is passed in.
    """

    def __init__(
        self, rate: float, burst: float, now: float, *, flood_drops: int, window: float = 10.0
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.flood_drops = flood_drops
        self.window = window
        self.tokens = burst
        self._last = now
        self._window_start = now
        self.drops = 0  # frames dropped in the current window
        self._notified = -1e18

    def take(self, now: float) -> str:
        """Account for one frame arriving at ``now``; returns what to do with it."""
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return "ok"
        if now - self._window_start > self.window:
            self._window_start, self.drops = now, 0
        self.drops += 1
        if self.drops > self.flood_drops:
            return "flood"
        if now - self._notified >= 1.0:
            self._notified = now
            return "notify"
        return "drop"
