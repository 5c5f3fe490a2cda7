"""Case 5: the web phone at / in real Chromium: dev-login sign-in, a 3-party video call
(two phones and a Python engine), and two screenshots a second apart that show three tiles
of moving video. The screenshots stay in pytest's tmp_path (test artifacts, not committed)."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from playwright.async_api import Page

from callkit import CallEngine
from callkit.media import TestPatternSource, ToneSource
from callkit.signaling import SignalingServer

from .browser_helpers import chromium, wait_until
from .conftest import LOOPBACK, SDK_APP_ID, SECRET, sig
from .tlscerts import make_certs

pytestmark = pytest.mark.loopback


@pytest.fixture
async def dev_server() -> AsyncIterator[SignalingServer]:
    srv = SignalingServer(SDK_APP_ID, SECRET, dev_login=True)
    await srv.start("127.0.0.1", 0)
    yield srv
    await srv.stop()


async def sign_in(page: Page, base: str, user: str, nickname: str) -> None:
    await page.goto(base + "/")
    await page.fill("#user-id", user)
    await page.fill("#nickname", nickname)
    await page.click("#signin-button")
    await page.wait_for_selector("#dial:not([hidden])", timeout=10000)


def decode_png(data: bytes) -> np.ndarray:
    codec = av.CodecContext.create("png", "r")
    frames = codec.decode(av.Packet(data))
    return frames[0].to_ndarray(format="rgb24").astype(np.int16)


async def tile_shots(page: Page, users: list[str], out: Path, tag: str) -> dict[str, np.ndarray]:
    shots = {}
    for user in users:
        png = await page.locator(f'.tile[data-user="{user}"] video').screenshot()
        (out / f"{tag}-{user}.png").write_bytes(png)
        shots[user] = decode_png(png)
    return shots


async def test_web_phone_three_party_video_tiles_move(dev_server, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{dev_server.port}"
    assert dev_server.url is not None
    py = CallEngine(
        dev_server.url,
        audio_source=ToneSource(440, level_dbfs=-20),
        video_source=TestPatternSource(320, 240, 15),
        ice_addresses=LOOPBACK,
    )
    py.add_event_listener("onCallReceived", lambda res: asyncio.ensure_future(py.accept()))
    await py.init(SDK_APP_ID, "py", sig("py"))
    async with chromium() as browser:
        ann = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
        ben = await (await browser.new_context()).new_page()
        try:
            await sign_in(ann, base, "ann", "Ann A")
            await sign_in(ben, base, "ben", "Ben B")
            await ann.fill("#callees", "ben, py")
            await ann.click("#call-video")
            await ben.wait_for_selector("#incoming:not([hidden])", timeout=10000)
            assert "ann is calling (video)" in await ben.inner_text("#incoming-title")
            await ben.click("#accept")
            users = ["ann", "ben", "py"]

            async def all_playing() -> bool:
                sizes = await ann.eval_on_selector_all(
                    ".tile video", "(vs) => vs.map((v) => [v.videoWidth, v.currentTime])"
                )
                return len(sizes) == 3 and all(w > 0 and t > 0 for w, t in sizes)

            await wait_until(all_playing, 20, "three playing video tiles in ann's phone")
            tiles = await ann.eval_on_selector_all(".tile", "(ts) => ts.map((t) => t.dataset.user)")
            assert sorted(tiles) == users
            names = await ann.eval_on_selector_all(
                ".tile .name", "(ns) => ns.map((n) => n.textContent)"
            )
            assert "Ann A (you)" in names and "Ben B" in names and "py" in names
            await asyncio.sleep(1.0)
            first = await tile_shots(ann, users, tmp_path, "first")
            await asyncio.sleep(1.0)
            second = await tile_shots(ann, users, tmp_path, "second")
            await ann.screenshot(path=str(tmp_path / "phone-ann.png"))
            print(f"screenshots in {tmp_path}")
            for user in users:
                a, b = first[user], second[user]
                assert a.shape == b.shape and a.shape[0] > 50, (user, a.shape)
                assert a.std() > 10, f"{user}'s tile is blank"  # real picture, not one colour
                changed = np.abs(a - b).mean()
                assert changed > 1.0, f"{user}'s tile did not move ({changed:.2f})"
            # live volume bar and quality badge per person
            await wait_until(
                lambda: ann.eval_on_selector(
                    '.tile[data-user="py"]', "(t) => Math.abs(Number(t.dataset.volume) - 80) <= 4"
                ),
                10,
                "py's volume bar at 80",
            )

            async def badges_good() -> bool:
                badges: Any = await ann.eval_on_selector_all(
                    ".tile .quality", "(bs) => bs.map((b) => b.className)"
                )
                return len(badges) == 3 and all("q1" in b or "q2" in b for b in badges)

            await wait_until(badges_good, 10, "three good quality badges")
            timer = await ann.inner_text("#timer")
            assert re.fullmatch(r"\d\d:\d\d", timer) and timer != "00:00", timer
            log = await ann.inner_text("#log")
            assert "onCallBegin" in log and "onUserJoin" in log
            await ann.click("#hangup")
            await ann.wait_for_selector("#dial:not([hidden])", timeout=10000)
        finally:
            await py.destroy()
            await ann.context.close()
            await ben.context.close()


async def test_web_phone_over_https_and_wss(tmp_path: Path) -> None:
    """With TLS (--tls-cert/--tls-key) the phone works at https:// and its SDK uses wss://."""
    certs = make_certs(tmp_path, ["127.0.0.1"])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.cert, certs.key)
    srv = SignalingServer(SDK_APP_ID, SECRET, ssl_context=ctx, dev_login=True)
    url = await srv.start("127.0.0.1", 0)
    assert url.startswith("wss://")
    base = f"https://127.0.0.1:{srv.port}"
    try:
        async with chromium(extra_args=("--ignore-certificate-errors",)) as browser:
            ann = await (await browser.new_context(ignore_https_errors=True)).new_page()
            ben = await (await browser.new_context(ignore_https_errors=True)).new_page()
            await sign_in(ann, base, "ann", "Ann")
            await sign_in(ben, base, "ben", "Ben")
            assert await ann.evaluate("window.phone.engine.url") == f"wss://127.0.0.1:{srv.port}/ws"
            await ann.fill("#callees", "ben")
            await ann.click("#call-audio")
            await ben.wait_for_selector("#incoming:not([hidden])", timeout=10000)
            await ben.click("#accept")
            for page in (ann, ben):
                await wait_until(
                    lambda page=page: page.evaluate(
                        "[...window.phone.engine.peers.values()].some("
                        "(p) => p.pc.connectionState === 'connected')"
                    ),
                    15,
                    "a connected call over wss",
                )
            await ben.click("#hangup")
            await ann.wait_for_selector("#dial:not([hidden])", timeout=10000)
    finally:
        await srv.stop()
