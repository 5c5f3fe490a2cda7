"""The record writer: takes record changes from the server without ever making it wait.

:meth:`RecordWriter.submit` appends to an in-memory queue and returns; one task drains the
queue in batches (one database transaction per batch, so a burst of call setups costs one
commit) and wakes the webhook deliverer. A failing database is retried with backoff while
calls go on; the queue is bounded (``max_pending``) and an overflow is logged at ERROR and
counted. Every ``heartbeat`` seconds this server's live records are marked as seen, so a
crash loses at most that much of a live call's duration; records a dead server left live are
closed as ``Interrupt`` (:func:`~.tracker.interrupt`): at start (SQLite), or once nobody
touched them for three heartbeats (PostgreSQL, shared by several servers).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable

from .store import RecordStore
from .tracker import Write, interrupt

__all__ = ["RecordWriter"]

log = logging.getLogger("callkit.signaling.records")


def wall_ms() -> int:
    """Unix time in milliseconds."""
    return int(time.time() * 1000)


class RecordWriter:
    """Queue -> batched transactions into a :class:`~.store.RecordStore`."""

    def __init__(
        self,
        store: RecordStore,
        webhook_urls: list[str] | None = None,
        *,
        heartbeat: float = 5.0,
        max_pending: int = 100_000,
        clock_ms: Callable[[], int] = wall_ms,
        on_written: Callable[[], None] | None = None,
        live_ids: Callable[[], list[str]] = list,
    ) -> None:
        self.store = store
        self.urls = list(webhook_urls or [])
        self.heartbeat = heartbeat
        self.max_pending = max_pending
        self.clock_ms = clock_ms
        self.on_written = on_written
        #: the call ids this server has live (their records are touched every heartbeat)
        self.live_ids = live_ids
        self.dropped = 0
        self.write_errors = 0
        self.batches = 0
        self._queue: collections.deque[Write] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> int:
        """Open the store, close calls a dead server left live; returns how many."""
        await self.store.open()
        closed = await self._close_stale(self.clock_ms(), at_start=True)
        self._task = asyncio.create_task(self._run(), name="callkit-record-writer")
        return closed

    async def _close_stale(self, now: int, at_start: bool = False) -> int:
        """Close records a dead server left live as ``Interrupt``: every live one at start
        for a database of our own; for a shared one (PostgreSQL) only those no server
        touched for three heartbeats (checked at every heartbeat)."""
        if self.store.shared:
            seen_before = now - int(3 * self.heartbeat * 1000)
        elif at_start:
            seen_before = 2**62
        else:
            return 0
        stale = await self.store.live_records(seen_before)
        if stale:
            await self.store.write(
                [interrupt(r, now, bool(self.urls)) for r in stale], self.urls, now
            )
            log.warning(
                "closed %d call record(s) left live by a dead server as Interrupt", len(stale)
            )
        return len(stale)

    def submit(self, writes: list[Write]) -> None:
        """Queue record changes (never blocks, never raises)."""
        if not writes:
            return
        room = self.max_pending - len(self._queue)
        if room < len(writes):
            self.dropped += len(writes) - max(room, 0)
            log.error("record queue full (%d): dropped %d change(s)", self.max_pending, len(writes))
            writes = writes[: max(room, 0)]
        self._queue.extend(writes)
        self._idle.clear()
        self._wake.set()

    @property
    def pending(self) -> int:
        """Changes waiting to be written."""
        return len(self._queue)

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything submitted so far is written (or ``timeout`` passed)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (bounded by ``timeout``), stop, close the store."""
        if self._task is not None:
            await self.flush(timeout)
            self._stopping = True  # (a cancel can be lost inside wait_for on Python < 3.12)
            self._wake.set()
            done, _ = await asyncio.wait([self._task], timeout=timeout)
            if not done:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.store.close()

    async def _run(self) -> None:
        delay = 0.05
        loop = asyncio.get_running_loop()
        next_touch = loop.time() + self.heartbeat
        while not self._stopping:
            if not self._queue:
                self._idle.set()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, next_touch - loop.time()))
                self._wake.clear()
                if self._stopping:
                    return
            try:
                if loop.time() >= next_touch:
                    next_touch = loop.time() + self.heartbeat
                    await self.store.touch_live(self.clock_ms(), self.live_ids())
                    await self._close_stale(self.clock_ms())
                if not self._queue:
                    continue
                batch = list(self._queue)
                await self.store.write(batch, self.urls, self.clock_ms())
                for _ in batch:
                    self._queue.popleft()
                self.batches += 1
                delay = 0.05
                if self.on_written is not None and any(w.events for w in batch):
                    self.on_written()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.write_errors += 1
                log.error("writing call records failed (retrying in %.1f s): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
