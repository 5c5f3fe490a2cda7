"""Real Chromium (Debian's /usr/bin/chromium) driven by Playwright, for the browser tests.

Each :class:`BrowserUser` is one page that imports ``/sdk/callkit.js`` from the test's
signaling server, records every event in ``window.ckLog`` and is driven with ``call``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
from collections.abc import AsyncIterator
from typing import Any

from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
BASE_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-gpu",
    "--mute-audio",
]
FAKE_UI = "--use-fake-ui-for-media-stream"


@contextlib.asynccontextmanager
async def chromium(
    *, fake_ui: bool = True, extra_args: tuple[str, ...] = ()
) -> AsyncIterator[Browser]:
    """A headless Chromium with fake camera and microphone (and fake permission UI)."""
    args = BASE_ARGS + ([FAKE_UI] if fake_ui else []) + list(extra_args)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=False, args=args)
        try:
            yield browser
        finally:
            await browser.close()


_HARNESS = """
async ([url, sdkAppId, userId, userSig, login]) => {
  const ck = await import("/sdk/callkit.js");
  window.ck = ck;
  window.ckLog = [];
  const engine = ck.CallEngine.create(url);
  window.engine = engine;
  for (const name of ck.EVENT_NAMES) {
    engine.on(name, (res) =>
      window.ckLog.push({ t: performance.now(), event: name, payload: res }));
  }
  if (login) await engine.init(sdkAppId, userId, userSig);
  return true;
}
"""


class BrowserUser:
    """One callkit.js engine in a Chromium page, with its event log."""

    def __init__(self, page: Page, user_id: str) -> None:
        self.page = page
        self.user_id = user_id
        self.console: list[str] = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    @classmethod
    async def open(
        cls,
        browser: Browser,
        base_url: str,
        ws_url: str,
        sdk_app_id: int,
        user_id: str,
        user_sig: str,
        *,
        path: str = "/health",
        login: bool = True,
    ) -> BrowserUser:
        """A new page on the server's origin with callkit.js loaded (and logged in)."""
        context = await browser.new_context()
        page = await context.new_page()
        user = cls(page, user_id)
        await page.goto(base_url + path)
        await page.evaluate(_HARNESS, [ws_url, sdk_app_id, user_id, user_sig, login])
        return user

    async def run(self, script: str, *args: Any) -> Any:
        """Evaluate ``script`` (an arrow function of ``(engine, ...args)``) in the page."""
        return await self.page.evaluate(f"(args) => ({script})(window.engine, ...args)", list(args))

    async def events(self) -> list[dict[str, Any]]:
        """Every event so far: ``{t, event, payload}`` (t in ms, page clock)."""
        return list(await self.page.evaluate("window.ckLog"))

    async def names(self, exclude: tuple[str, ...] = ()) -> list[str]:
        return [e["event"] for e in await self.events() if e["event"] not in exclude]

    async def of(self, event: str) -> list[dict[str, Any]]:
        return [e["payload"] for e in await self.events() if e["event"] == event]

    async def wait_for(self, event: str, timeout: float = 15.0, count: int = 1) -> dict[str, Any]:
        """The ``count``-th payload of ``event``; waits up to ``timeout`` seconds."""
        try:
            await self.page.wait_for_function(
                "([e, n]) => window.ckLog.filter((x) => x.event === e).length >= n",
                arg=[event, count],
                timeout=timeout * 1000,
                polling=50,
            )
        except Exception as exc:
            names = await self.names()
            raise AssertionError(
                f"{self.user_id}: no {event} #{count} within {timeout} s; got {names}; "
                f"console: {self.console[-15:]}"
            ) from exc
        return (await self.of(event))[count - 1]

    async def volume(self, user: str, n: int = 5) -> float:
        """Median of ``user``'s volume over the last ``n`` volume reports."""
        maps = [p["volumeMap"] for p in await self.of("onUserVoiceVolumeChanged")]
        return statistics.median(m.get(user, -1) for m in maps[-n:])

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.run("(e) => e.destroy()")
        with contextlib.suppress(Exception):
            await self.page.context.close()


async def wait_until(predicate: Any, timeout: float, what: str, step: float = 0.1) -> None:
    """Poll the async ``predicate()`` until it is true; AssertionError after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if await predicate():
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(step)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)[:4000]
