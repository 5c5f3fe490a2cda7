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

from .postgres_server import db_url, pg_cluster, pg_url  # noqa: F401  (one PostgreSQL per session)
from .redis_server import own_redis, redis_proc, redis_url  # noqa: F401  (one Redis per session)

# the plugin also loads through its pytest11 entry point; this keeps a checkout whose
# editable install predates the entry point working (pytest loads a plugin once)
pytest_plugins = ["callkit.testing", "pytester"]

SECRET = SECRET_KEY

__all__ = ["LOOPBACK", "SDK_APP_ID", "SECRET", "sig"]


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
def server(callkit_server: SignalingServer) -> SignalingServer:
    """The plugin's ``callkit_server``."""
    return callkit_server


EngineAndRecorder = Callable[..., Awaitable[tuple[CallEngine, EventRecorder]]]


@pytest.fixture
def make_engine(callkit_engine: EngineFactory) -> EngineAndRecorder:
    """``engine, rec = await make_engine("alice", audio_source=...)``: logged in, recorded."""

    async def factory(user_id: str, **kwargs: Any) -> tuple[CallEngine, EventRecorder]:
        engine = await callkit_engine(user_id, **kwargs)
        return engine, callkit_engine.recorder(engine)

    return factory
