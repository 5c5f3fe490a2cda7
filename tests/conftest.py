"""Shared fixtures: a real SignalingServer on 127.0.0.1 and real CallEngines."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from callkit import CallEngine
from callkit.recorder import EventRecorder
from callkit.signaling import ServerConfig, SignalingServer
from callkit.signaling.usersig import gen_user_sig

SDK_APP_ID = 1400000001
SECRET = "callkit-test-secret-0123456789abcdef"
LOOPBACK = ["127.0.0.1"]


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
    return gen_user_sig(SDK_APP_ID, SECRET, user_id, expire)


@pytest.fixture
async def server() -> AsyncIterator[SignalingServer]:
    srv = SignalingServer(SDK_APP_ID, SECRET, ServerConfig(heartbeat=2.0))
    await srv.start("127.0.0.1", 0)
    yield srv
    await srv.stop()


EngineFactory = Callable[..., Awaitable[tuple[CallEngine, EventRecorder]]]


@pytest.fixture
async def make_engine(server: SignalingServer) -> AsyncIterator[EngineFactory]:
    """``engine, rec = await make_engine("alice", audio_source=...)``: logged in, recorded."""
    made: list[CallEngine] = []

    async def factory(user_id: str, **kwargs: Any) -> tuple[CallEngine, EventRecorder]:
        kwargs.setdefault("ice_addresses", LOOPBACK)
        engine = CallEngine(server.url, **kwargs)
        made.append(engine)
        rec = EventRecorder(engine, user_id)
        await engine.init(SDK_APP_ID, user_id, sig(user_id))
        return engine, rec

    yield factory
    await asyncio.gather(*(e.destroy() for e in made), return_exceptions=True)
