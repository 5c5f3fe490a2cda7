"""callkit.js under attack: a hostile call member sends malformed relays; bad API input gets
CallError codes. The call and the page keep working."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from callkit import CallError
from callkit.media import ToneSource
from callkit.signaling import protocol as p

from .browser_helpers import BrowserUser, chromium, wait_until
from .conftest import SDK_APP_ID, sig

pytestmark = pytest.mark.loopback


async def _volume_near(user: BrowserUser, of: str, level: int, tol: int = 4) -> bool:
    maps = [m["volumeMap"] for m in await user.of("onUserVoiceVolumeChanged")]
    return len(maps) >= 3 and all(abs(m.get(of, -99) - level) <= tol for m in maps[-3:])


async def test_malformed_relays_do_not_break_the_browser(server, make_engine) -> None:
    py, rp = await make_engine("py", audio_source=ToneSource(440, level_dbfs=-20))
    py.add_event_listener("onCallReceived", lambda res: asyncio.ensure_future(py.accept()))
    async with chromium() as browser:
        assert server.url is not None
        web = await BrowserUser.open(
            browser, f"http://127.0.0.1:{server.port}", server.url, SDK_APP_ID, "web", sig("web")
        )
        try:
            await web.run("(e) => e.call('py', 1)")
            await web.wait_for("onCallBegin")
            await wait_until(lambda: _volume_near(web, "py", 80), 10, "py's tone in the browser")
            client, call_id = py._client, py.call_id
            assert client is not None and call_id is not None
            bad: list[tuple[str, dict]] = [
                ("answer", {"type": "answer", "sdp": "v=0 garbage"}),  # not awaiting one
                ("candidate", {"candidate": 5}),
                ("candidate", {"candidate": "candidate:bogus"}),
                ("candidate", {"candidate": "x" * 4000, "sdpMid": "nope", "sdpMLineIndex": 9}),
                ("candidate", {}),
                ("offer", {"type": "offer", "sdp": "not an sdp"}),
                ("offer", {"type": "offer"}),
            ]
            bad += [("renegotiate", {})] * 50  # the browser is the answerer: ignored
            for kind, data in bad:  # the server refuses what it can tell is malformed (-1202)
                with contextlib.suppress(CallError):
                    await client.request(p.Relay, call_id=call_id, to="web", kind=kind, data=data)
            await asyncio.sleep(1.0)
            errors = await web.of("onError")
            assert errors and all(e["code"] == -1301 for e in errors), errors
            assert await web.run("(e) => e.callState") == "connected"
            assert not [c for c in web.console if c.startswith("pageerror")], web.console
            # media still flows both ways, and the call still ends normally
            await wait_until(lambda: _volume_near(web, "py", 80), 10, "py's tone after the attack")
            await web.run("(e) => e.hangup()")
            await rp.wait_for("onCallEnd")
            await web.wait_for("onCallEnd")
        finally:
            await web.close()


async def test_bad_api_input_gets_call_error_codes(server) -> None:
    async with chromium() as browser:
        assert server.url is not None
        web = await BrowserUser.open(
            browser,
            f"http://127.0.0.1:{server.port}",
            server.url,
            SDK_APP_ID,
            "web",
            sig("web"),
            login=False,
        )
        try:
            codes = await web.run(
                """async (e, app, s) => {
                  const code = async (f) => { try { await f(); return "ok"; }
                    catch (err) { return err.code ?? String(err); } };
                  return {
                    beforeInit: await code(() => e.call("x", 1)),
                    badUser: await code(() => e.init(app, "bad user!", "sig")),
                    badSig: await code(() => e.init(app, "web", "not-a-sig")),
                    badTypes: await code(() => e.init("1", "web", "sig")),
                    login: await code(() => e.init(app, "web", s)),
                    emptyCallee: await code(() => e.call("", 1)),
                    badMedia: await code(() => e.call("x", 3)),
                    self: await code(() => e.call("web", 1)),
                    dupes: await code(() => e.groupCall(["a", "a"], "g", 1)),
                    tooMany: await code(() => e.groupCall("abcdefghi".split(""), "g", 1)),
                    badTimeout: await code(() => e.call("x", 1, { timeout: -1 })),
                    acceptIdle: await code(() => e.accept()),
                    hangupIdle: await code(() => e.hangup()),
                    cameraIdle: await code(() => e.openCamera()),
                    badRoom: await code(() => e.joinInGroupCall(-5, "g", 1)),
                    badEvent: await code(() => e.on("onNothing", () => {})),
                    badNick: await code(() => e.setSelfInfo(5, "")),
                  };
                }""",
                SDK_APP_ID,
                sig("web"),
            )
            assert codes == {
                "beforeInit": -1201,
                "badUser": -1201,
                "badSig": -1201,
                "badTypes": -1202,
                "login": "ok",
                "emptyCallee": -1202,
                "badMedia": -1202,
                "self": -1202,
                "dupes": -1202,
                "tooMany": -1202,
                "badTimeout": -1202,
                "acceptIdle": -1203,
                "hangupIdle": -1203,
                "cameraIdle": -1203,
                "badRoom": -1202,
                "badEvent": -1202,
                "badNick": -1202,
            }
        finally:
            await web.close()
