"""The node's connection to Redis: one redis-py asyncio client (one pool) per process.

Every command goes through :meth:`RedisLink.run`, which turns a lost or refused connection
into :class:`StoreUnavailable` (a :class:`~callkit.signaling.callstate.CallStateError` with
code -1406 and a message naming the Redis address), never a crash; redis-py reconnects on
the next command. :meth:`RedisLink.subscribe` keeps a pub/sub subscription alive across
Redis restarts (bounded back-off) and calls ``on_reconnect`` after each new subscription, so
the node can register its state again on a Redis that lost it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..callstate import CallStateError
from ..codes import ErrorCode

__all__ = ["LINK_ERRORS", "RedisLink", "StoreUnavailable", "stop_tasks"]

log = logging.getLogger("callkit.signaling.cluster")

T = TypeVar("T")

#: what a lost, refused or stalled Redis connection raises inside redis-py
LINK_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


class StoreUnavailable(CallStateError):
    """Redis cannot be reached: the request was not applied (code -1406)."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(
            ErrorCode.STORE_UNAVAILABLE,
            f"the shared state store (Redis at {where}) is unreachable ({why}); "
            "the request was not applied: retry in a moment",
        )


class RedisLink:
    """``link = RedisLink(url)``; ``await link.run(lambda r: r.get(k))``; ``await link.close()``.

    ``op_timeout`` bounds every command and connection attempt (a stalled Redis is a lost
    one); at most ``max_connections`` connections are open (the subscription holds one), and
    a command waits up to ``pool_timeout`` for one of them.
    """

    def __init__(
        self,
        url: str,
        *,
        op_timeout: float = 2.0,
        max_connections: int = 64,
        pool_timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"Redis URL must start with redis://, rediss:// or unix://: {url!r}")
        self.url = url
        self.where = parts.netloc.rsplit("@", 1)[-1] or parts.path
        self.op_timeout = op_timeout
        #: the redis-py asyncio client over one bounded pool: a request over ``max_connections``
        #: queues up to ``pool_timeout`` for a free connection (an overloaded node answers
        #: late, not -1406; a request per socket at a time bounds the queue) (typed loosely:
        #: redis-py's result types are unions)
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout,
            decode_responses=True,
            socket_timeout=op_timeout,
            socket_connect_timeout=op_timeout,
            health_check_interval=10,
        )
        self.client: Any = aioredis.Redis(connection_pool=pool)
        #: False after a command failed on the link, True again after one succeeded
        self.up = True
        #: how many times the link was lost (a test or an operator can read it)
        self.losses = 0

    def lost(self, exc: BaseException) -> StoreUnavailable:
        """Note that the link failed with ``exc``; the error to give the requester."""
        why = str(exc) or type(exc).__name__
        if self.up:
            self.up = False
            self.losses += 1
            log.error("lost the Redis link to %s: %s (reconnecting)", self.where, why)
        return StoreUnavailable(self.where, why)

    def ok(self) -> None:
        """Note that a command succeeded."""
        if not self.up:
            self.up = True
            log.warning("Redis link to %s is back", self.where)

    async def run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``await fn(client)``; a link failure raises :class:`StoreUnavailable`. A pooled
        connection that a restarted Redis closed fails once: ``fn`` runs once more on a
        fresh connection before the link counts as lost."""
        for attempt in (1, 2):
            try:
                # each command is bounded by the socket timeouts (not asyncio.wait_for: on
                # 3.10/3.11 it can swallow a cancel, and the server's tasks must stop)
                result = await fn(self.client)
            except LINK_ERRORS as exc:
                if attempt == 2 or not isinstance(exc, RedisConnectionError):
                    raise self.lost(exc) from None
                continue
            self.ok()
            return result
        raise AssertionError("unreachable")

    async def subscribe(
        self,
        channel: str,
        on_message: Callable[[str], Awaitable[None]],
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
        *,
        ready: asyncio.Event | None = None,
    ) -> None:
        """Deliver every message of ``channel`` to ``on_message``, in order, forever (run it as
        a task; cancel it to stop). Resubscribes after a lost link; ``on_reconnect`` runs
        after every subscription but the first; ``ready`` is set once subscribed."""
        delay, first = 0.05, True
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                self.ok()
                if not first and on_reconnect is not None:
                    try:
                        await on_reconnect()
                    except LINK_ERRORS:
                        raise
                    except Exception:
                        log.exception("re-registering with Redis failed")
                first, delay = False, 0.05
                if ready is not None:
                    ready.set()
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        try:
                            await on_message(msg["data"])
                        except Exception:
                            log.exception("handling a cluster message failed")
            except LINK_ERRORS as exc:
                self.lost(exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def close(self) -> None:
        """Close the pool (idempotent)."""
        with contextlib.suppress(Exception):
            await self.client.aclose(close_connection_pool=True)


async def stop_tasks(tasks: list[asyncio.Task[Any]], *, tries: int = 20) -> None:
    """Cancel ``tasks`` and wait for them. redis-py can swallow a cancel that arrives while
    a command completes, so each task is cancelled again until it ends (at most ``tries``
    times, 0.5 s apart; a task still running then is logged and left)."""
    for task in tasks:
        for _ in range(tries):
            if task.done():
                break
            task.cancel()
            await asyncio.wait([task], timeout=0.5)
        else:
            log.error("task %s did not stop", task.get_name())
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: nothing to report for a stopped loop
