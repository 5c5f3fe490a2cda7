"""One socket's requests, run in arrival order by a worker task, so its reader keeps reading.

The WebSocket handler reads every frame as it comes: pings and pongs (liveness) keep being
answered and counted while a request waits on a slow store. The requests themselves run one
at a time, in order (a hangup never overtakes the call it ends), and at most ``limit`` are
queued or running per socket: :meth:`RequestQueue.put` waits for room, so a client that
piles requests behind a stalled one is no longer read (TCP pushes back) and grows nothing.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["RequestQueue"]

log = logging.getLogger("callkit.signaling.server")

T = TypeVar("T")


class RequestQueue(Generic[T]):
    """Runs ``handle(item)`` for each item put, in order, one at a time, in a task of its
    own; at most ``limit`` items are queued or running."""

    def __init__(self, handle: Callable[[T], Awaitable[None]], limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        self.handle = handle
        self.limit = limit
        self._items: collections.deque[T] = collections.deque()
        self._running = 0
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        """Items queued or running."""
        return len(self._items) + self._running

    @property
    def full(self) -> bool:
        """``limit`` items are in flight: :meth:`put` waits."""
        return self.in_flight >= self.limit

    async def put(self, item: T) -> None:
        """Queue ``item``; waits while the queue is :attr:`full`."""
        while self.full:
            self._room.clear()
            await self._room.wait()
        self._items.append(item)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._work())

    async def drain(self) -> None:
        """Wait until every item put ran (a cancel of the caller cancels them)."""
        task = self._task
        if task is not None and not task.done():
            await task

    async def _work(self) -> None:
        while self._items:
            item = self._items.popleft()
            self._running = 1
            try:
                await self.handle(item)
            except Exception:  # the handler replies to its own errors; this is a bug
                log.exception("request handling failed")
            finally:
                self._running = 0
                self._room.set()
