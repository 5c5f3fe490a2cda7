"""Shared timers: one sorted set, member -> deadline (wall clock), polled by every node.

The committing transaction keeps each call's earliest ringing deadline here (see
callstore.py). Every node polls :meth:`SharedTimers.due` and runs the due member's atomic
update; the pure rules re-check the deadline on the state they load, so a timer fires once
across nodes, and still fires when the node that armed it died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from .link import LINK_ERRORS, RedisLink

__all__ = ["SharedTimers"]

log = logging.getLogger("callkit.signaling.cluster")

#: Lua: drop a timer entry whose document is gone (so a stale entry cannot spin the poller)
_DROP_IF_GONE = """
if redis.call('exists', KEYS[1]) == 0 then
  return redis.call('zrem', KEYS[2], ARGV[1])
end
return 0
"""


class SharedTimers:
    """``due(now)`` lists members whose deadline passed; :meth:`run` polls forever."""

    def __init__(self, link: RedisLink, key: str, *, poll: float = 0.1, batch: int = 64) -> None:
        self.link = link
        self.key = key
        self.poll = poll
        self.batch = batch

    async def due(self, now: float) -> list[str]:
        """Members whose deadline is ``<= now`` (at most ``batch``), earliest first."""
        return list(
            await self.link.run(
                lambda r: r.zrangebyscore(self.key, "-inf", now, start=0, num=self.batch)
            )
        )

    async def next_deadline(self) -> float | None:
        """The earliest deadline in the set."""
        first = await self.link.run(lambda r: r.zrange(self.key, 0, 0, withscores=True))
        return float(first[0][1]) if first else None

    async def drop_if_gone(self, member: str, doc_key: str) -> bool:
        """Remove ``member`` if ``doc_key`` no longer exists (atomic)."""
        script = _DROP_IF_GONE
        return bool(await self.link.run(lambda r: r.eval(script, 2, doc_key, self.key, member)))

    async def run(
        self, clock: Callable[[], float], fire: Callable[[str, float], Awaitable[None]]
    ) -> None:
        """Forever: fire every due member (``await fire(member, now)``), then sleep until
        the next deadline (at most ``poll`` seconds, so other nodes' timers are seen).
        A lost Redis link is retried after ``poll``."""
        while True:
            with contextlib.suppress(*LINK_ERRORS):
                now = clock()
                for member in await self.due(now):
                    try:
                        await fire(member, now)
                    except LINK_ERRORS:
                        raise
                    except Exception:
                        log.exception("timer %s failed", member)
            await asyncio.sleep(self.poll)
