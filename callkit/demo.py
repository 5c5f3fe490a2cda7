"""`callkit demo`: an embedded server and engines in one process, real calls over loopback.

Scene 1: Alice places a real video call to Bob, Bob accepts, both talk (tones at different
levels) with live volumes printed, then Alice hangs up.
Scene 2: a group audio call: Alice calls Bob, then invites Carol mid-call; all three hear
each other; they hang up one by one.
Exits 0 with a one-screen summary when every scene went as expected.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from callkit.media import TestPatternSource, ToneSource
from callkit.signaling import SignalingServer
from callkit.signaling.usersig import gen_user_sig

from .engine import CallEngine
from .enums import CallMediaType
from .recorder import PERIODIC, EventRecorder, Recorded

SDK_APP_ID = 1400000001
LOOPBACK = ["127.0.0.1"]
LEVELS = {"alice": -20.0, "bob": -30.0, "carol": -40.0}
TONES = {"alice": 440.0, "bob": 550.0, "carol": 660.0}


def expected_volume(level_dbfs: float) -> int:
    """DESIGN's volume formula, for the summary's "expected" column."""
    return max(0, min(100, round(2 * (level_dbfs + 60))))


class FrameCounter:
    """A video tap (``engine.add_video_tap``) that counts the frames it gets."""

    def __init__(self) -> None:
        self.frames = 0

    def __call__(self, frame: object) -> None:
        self.frames += 1


@dataclass
class SceneResult:
    """What one scene saw."""

    title: str
    events: dict[str, list[str]] = field(default_factory=dict)
    volumes: dict[str, dict[str, float]] = field(default_factory=dict)  # listener -> talker
    quality: dict[str, dict[str, int]] = field(default_factory=dict)
    durations: dict[str, int] = field(default_factory=dict)
    video_frames: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@dataclass
class DemoResult:
    """Every scene's result; ``ok`` when nothing went wrong."""

    scenes: list[SceneResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.scenes) and not any(s.problems for s in self.scenes)


class Printer:
    """Prints the event stream; volume reports at most once a second per user."""

    def __init__(self, out: TextIO, start: float) -> None:
        self.out = out
        self.start = start
        self._last_volume: dict[str, float] = {}

    def __call__(self, rec: Recorded) -> None:
        t = rec.at - self.start
        if rec.event == "onUserVoiceVolumeChanged":
            if rec.at - self._last_volume.get(rec.user_id, 0.0) < 1.0:
                return
            self._last_volume[rec.user_id] = rec.at
            text = "  ".join(
                f"{u}:{v:3d} {'#' * (v // 10):<10}" for u, v in rec.payload["volumeMap"].items()
            )
            print(f"{t:6.2f}s {rec.user_id:>6}  volume   {text}", file=self.out)
        elif rec.event == "onUserNetworkQualityChanged":
            text = "  ".join(
                f"{e['userId']}:{e['quality']}" for e in rec.payload["networkQualityList"]
            )
            print(f"{t:6.2f}s {rec.user_id:>6}  quality  {text}  (1 = excellent)", file=self.out)
        else:
            print(f"{t:6.2f}s {rec.user_id:>6}  {rec.event} {rec.payload}", file=self.out)


class Demo:
    """The demo's engines, recorders and scenes."""

    def __init__(self, url: str, secret: str, out: TextIO) -> None:
        self.url, self.secret, self.out = url, secret, out
        printer = Printer(out, time.monotonic())
        self.engines = {
            name: CallEngine(
                url,
                audio_source=ToneSource(TONES[name], level_dbfs=LEVELS[name]),
                video_source=TestPatternSource(320, 240, 15),
                ice_addresses=LOOPBACK,
            )
            for name in LEVELS
        }
        self.recs = {
            name: EventRecorder(e, name, on_event=printer) for name, e in self.engines.items()
        }

    async def login(self) -> None:
        for name, engine in self.engines.items():
            await engine.init(SDK_APP_ID, name, gen_user_sig(SDK_APP_ID, self.secret, name))

    async def video_call(self, seconds: float) -> SceneResult:
        scene = SceneResult("1v1 video call: alice -> bob")
        self._title(scene)
        alice, bob = self.engines["alice"], self.engines["bob"]
        pairs = (("alice", "bob"), ("bob", "alice"))
        counters = {name: FrameCounter() for name, _ in pairs}
        for name, other in pairs:  # each counts the other's decoded frames
            self.engines[name].add_video_tap(other, counters[name])
        await alice.call("bob", CallMediaType.VIDEO)
        await self.recs["bob"].wait_for("onCallReceived")
        await bob.accept()
        await self.recs["alice"].wait_for("onCallBegin")
        await asyncio.sleep(seconds)
        for name, other in pairs:
            self.engines[name].remove_video_tap(other, counters[name])
            scene.video_frames[name] = counters[name].frames
            if scene.video_frames[name] == 0:
                scene.problems.append(f"{name} received no video")
        await alice.hangup()
        await self._ended(scene, ["alice", "bob"])
        return scene

    async def group_call(self, seconds: float) -> SceneResult:
        scene = SceneResult("group audio call: alice -> bob, then carol invited mid-call")
        self._title(scene)
        alice, bob, carol = (self.engines[n] for n in ("alice", "bob", "carol"))
        await alice.group_call(["bob"], "demo-group", CallMediaType.AUDIO)
        await self.recs["bob"].wait_for("onCallReceived")
        await bob.accept()
        await self.recs["alice"].wait_for("onCallBegin")
        await asyncio.sleep(seconds / 3)
        await alice.invite_user(["carol"])
        await self.recs["carol"].wait_for("onCallReceived")
        await carol.accept()
        await self.recs["bob"].wait_for("onUserJoin", lambda p: p["userId"] == "carol")
        await asyncio.sleep(seconds)
        for engine in (carol, bob):
            await engine.hangup()
        await self._ended(scene, ["alice", "bob", "carol"])
        return scene

    def _title(self, scene: SceneResult) -> None:
        print(f"\n== {scene.title}", file=self.out)
        for rec in self.recs.values():
            rec.clear()

    async def _ended(self, scene: SceneResult, names: list[str]) -> None:
        for name in names:
            end = await self.recs[name].wait_for("onCallEnd")
            scene.durations[name] = end["totalTime"]
        for name in names:
            rec = self.recs[name]
            scene.events[name] = rec.names()
            maps = [p["volumeMap"] for p in rec.of("onUserVoiceVolumeChanged")]
            scene.volumes[name] = {}
            for talker in names:
                heard = [m[talker] for m in maps if m.get(talker, 0) > 0]
                scene.volumes[name][talker] = statistics.median(heard) if heard else 0.0
                if (
                    talker != name
                    and abs(scene.volumes[name][talker] - expected_volume(LEVELS[talker])) > 6
                ):
                    scene.problems.append(
                        f"{name} heard {talker} at volume {scene.volumes[name][talker]}"
                    )
            qualities = rec.of("onUserNetworkQualityChanged")
            if qualities:
                scene.quality[name] = {
                    e["userId"]: e["quality"] for e in qualities[-1]["networkQualityList"]
                }

    async def close(self) -> None:
        for engine in self.engines.values():
            await engine.destroy()


async def run_demo(talk_seconds: float = 4.0, out: TextIO = sys.stdout) -> DemoResult:
    """Run both scenes; returns what they saw (``result.ok`` is False if anything failed)."""
    secret = secrets.token_hex(32)
    server = SignalingServer(SDK_APP_ID, secret)
    url = await server.start("127.0.0.1", 0)
    print(
        f"signaling server on {url}; tones: "
        + ", ".join(f"{n} {LEVELS[n]:.0f} dBFS" for n in LEVELS),
        file=out,
    )
    demo = Demo(url, secret, out)
    result = DemoResult()
    try:
        await demo.login()
        result.scenes.append(await demo.video_call(talk_seconds))
        result.scenes.append(await demo.group_call(talk_seconds))
    except Exception as exc:  # the demo reports, it does not crash
        failed = SceneResult("aborted")
        failed.problems.append(f"{type(exc).__name__}: {exc}")
        result.scenes.append(failed)
    finally:
        await demo.close()
        await server.stop()
    _summarise(result, out)
    return result


def _summarise(result: DemoResult, out: TextIO) -> None:
    print("\n== summary", file=out)
    for scene in result.scenes:
        print(f"{scene.title}", file=out)
        for name, events in scene.events.items():
            heard = ", ".join(
                f"{t} {v:.0f}/{expected_volume(LEVELS[t])}" for t, v in scene.volumes[name].items()
            )
            frames = (
                f"; video frames {scene.video_frames[name]}" if name in scene.video_frames else ""
            )
            print(f"  {name:>5}: {len(events)} events ({', '.join(events)})", file=out)
            print(
                f"         volume heard/expected: {heard}; quality {scene.quality.get(name)}; "
                f"totalTime {scene.durations.get(name, '-')} s{frames}",
                file=out,
            )
        for problem in scene.problems:
            print(f"  PROBLEM: {problem}", file=out)
    print("result: " + ("OK" if result.ok else "FAILED"), file=out)


def main(talk_seconds: float = 4.0) -> int:
    """Entry point of ``callkit demo``."""
    return 0 if asyncio.run(run_demo(talk_seconds)).ok else 1


__all__ = ["PERIODIC", "DemoResult", "SceneResult", "main", "run_demo"]
