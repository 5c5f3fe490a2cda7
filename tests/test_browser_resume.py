"""callkit.js keeps its call through a dropped signaling socket (reconnect + resume, as the
Python engine), and gives up with onError -1401 when the outage outlasts the server's grace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from callkit import CallEngine
from callkit.media import ToneSource
from callkit.signaling import ServerConfig, SignalingServer

from .browser_helpers import BrowserUser, chromium, wait_until
from .conftest import LOOPBACK, SDK_APP_ID, SECRET, sig
from .test_reconnect import TcpProxy

pytestmark = pytest.mark.loopback

GRACE = 3.0


@pytest.fixture
async def short_grace_server() -> AsyncIterator[SignalingServer]:
    srv = SignalingServer(SDK_APP_ID, SECRET, ServerConfig(heartbeat=1.0, resume_grace=GRACE))
    await srv.start("127.0.0.1", 0)
    yield srv
    await srv.stop()


async def test_browser_resumes_after_a_drop_and_gives_up_after_the_grace(
    short_grace_server: SignalingServer,
) -> None:
    server = short_grace_server
    proxy = await TcpProxy(server.port or 0).start()
    assert server.url is not None
    py = CallEngine(
        server.url, audio_source=ToneSource(440, level_dbfs=-20), ice_addresses=LOOPBACK
    )
    py.add_event_listener("onCallReceived", lambda res: asyncio.ensure_future(py.accept()))
    await py.init(SDK_APP_ID, "py", sig("py"))
    try:
        async with chromium() as browser:
            web = await BrowserUser.open(
                browser,
                f"http://127.0.0.1:{server.port}",
                proxy.url(),
                SDK_APP_ID,
                "web",
                sig("web"),
            )
            try:
                await web.run("(e) => e.call('py', 1)")
                await web.wait_for("onCallBegin")
                # a short outage: the socket resets, callkit.js reconnects and resumes
                proxy.cut()
                await asyncio.sleep(1.0)
                proxy.restore()
                await wait_until(
                    lambda: web.run("(e) => e.link && e.link.reconnects === 1 && e.link.up"),
                    GRACE + 2,
                    "the browser's resumed link",
                )
                assert await web.run("(e) => e.callState") == "connected"
                assert await web.of("onError") == []
                # the resumed session still gets the call's events
                await py.close_microphone()
                # (the first one said py joined with the microphone on)
                assert await web.wait_for("onUserAudioAvailable", count=2) == {
                    "userId": "py",
                    "isAudioAvailable": False,
                }
                # an outage longer than the grace: the call ends locally with onError -1401
                proxy.cut()
                error = await web.wait_for("onError", timeout=GRACE + 5)
                assert error["code"] == -1401 and "the call ended" in error["msg"], error
                assert await web.run("(e) => e.callState") == "idle"
                assert await web.run("(e) => e.link") is None  # logged out: init again
                proxy.restore()
                await web.run(f"(e) => e.init({SDK_APP_ID}, 'web', '{sig('web')}')")
                assert await web.run("(e) => e.link.up")
            finally:
                await web.close()
    finally:
        await py.destroy()
        await proxy.close()
