"""The project's fixtures, on top of callkit's own pytest plugin (callkit/testing.py).

``server`` and ``make_engine`` are thin aliases of the plugin's ``callkit_server`` and
``callkit_engine`` that the tests were written against.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from callkit import CallEngine
from callkit.recorder import EventRecorder
from callkit.signaling import SignalingServer
from callkit.testing import LOOPBACK, SDK_APP_ID, SECRET_KEY, EngineFactory, user_sig

from .cluster_nodes import NodeSpread, node_spread, spread_engines  # noqa: F401
from .postgres_server import db_url, pg_cluster, pg_url  # noqa: F401  (one PostgreSQL per session)
from .redis_server import own_redis, redis_proc, redis_url  # noqa: F401  (one Redis per session)

# the plugin also loads through its pytest11 entry point; this keeps a checkout whose
# editable install predates the entry point working (pytest loads a plugin once)
pytest_plugins = ["callkit.testing", "pytester"]

SECRET = SECRET_KEY

__all__ = ["LOOPBACK", "NODES_MODES", "SDK_APP_ID", "SECRET", "sig"]


class ErrorLogWatcher(logging.Handler):
    """Collects ERROR records so tests can assert that nothing blew up unnoticed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def error_log() -> Any:
    watcher = ErrorLogWatcher()
    logging.getLogger().addHandler(watcher)
    yield watcher
    logging.getLogger().removeHandler(watcher)


def sig(user_id: str, expire: int = 3600) -> str:
    return user_sig(user_id, expire)


@pytest.fixture
def nodes_mode(request: pytest.FixtureRequest) -> str:
    """Where ``server`` / ``make_engine`` run: "memory" (one in-memory node, the default) or
    "redis3" (three nodes over one Redis, users spread over them; tests/cluster_nodes.py).
    A module runs both with ``pytest.mark.parametrize("nodes_mode", NODES_MODES,
    indirect=True)``."""
    return str(getattr(request, "param", "memory"))


#: the two ways the call-flow tests run
NODES_MODES = ["memory", "redis3"]


@pytest.fixture
def server(request: pytest.FixtureRequest, nodes_mode: str) -> SignalingServer:
    """The plugin's ``callkit_server``; with ``nodes_mode`` "redis3", the cluster's first node."""
    if nodes_mode == "redis3":
        spread: NodeSpread = request.getfixturevalue("node_spread")
        return spread.servers[0]
    return request.getfixturevalue("callkit_server")  # type: ignore[no-any-return]


@pytest.fixture
def engines(request: pytest.FixtureRequest, nodes_mode: str) -> EngineFactory:
    """The plugin's ``callkit_engine``, or ``spread_engines`` with "redis3"."""
    name = "spread_engines" if nodes_mode == "redis3" else "callkit_engine"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


EngineAndRecorder = Callable[..., Awaitable[tuple[CallEngine, EventRecorder]]]


@pytest.fixture
def make_engine(engines: EngineFactory) -> EngineAndRecorder:
    """``engine, rec = await make_engine("alice", audio_source=...)``: logged in, recorded."""

    async def factory(user_id: str, **kwargs: Any) -> tuple[CallEngine, EventRecorder]:
        engine = await engines(user_id, **kwargs)
        return engine, engines.recorder(engine)

    return factory
