"""Three in-process signaling nodes sharing one Redis, with users spread over them.

The call-flow tests run against one in-memory node and against this (``nodes_mode`` =
``"redis3"``, see conftest.py): the n-th user a test logs in goes to node ``n % 3``, so a
1v1 call always crosses nodes and a group call spans all three.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from callkit.signaling import SignalingServer
from callkit.testing import SDK_APP_ID, SECRET_KEY, EngineFactory

from .redis_server import RedisServer

__all__ = ["NodeSpread", "SpreadEngineFactory", "node_spread", "spread_engines"]


class NodeSpread:
    """``count`` SignalingServers over the Redis at ``redis_url`` (node ids n0, n1, ...)."""

    def __init__(self, redis_url: str, count: int = 3, **options: Any) -> None:
        options.setdefault("sdk_app_id", SDK_APP_ID)
        options.setdefault("secret_key", SECRET_KEY)
        self.servers = [
            SignalingServer(redis=redis_url, node_id=f"n{i}", **options) for i in range(count)
        ]
        self._placed: dict[str, int] = {}

    async def start(self) -> None:
        """Start every node on 127.0.0.1 (random ports)."""
        for server in self.servers:
            await server.start("127.0.0.1", 0)

    async def stop(self) -> None:
        """Stop every node."""
        await asyncio.gather(*(s.stop() for s in self.servers), return_exceptions=True)

    def node_for(self, user_id: str) -> SignalingServer:
        """The node ``user_id`` logs in at: round robin by first appearance."""
        index = self._placed.setdefault(user_id, len(self._placed) % len(self.servers))
        return self.servers[index]


class SpreadEngineFactory(EngineFactory):
    """The ``callkit_engine`` factory, each user logged in at its own node."""

    def __init__(self, spread: NodeSpread) -> None:
        super().__init__(spread.servers[0])
        self.spread = spread

    def url_for(self, user_id: str) -> str:
        url = self.spread.node_for(user_id).url
        if url is None:
            raise RuntimeError("the cluster is not running")
        return url


@pytest_asyncio.fixture
async def node_spread(
    redis_proc: RedisServer, callkit_server_options: dict[str, Any]
) -> AsyncIterator[NodeSpread]:
    """Three in-process nodes over the session's Redis, emptied first (stopped at teardown)."""
    redis_proc.flush()
    spread = NodeSpread(redis_proc.url, **callkit_server_options)
    await spread.start()
    try:
        yield spread
    finally:
        await spread.stop()


@pytest_asyncio.fixture
async def spread_engines(node_spread: NodeSpread) -> AsyncIterator[EngineFactory]:
    """``callkit_engine`` for the three nodes: each user logs in at its own node."""
    factory = SpreadEngineFactory(node_spread)
    try:
        yield factory
    finally:
        await factory.aclose()
