"""Browser calls: connect time browser<->Python and browser<->browser, and the Python side's
CPU per browser call. Needs /usr/bin/chromium and playwright (as the browser tests). Run:

    python bench/bench_browser.py [--calls 5] [--seconds 10]

Connect time: from the callee's accept to the browser's peer connection "connected" and the
first remote video frame decoded (onUserVideoAvailable) at the browser. CPU: this Python
process's CPU seconds per second of a connected video call (the signaling server plus, for
browser<->Python, the Python engine with its VP8/Opus encode and decode), measured with
``time.process_time``; Chromium runs in its own processes and is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from callkit import CallEngine
from callkit.media import TestPatternSource, ToneSource
from callkit.signaling import SignalingServer
from callkit.signaling.usersig import gen_user_sig
from tests.browser_helpers import BrowserUser, chromium

APP, SECRET = 1400000001, "bench-secret"


async def open_user(browser, server: SignalingServer, user: str) -> BrowserUser:  # type: ignore[no-untyped-def]
    assert server.url is not None
    return await BrowserUser.open(
        browser,
        f"http://127.0.0.1:{server.port}",
        server.url,
        APP,
        user,
        gen_user_sig(APP, SECRET, user, 3600),
    )


CONNECTED = """(e) => { const p = [...e.peers.values()][0];
  return !!p && p.pc.connectionState === "connected"; }"""


async def wait_js(user: BrowserUser, script: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await user.run(script):
        if time.monotonic() > deadline:
            raise TimeoutError(script)
        await asyncio.sleep(0.01)


async def browser_python(browser, server, calls: int, seconds: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    web = await open_user(browser, server, "web")
    py = CallEngine(
        server.url,
        audio_source=ToneSource(440, level_dbfs=-20),
        video_source=TestPatternSource(320, 240, 15),
        ice_addresses=["127.0.0.1"],
    )
    await py.init(APP, "py", gen_user_sig(APP, SECRET, "py", 3600))
    connects, videos, cpu = [], [], []
    try:
        for i in range(calls):
            await web.page.evaluate("window.ckLog = []")
            await web.run("(e) => e.call('py', 2)")
            for _ in range(200):
                if py.call_state.value == "ringing":
                    break
                await asyncio.sleep(0.01)
            t0 = time.monotonic()
            await py.accept()
            await wait_js(web, CONNECTED)
            connects.append(time.monotonic() - t0)
            await web.wait_for("onUserVideoAvailable")
            videos.append(time.monotonic() - t0)
            if i == calls - 1:
                c0, w0 = time.process_time(), time.monotonic()
                await asyncio.sleep(seconds)
                cpu.append((time.process_time() - c0) / (time.monotonic() - w0))
            await web.run("(e) => e.hangup()")
            await web.wait_for("onCallEnd")
            await asyncio.sleep(0.3)
    finally:
        await py.destroy()
        await web.close()
    return {
        "connect_median_s": statistics.median(connects),
        "first_frame_median_s": statistics.median(videos),
        "python_cpu_per_call": cpu[0],
    }


async def browser_browser(browser, server, calls: int, seconds: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    ann = await open_user(browser, server, "ann")
    ben = await open_user(browser, server, "ben")
    connects, videos, cpu = [], [], []
    try:
        for i in range(calls):
            for u in (ann, ben):
                await u.page.evaluate("window.ckLog = []")
            await ann.run("(e) => e.call('ben', 2)")
            await ben.wait_for("onCallReceived")
            t0 = time.monotonic()
            await ben.run("(e) => e.accept()")
            await wait_js(ann, CONNECTED)
            connects.append(time.monotonic() - t0)
            await ann.wait_for("onUserVideoAvailable")
            videos.append(time.monotonic() - t0)
            if i == calls - 1:
                c0, w0 = time.process_time(), time.monotonic()
                await asyncio.sleep(seconds)
                cpu.append((time.process_time() - c0) / (time.monotonic() - w0))
            await ann.run("(e) => e.hangup()")
            await ben.wait_for("onCallEnd")
            await asyncio.sleep(0.3)
    finally:
        await ann.close()
        await ben.close()
    return {
        "connect_median_s": statistics.median(connects),
        "first_frame_median_s": statistics.median(videos),
        "python_cpu_per_call": cpu[0],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    server = SignalingServer(APP, SECRET)
    await server.start("127.0.0.1", 0)
    try:
        async with chromium() as browser:
            c0, w0 = time.process_time(), time.monotonic()
            await asyncio.sleep(3)
            idle = (time.process_time() - c0) / (time.monotonic() - w0)
            bp = await browser_python(browser, server, args.calls, args.seconds)
            bb = await browser_browser(browser, server, args.calls, args.seconds)
    finally:
        await server.stop()
    print(f"idle Python process: {idle * 100:.1f} % of one core")
    for name, r in (("browser<->python", bp), ("browser<->browser", bb)):
        print(
            f"{name}: accept->connected median {r['connect_median_s'] * 1000:.0f} ms, "
            f"accept->first remote frame {r['first_frame_median_s'] * 1000:.0f} ms "
            f"({args.calls} calls); Python CPU during a {args.seconds:g} s video call "
            f"{r['python_cpu_per_call'] * 100:.1f} % of one core"
        )


if __name__ == "__main__":
    asyncio.run(main())
