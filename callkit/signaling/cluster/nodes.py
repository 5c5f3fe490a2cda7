"""Node liveness: each node keeps its entry in the ``{p}:nodes`` sorted set a short time in
the future (score = wall-clock time its liveness lapses); a node whose entry lapsed is dead.

Any live node may *claim* a dead one (``ZREM`` succeeds for exactly one claimer) and then
treat its sessions as lost links (held for a resume within the grace, see sessions.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from .keys import Keys
from .link import LINK_ERRORS, RedisLink

__all__ = ["NodeLiveness"]

log = logging.getLogger("callkit.signaling.cluster")


async def _zrem(r: Any, *, key: str, member: str) -> int:
    return int(await r.zrem(key, member))


class NodeLiveness:
    """Refresh this node's entry every ``ttl / 3`` seconds; find and claim dead nodes."""

    def __init__(
        self,
        link: RedisLink,
        keys: Keys,
        node_id: str,
        *,
        ttl: float = 3.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0, got {ttl!r}")
        self.link = link
        self.keys = keys
        self.node_id = node_id
        self.ttl = ttl
        self.wall_clock = wall_clock
        #: called (no arguments) when a beat finds this node's entry gone (see :meth:`beat`)
        self.on_claimed: Callable[[], Any] | None = None
        self._beaten = False

    async def beat(self) -> bool:
        """Say this node is alive for ``ttl`` more seconds. Returns False when its entry was
        gone although it had beaten before: another node took it for dead and took over its
        sockets (a stalled event loop, a network split), or Redis lost it."""
        until = self.wall_clock() + self.ttl
        added = await self.link.run(lambda r: r.zadd(self.keys.nodes, {self.node_id: until}))
        claimed = bool(added) and self._beaten
        self._beaten = True
        return not claimed

    async def alive(self) -> set[str]:
        """The nodes whose liveness has not lapsed."""
        now = self.wall_clock()
        nodes = await self.link.run(lambda r: r.zrangebyscore(self.keys.nodes, now, "+inf"))
        return set(nodes)

    async def claim_dead(self) -> list[tuple[str, float]]:
        """Dead nodes this node claimed (each is claimed by one node only), with the time
        their liveness lapsed."""
        now = self.wall_clock()
        dead = await self.link.run(
            lambda r: r.zrangebyscore(self.keys.nodes, "-inf", now, withscores=True)
        )
        claimed = []
        for node, lapsed in dead:
            if node == self.node_id:
                continue
            if await self.link.run(partial(_zrem, key=self.keys.nodes, member=node)):
                claimed.append((node, float(lapsed)))
        return claimed

    async def leave(self) -> None:
        """Remove this node's entry (a clean shutdown)."""
        await self.link.run(lambda r: r.zrem(self.keys.nodes, self.node_id))

    async def run(self, on_dead: Callable[[str, float], Awaitable[None]] | None = None) -> None:
        """Beat forever (run as a task); claim dead nodes and hand each to ``on_dead``.
        A lost Redis link is logged by the link and retried on the next beat."""
        while True:
            with contextlib.suppress(*LINK_ERRORS, Exception):
                if not await self.beat() and self.on_claimed is not None:
                    log.error("node %s was taken for dead by another node", self.node_id)
                    self.on_claimed()
                if on_dead is not None:
                    for node, lapsed in await self.claim_dead():
                        log.warning("node %s is dead (no beat since %.1f s)", node, lapsed)
                        try:
                            await on_dead(node, lapsed)
                        except Exception:
                            log.exception("taking over the sessions of node %s failed", node)
            await asyncio.sleep(self.ttl / 3)
