"""callkit.js in real Chromium against real Python engines and other browsers (issue 11).

Chromium (Debian's, /usr/bin/chromium) runs headless with fake camera and microphone; its
fake microphone beeps, its fake camera shows a moving pattern. A real SignalingServer on
127.0.0.1 serves /sdk/callkit.js; Python engines use real aiortc media.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from callkit import CallMediaType
from callkit.media import TestPatternSource, ToneSource
from callkit.signaling import SignalingServer

from .browser_helpers import BrowserUser, chromium, wait_until
from .conftest import SDK_APP_ID, sig
from .helpers import assert_payload_keys, quiet, recent_volume

pytestmark = pytest.mark.loopback

PERIODIC = ("onUserVoiceVolumeChanged", "onUserNetworkQualityChanged")


def base_url(server: SignalingServer) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


async def open_user(browser: Any, server: SignalingServer, user_id: str) -> BrowserUser:
    assert server.url is not None
    return await BrowserUser.open(
        browser, base_url(server), server.url, SDK_APP_ID, user_id, sig(user_id)
    )


def significant(names: list[str]) -> list[str]:
    return [n for n in names if n not in PERIODIC]


async def test_python_calls_browser_video(server, make_engine, browser) -> None:
    """Case 1: a Python engine calls a browser with video; events, volumes, frames."""
    bob = await open_user(browser, server, "bob")
    alice, ra = await make_engine(
        "alice",
        audio_source=ToneSource(440, level_dbfs=-20),
        video_source=TestPatternSource(320, 240, 15),
    )
    try:
        t0 = time.monotonic()
        await alice.call("bob", CallMediaType.VIDEO)
        received = await bob.wait_for("onCallReceived")
        assert received == {
            "callerId": "alice",
            "calleeIdList": ["bob"],
            "groupId": "",
            "callMediaType": 2,
            "userData": "",
        }
        t_accept = time.monotonic()
        await bob.run("(e) => e.accept()")
        await ra.wait_for("onCallBegin")
        await ra.wait_for("onUserVideoAvailable", timeout=15)
        await bob.wait_for("onUserVideoAvailable", timeout=15)
        connect_s = time.monotonic() - t_accept
        # the browser decodes frames of the Python test pattern
        frames = await bob.run(
            """async (e) => { let n = 0; const r = await e.peers.get("alice").pc.getStats();
            r.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video")
            n += s.framesDecoded || 0; }); return n; }"""
        )
        assert frames > 0
        # volumes: the Python tone reads 80 +-4 in the browser; the browser's beep is heard
        await wait_until(lambda: _volume_near(bob, "alice", 80), 10, "alice's tone at bob")

        async def python_hears_browser() -> bool:
            heard = [p["volumeMap"]["bob"] for p in ra.of("onUserVoiceVolumeChanged")[-10:]]
            return bool(heard) and max(heard) > 0

        await wait_until(python_hears_browser, 10, "the browser's beep at alice")
        await bob.wait_for("onUserNetworkQualityChanged")
        assert recent_volume(ra, "alice") == pytest.approx(80, abs=2)
        qualities = await bob.of("onUserNetworkQualityChanged")
        assert qualities and {q["userId"] for q in qualities[-1]["networkQualityList"]} == {
            "bob",
            "alice",
        }
        assert qualities[-1]["networkQualityList"][1]["quality"] in (1, 2)
        await alice.hangup()
        await bob.wait_for("onCallEnd")
        await ra.wait_for("onCallEnd")
        await quiet()
        assert significant(await bob.names()) == [
            "onCallReceived",
            "onCallBegin",
            "onUserJoin",
            "onUserAudioAvailable",
            "onUserVideoAvailable",
            "onUserLeave",
            "onCallEnd",
        ]
        assert ra.names() == [
            "onUserJoin",
            "onCallBegin",
            "onUserAudioAvailable",
            "onUserVideoAvailable",
            "onCallEnd",
        ]
        assert_payload_keys(ra)
        print(
            f"browser<-python: ring {t_accept - t0:.2f} s, "
            f"accept->video both ways {connect_s:.2f} s"
        )
    finally:
        await bob.close()


async def test_browser_calls_python_switches_to_video_python_hangs_up(
    server, make_engine, browser
) -> None:
    """Case 2: a browser calls a Python engine (audio), switches to video; Python hangs up."""
    bob = await open_user(browser, server, "bob")
    alice, ra = await make_engine(
        "alice",
        audio_source=ToneSource(440, level_dbfs=-30),
        video_source=TestPatternSource(320, 240, 15),
    )
    try:
        alice.add_event_listener(
            "onCallReceived", lambda res: asyncio.ensure_future(alice.accept())
        )
        t0 = time.monotonic()
        await bob.run("(e) => e.call('alice', 1, { timeout: 20, userData: 'from the web' })")
        await bob.wait_for("onCallBegin")
        received = ra.of("onCallReceived")[0]
        assert received["userData"] == "from the web" and received["callMediaType"] == 1
        # media really flows: the Python tone (-30 dBFS) reads 60 in the browser
        await wait_until(lambda: _volume_near(bob, "alice", 60), 10, "alice's tone in the browser")
        connect_s = time.monotonic() - t0
        await bob.run("(e) => e.switchCallMediaType(2)")
        await ra.wait_for("onCallMediaTypeChanged")
        changed = await bob.wait_for("onCallMediaTypeChanged")
        assert changed == {"oldCallMediaType": 1, "newCallMediaType": 2}
        # video both ways after the renegotiation the browser asked for
        await ra.wait_for("onUserVideoAvailable", timeout=15)
        await bob.wait_for("onUserVideoAvailable", timeout=15)
        directions = await bob.run(
            """(e) => e.peers.get("alice").pc.getTransceivers().map(
                (t) => [t.receiver.track.kind, t.currentDirection])"""
        )
        assert directions == [["audio", "sendrecv"], ["video", "sendrecv"]]
        await alice.hangup()
        end = await bob.wait_for("onCallEnd")
        assert end["callRole"] == 1 and end["callMediaType"] == 2
        await ra.wait_for("onCallEnd")
        await quiet()
        assert significant(await bob.names()) == [
            "onUserJoin",
            "onCallBegin",
            "onUserAudioAvailable",
            "onCallMediaTypeChanged",
            "onUserVideoAvailable",
            "onUserLeave",
            "onCallEnd",
        ]
        assert ra.names() == [
            "onCallReceived",
            "onCallBegin",
            "onUserJoin",
            "onUserAudioAvailable",
            "onCallMediaTypeChanged",
            "onUserVideoAvailable",
            "onCallEnd",
        ]
        assert_payload_keys(ra)
        await _assert_browser_payload_keys(bob)
        assert await bob.run("(e) => e.callState") == "idle"
        print(f"browser->python: call to audio at the browser {connect_s:.2f} s")
    finally:
        await bob.close()


async def _volume_near(user: BrowserUser, of: str, level: int, tol: int = 4) -> bool:
    maps = [p["volumeMap"] for p in await user.of("onUserVoiceVolumeChanged")]
    return len(maps) >= 3 and all(abs(m.get(of, -99) - level) <= tol for m in maps[-3:])


async def _assert_browser_payload_keys(user: BrowserUser) -> None:
    from callkit import PAYLOAD_KEYS

    for e in await user.events():
        assert set(e["payload"]) == PAYLOAD_KEYS[e["event"]], e


async def _heard(user: BrowserUser, of: str) -> bool:
    return await _max_volume(user, of) > 0


async def _max_volume(user: BrowserUser, of: str, n: int = 12) -> int:
    maps = [p["volumeMap"] for p in await user.of("onUserVoiceVolumeChanged")]
    return max(m.get(of, -1) for m in maps[-n:])


async def test_browser_to_browser_1v1(server, browser) -> None:
    """Case 3a: browser to browser, video; each hears the other's fake microphone."""
    ann = await open_user(browser, server, "ann")
    ben = await open_user(browser, server, "ben")
    try:
        t0 = time.monotonic()
        await ann.run("(e) => e.call('ben', 2)")
        await ben.wait_for("onCallReceived")
        t_accept = time.monotonic()
        await ben.run("(e) => e.accept()")
        await ann.wait_for("onUserVideoAvailable")
        await ben.wait_for("onUserVideoAvailable")
        connect_s = time.monotonic() - t_accept
        for user, of in ((ann, "ben"), (ben, "ann"), (ann, "ann")):
            await wait_until(
                lambda user=user, of=of: _heard(user, of), 10, f"{of}'s beep at {user.user_id}"
            )
        await ben.run("(e) => e.hangup()")
        await ann.wait_for("onCallEnd")
        await ben.wait_for("onCallEnd")
        await quiet()
        assert significant(await ann.names()) == [
            "onUserJoin",
            "onCallBegin",
            "onUserAudioAvailable",
            "onUserVideoAvailable",
            "onUserLeave",
            "onCallEnd",
        ]
        assert significant(await ben.names()) == [
            "onCallReceived",
            "onCallBegin",
            "onUserJoin",
            "onUserAudioAvailable",
            "onUserVideoAvailable",
            "onCallEnd",
        ]
        print(f"browser<->browser: ring {t_accept - t0:.2f} s, accept->video {connect_s:.2f} s")
    finally:
        await ann.close()
        await ben.close()


async def test_group_two_browsers_one_python_late_invitee(server, make_engine, browser) -> None:
    """Case 3b: ann (browser) calls py (Python); ann invites ben (browser) late. Every
    member's volume map has every member, at the right levels."""
    ann = await open_user(browser, server, "ann")
    ben = await open_user(browser, server, "ben")
    py, rp = await make_engine("py", audio_source=ToneSource(440, level_dbfs=-20))
    try:
        py.add_event_listener("onCallReceived", lambda res: asyncio.ensure_future(py.accept()))
        await ann.run("(e) => e.groupCall(['py'], 'grp1', 1)")
        await ann.wait_for("onCallBegin")
        await rp.wait_for("onCallBegin")
        await ann.run("(e) => e.inviteUser(['ben'])")
        received = await ben.wait_for("onCallReceived")
        assert received["callerId"] == "ann" and received["groupId"] == "grp1"
        await ben.run("(e) => e.accept()")
        await ben.wait_for("onCallBegin")
        await rp.wait_for("onUserJoin", count=2)
        members = {"ann", "ben", "py"}
        for user in (ann, ben):
            await wait_until(lambda user=user: _volume_near(user, "py", 80), 10, "py's tone")
            for of in ("ann", "ben"):
                await wait_until(
                    lambda user=user, of=of: _heard(user, of), 10, f"{of} at {user.user_id}"
                )

        async def python_hears_both() -> bool:
            maps = [p["volumeMap"] for p in rp.of("onUserVoiceVolumeChanged")[-12:]]
            return bool(maps) and all(max(m.get(u, 0) for m in maps) > 0 for u in ("ann", "ben"))

        await wait_until(python_hears_both, 10, "both browsers' beeps at py")
        await ben.wait_for("onUserNetworkQualityChanged")
        for user in (ann, ben):
            maps = [p["volumeMap"] for p in await user.of("onUserVoiceVolumeChanged")]
            assert set(maps[-1]) == members, maps[-1]
            assert abs(await user.volume("py") - 80) <= 4, (user.user_id, maps[-5:])
            other = "ben" if user is ann else "ann"
            assert await _max_volume(user, other) > 0, (user.user_id, maps[-12:])
            assert await _max_volume(user, user.user_id) > 0
        py_maps = [p["volumeMap"] for p in rp.of("onUserVoiceVolumeChanged")]
        assert set(py_maps[-1]) == members
        assert recent_volume(rp, "py") == pytest.approx(80, abs=2)
        assert max(m.get("ann", 0) for m in py_maps[-12:]) > 0
        assert max(m.get("ben", 0) for m in py_maps[-12:]) > 0
        qualities = (await ben.of("onUserNetworkQualityChanged"))[-1]["networkQualityList"]
        assert {q["userId"] for q in qualities} == members
        await py.hangup()
        await ann.wait_for("onUserLeave")
        await ben.wait_for("onUserLeave")
        assert await ann.run("(e) => e.callState") == "connected"
        await ann.run("(e) => e.hangup()")
        await ben.wait_for("onCallEnd")
        await ann.wait_for("onCallEnd")
        await _assert_browser_payload_keys(ann)
        await _assert_browser_payload_keys(ben)
    finally:
        await ann.close()
        await ben.close()


async def test_without_fake_ui_mdns_candidates_still_connect(server, make_engine) -> None:
    """Case 4: without --use-fake-ui-for-media-stream (and no permission granted) Chromium
    hides its host candidates behind mDNS names and gets no microphone; the call to a Python
    engine still connects and the browser hears it."""
    py, rp = await make_engine("py", audio_source=ToneSource(440, level_dbfs=-20))
    py.add_event_listener("onCallReceived", lambda res: asyncio.ensure_future(py.accept()))
    async with chromium(fake_ui=False) as no_ui_browser:
        web = await open_user(no_ui_browser, server, "web")
        try:
            await web.run("(e) => e.call('py', 1)")
            await web.wait_for("onCallBegin")
            error = await web.wait_for("onError")
            assert error["code"] == -1101  # the microphone was refused: reported, call goes on
            await wait_until(
                lambda: web.run("(e) => e.peers.get('py')?.pc.connectionState === 'connected'"),
                15,
                "the browser's connection to py",
            )
            sdp = await web.run("(e) => e.peers.get('py').pc.localDescription.sdp")
            hosts = [
                line.split()[4]
                for line in sdp.splitlines()
                if line.startswith("a=candidate") and " typ host" in line
            ]
            assert hosts and all(h.endswith(".local") for h in hosts), hosts
            await wait_until(lambda: _volume_near(web, "py", 80), 10, "py's tone in the browser")
            assert rp.of("onCallBegin")
            await web.run("(e) => e.hangup()")
            await rp.wait_for("onCallEnd")
        finally:
            await web.close()


async def test_browser_quality_follows_simulated_loss(server, make_engine, browser) -> None:
    """The browser's quality levels come from real getStats numbers: 20 % loss on what the
    Python engine sends reads BAD or worse for it in the browser (and for the Python user's
    own uplink, from the browser's receiver reports); a total cut reads DOWN."""
    from callkit.media import NetworkConditions

    web = await open_user(browser, server, "web")
    py, rp = await make_engine("py", audio_source=ToneSource(440, level_dbfs=-20))
    py.add_event_listener("onCallReceived", lambda res: asyncio.ensure_future(py.accept()))
    try:
        await web.run("(e) => e.call('py', 1)")
        await web.wait_for("onCallBegin")

        async def level_of(user: str) -> int:
            reports = await web.of("onUserNetworkQualityChanged")
            entries = reports[-1]["networkQualityList"] if reports else []
            return next((q["quality"] for q in entries if q["userId"] == user), -1)

        async def good() -> bool:
            return await level_of("py") in (1, 2) and await level_of("web") in (1, 2)

        await wait_until(good, 10, "good quality both ways in the browser")
        py.set_network_conditions(NetworkConditions(loss=0.2, seed=3))

        async def lossy() -> bool:
            return await level_of("py") in (4, 5)

        await wait_until(lossy, 12, "py BAD or VERY_BAD in the browser under 20 % loss")
        assert await level_of("web") in (1, 2)  # the browser's own uplink is clean

        async def py_uplink_bad() -> bool:
            reports = rp.of("onUserNetworkQualityChanged")
            return bool(reports) and reports[-1]["networkQualityList"][0]["quality"] in (4, 5)

        await wait_until(py_uplink_bad, 12, "py's own uplink BAD from the browser's reports")
        py.set_network_conditions(NetworkConditions(loss=1.0))

        async def down() -> bool:
            return await level_of("py") == 6

        await wait_until(down, 8, "py DOWN in the browser after a total cut")
        await web.run("(e) => e.hangup()")
        await web.wait_for("onCallEnd")
    finally:
        await web.close()


async def test_without_fake_ui_browser_to_browser_mdns_connects(server) -> None:
    """Case 4, browser to browser: both sides offer only mDNS host candidates."""
    async with chromium(fake_ui=False) as no_ui_browser:
        ann = await open_user(no_ui_browser, server, "ann")
        ben = await open_user(no_ui_browser, server, "ben")
        try:
            await ann.run("(e) => e.call('ben', 1)")
            await ben.wait_for("onCallReceived")
            await ben.run("(e) => e.accept()")
            for user, other in ((ann, "ben"), (ben, "ann")):
                await wait_until(
                    lambda user=user, other=other: user.run(
                        f"(e) => e.peers.get('{other}')?.pc.connectionState === 'connected'"
                    ),
                    15,
                    f"{user.user_id}'s connection to {other}",
                )
                sdp = await user.run(f"(e) => e.peers.get('{other}').pc.localDescription.sdp")
                hosts = [
                    line.split()[4]
                    for line in sdp.splitlines()
                    if line.startswith("a=candidate") and " typ host" in line
                ]
                assert hosts and all(h.endswith(".local") for h in hosts), hosts
            await ann.run("(e) => e.hangup()")
            await ben.wait_for("onCallEnd")
        finally:
            await ann.close()
            await ben.close()


async def test_browser_devices_and_ignore(server, make_engine, browser) -> None:
    """The browser's microphone and camera controls reach the Python side (events, silence,
    no frames); an ignored call shows the caller line busy."""
    web = await open_user(browser, server, "web")
    py, rp = await make_engine(
        "py",
        audio_source=ToneSource(440, level_dbfs=-20),
        video_source=TestPatternSource(320, 240, 15),
    )
    frames: list[float] = []
    py.add_video_tap("web", lambda frame: frames.append(time.monotonic()))
    try:
        await py.call("web", CallMediaType.VIDEO)
        await web.wait_for("onCallReceived")
        await web.run("(e) => e.ignore()")
        assert (await web.wait_for("onCallCancelled")) == {"userId": "web"}
        await rp.wait_for("onUserLineBusy")
        await rp.wait_for("onCallCancelled")
        await asyncio.sleep(0.2)
        await py.call("web", CallMediaType.VIDEO)
        await web.wait_for("onCallReceived", count=2)
        await web.run("(e) => e.accept()")
        await rp.wait_for("onUserVideoAvailable")
        await web.run("(e) => e.closeMicrophone()")
        # (the first one said web joined with the microphone on)
        assert (await rp.wait_for("onUserAudioAvailable", count=2)) == {
            "userId": "web",
            "isAudioAvailable": False,
        }

        async def web_silent() -> bool:
            maps = [p["volumeMap"] for p in rp.of("onUserVoiceVolumeChanged")[-6:]]
            own = [p["volumeMap"]["web"] for p in await web.of("onUserVoiceVolumeChanged")][-6:]
            return len(maps) == 6 and all(m["web"] == 0 for m in maps) and set(own) == {0}

        await wait_until(web_silent, 10, "silence from the closed microphone")
        await web.run("(e) => e.closeCamera()")
        off = await rp.wait_for("onUserVideoAvailable", count=2)
        assert off == {"userId": "web", "isVideoAvailable": False}
        await asyncio.sleep(0.5)
        stopped_at = time.monotonic()
        await asyncio.sleep(1.0)
        assert not [t for t in frames if t > stopped_at], "frames after closeCamera"
        await web.run("(e) => e.openCamera()")
        on = await rp.wait_for("onUserVideoAvailable", count=3)
        assert on == {"userId": "web", "isVideoAvailable": True}
        await wait_until(
            lambda: _later(frames, time.monotonic() - 0.5), 10, "frames after openCamera"
        )
        await web.run("(e) => e.openMicrophone()")
        await rp.wait_for("onUserAudioAvailable", count=3)
        # an audio-only scene refuses the camera
        await web.run("(e) => e.switchCallMediaType(1)")
        await web.wait_for("onCallMediaTypeChanged")
        code = await web.run("(e) => e.closeCamera().then(() => 'ok', (err) => err.code)")
        assert code == -1205
        await web.run("(e) => e.hangup()")
        await rp.wait_for("onCallEnd")
    finally:
        await web.close()


async def _later(times: list[float], since: float) -> bool:
    return any(t > since for t in times)


async def test_python_hears_the_browser_through_inbound_loss(server, make_engine, browser) -> None:
    """The jitter buffer and loss concealment with a real browser on the other end: 10 %
    simulated loss on what the Python engine receives; the browser's beep is still heard, and
    every packet given up became a concealed (or FEC-recovered) frame. The SDPs ask for
    in-band FEC both ways."""
    from callkit.media import NetworkConditions

    web = await open_user(browser, server, "web")
    py, rp = await make_engine("py", audio_source=ToneSource(440, level_dbfs=-20))
    py.add_event_listener("onCallReceived", lambda res: asyncio.ensure_future(py.accept()))
    try:
        await web.run("(e) => e.call('py', 1)")
        await web.wait_for("onCallBegin")

        async def has_session() -> bool:
            return "web" in py.peers

        await wait_until(has_session, 10, "py's session with the browser")
        py.set_network_conditions(NetworkConditions(), inbound=NetworkConditions(loss=0.1, seed=5))
        session = py.peers["web"]
        path = session.audio_receiver
        assert path is not None
        start = len(rp.of("onUserVoiceVolumeChanged"))

        async def concealed() -> bool:
            return path.concealed + path.recovered >= 10

        await wait_until(concealed, 15, "10 lost packets from the browser concealed")

        async def heard() -> bool:
            maps = [p["volumeMap"] for p in rp.of("onUserVoiceVolumeChanged")[start:]]
            return bool(maps) and max(m.get("web", 0) for m in maps) > 0

        await wait_until(heard, 10, "the browser's beep at py through the loss")
        assert path.concealed + path.recovered == path.jitter.lost
        assert path.decoded > 5 * path.jitter.lost  # ~10 % lost: the rest decoded
        assert session.remote_audio is not None
        assert session.remote_audio.frames_concealed == path.concealed + path.recovered
        assert "useinbandfec=1" in session.pc.localDescription.sdp
        assert "useinbandfec=1" in session.pc.remoteDescription.sdp
        print(
            f"browser->python with 10 % loss: {path.decoded} decoded, {path.concealed} "
            f"concealed, {path.recovered} recovered from FEC, jitter hold {path.jitter.hold}"
        )
        await web.run("(e) => e.hangup()")
        await rp.wait_for("onCallEnd")
    finally:
        await web.close()
