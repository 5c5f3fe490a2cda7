"""The link's own heartbeat: it pings a quiet service and drops the link only after
``heartbeat_timeout`` of silence, so a busy service whose pongs are late is not dropped.

The service here is a bare aiohttp WebSocket endpoint that answers the login and then only
pongs, late (or never): a stand-in for a loaded server, with time scaled down.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import WSMsgType, web

from callkit.client import SignalingClient
from callkit.signaling import protocol as p

from .conftest import SDK_APP_ID, sig


class LatePongServer:
    """Answers the login, then answers each ping ``pong_delay`` s late (None: never)."""

    def __init__(self, pong_delay: float | None) -> None:
        self.pong_delay = pong_delay
        self.pings = 0
        self.logins = 0
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    async def start(self) -> LatePongServer:
        app = web.Application()
        app.router.add_get("/ws", self._ws)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"ws://127.0.0.1:{port}/ws"
        return self

    async def _pong_later(self, ws: web.WebSocketResponse, data: bytes) -> None:
        assert self.pong_delay is not None
        await asyncio.sleep(self.pong_delay)
        if not ws.closed:
            await ws.pong(data)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                login = json.loads(msg.data)
                self.logins += 1
                data = {"sessionId": f"s{self.logins}", "resumeGrace": 9.0, "call": None}
                await ws.send_str(p.Reply(id=login["id"], data=data).encode())
            elif msg.type is WSMsgType.PING:
                self.pings += 1
                if self.pong_delay is not None:
                    task = asyncio.ensure_future(self._pong_later(ws, msg.data))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        return ws

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def late_server(request: pytest.FixtureRequest) -> AsyncIterator[LatePongServer]:
    server = await LatePongServer(request.param).start()
    try:
        yield server
    finally:
        await server.stop()


async def linked(url: str, lost: list[str]) -> SignalingClient:
    client = SignalingClient(
        url,
        lambda message: None,
        lambda reason: None,
        on_lost=lost.append,
        heartbeat=0.2,
        heartbeat_timeout=1.0,
    )
    await client.connect(sdk_app_id=SDK_APP_ID, user_id="alice", user_sig=sig("alice"))
    return client


@pytest.mark.parametrize("late_server", [0.35], indirect=True)
async def test_late_pongs_keep_the_link(late_server: LatePongServer) -> None:
    # each pong comes 0.35 s late: more than aiohttp's heartbeat/2 (0.1 s), which used to
    # drop the link, but well within the 1 s of silence the link tolerates
    lost: list[str] = []
    client = await linked(late_server.url, lost)
    try:
        await asyncio.sleep(2.0)
        assert late_server.pings >= 5, late_server.pings
        assert lost == [] and client.reconnects == 0 and client.connected
        assert late_server.logins == 1
    finally:
        await client.close()


@pytest.mark.parametrize("late_server", [None], indirect=True)
async def test_a_service_that_never_pongs_is_dropped_and_reconnected(
    late_server: LatePongServer,
) -> None:
    lost: list[str] = []
    client = await linked(late_server.url, lost)
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while not lost and loop.time() - start < 5:
            await asyncio.sleep(0.02)
        dropped_after = loop.time() - start
        assert lost == ["no heartbeat from the service"]
        assert 0.95 <= dropped_after < 2.0, dropped_after
        assert late_server.pings >= 2  # every 0.2 s of silence (4 when on time); dropped at 1 s
        while client.reconnects == 0 and loop.time() - start < 5:
            await asyncio.sleep(0.02)
        assert client.reconnects == 1 and late_server.logins == 2
    finally:
        await client.close()
