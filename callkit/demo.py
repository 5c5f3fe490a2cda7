"""`callkit demo`: an embedded server and engines in one process, real calls over loopback.

Alice places a real video call to Bob, Bob accepts, both talk (tones at different levels)
with live volumes printed, then Alice hangs up. Exits 0 with a one-screen summary.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from media import TestPatternSource, ToneSource
from signaling import SignalingServer
from signaling.usersig import gen_user_sig

from .engine import CallEngine
from .enums import CallMediaType
from .recorder import EventRecorder, Recorded

SDK_APP_ID = 1400000001
LOOPBACK = ["127.0.0.1"]


@dataclass
class DemoResult:
    """What the demo saw, for the summary and for tests."""

    events: dict[str, list[str]] = field(default_factory=dict)
    volumes: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    durations: dict[str, int] = field(default_factory=dict)
    video_frames: dict[str, int] = field(default_factory=dict)
    ok: bool = True
    problems: list[str] = field(default_factory=list)


class Printer:
    """Prints the event stream; volume reports are printed at most once a second per user."""

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
            bars = "  ".join(f"{u}:{v:3d} {'#' * (v // 10):<10}"
                             for u, v in rec.payload["volumeMap"].items())
            print(f"{t:6.2f}s  {rec.user_id:>6}  volume   {bars}", file=self.out)
            return
        print(f"{t:6.2f}s  {rec.user_id:>6}  {rec.event} {rec.payload}", file=self.out)


async def run_demo(talk_seconds: float = 4.0, out: TextIO = sys.stdout) -> DemoResult:
    """Run the demo; returns what it saw (``result.ok`` is False if anything went wrong)."""
    secret = secrets.token_hex(32)
    server = SignalingServer(SDK_APP_ID, secret)
    url = await server.start("127.0.0.1", 0)
    start = time.monotonic()
    printer = Printer(out, start)
    print(f"signaling server on {url}", file=out)
    levels = {"alice": -20.0, "bob": -30.0}
    engines = {
        name: CallEngine(url, audio_source=ToneSource(440.0 if name == "alice" else 660.0,
                                                      level_dbfs=level),
                         video_source=TestPatternSource(320, 240, 15), ice_addresses=LOOPBACK)
        for name, level in levels.items()
    }
    recs = {name: EventRecorder(e, name, on_event=printer) for name, e in engines.items()}
    result = DemoResult()
    try:
        for name, engine in engines.items():
            await engine.init(SDK_APP_ID, name, gen_user_sig(SDK_APP_ID, secret, name))
        alice, bob = engines["alice"], engines["bob"]
        print(f"== 1v1 video call: alice ({levels['alice']:.0f} dBFS) -> bob "
              f"({levels['bob']:.0f} dBFS)", file=out)
        await alice.call("bob", CallMediaType.VIDEO)
        await recs["bob"].wait_for("onCallReceived")
        await bob.accept()
        await recs["alice"].wait_for("onCallBegin")
        await asyncio.sleep(talk_seconds)
        for name, engine in engines.items():
            peer = engine.peers.get("bob" if name == "alice" else "alice")
            video = peer.remote_video if peer is not None else None
            result.video_frames[name] = video.frames_received if video is not None else 0
        await alice.hangup()
        for name in engines:
            end = await recs[name].wait_for("onCallEnd")
            result.durations[name] = end["totalTime"]
    except Exception as exc:  # the demo reports, it does not crash
        result.ok = False
        result.problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        for engine in engines.values():
            await engine.destroy()
        await server.stop()
    _summarise(result, recs, levels, out)
    return result


def _summarise(result: DemoResult, recs: dict[str, EventRecorder], levels: dict[str, float],
               out: TextIO) -> None:
    for name, rec in recs.items():
        result.events[name] = rec.names()
        per_user: dict[str, list[int]] = {}
        for payload in rec.of("onUserVoiceVolumeChanged"):
            for user, vol in payload["volumeMap"].items():
                per_user.setdefault(user, []).append(vol)
        result.volumes[name] = per_user
    print("\n== summary", file=out)
    for name, rec in recs.items():
        print(f"{name}: events {', '.join(result.events[name])}", file=out)
        for user, vols in result.volumes[name].items():
            talk = [v for v in vols if v > 0] or [0]
            expected = max(0, min(100, round(2 * (levels[user] + 60))))
            print(f"  {name} hears {user:>5}: median volume {statistics.median(talk):5.1f} "
                  f"(tone {levels[user]:.0f} dBFS -> expected {expected})", file=out)
        print(f"  video frames received: {result.video_frames.get(name, 0)}; "
              f"call duration (onCallEnd.totalTime): {result.durations.get(name, '-')} s",
              file=out)
    for name in recs:
        if "onCallBegin" not in result.events[name] or "onCallEnd" not in result.events[name]:
            result.ok = False
            result.problems.append(f"{name} did not see the call begin and end")
        if result.video_frames.get(name, 0) == 0:
            result.ok = False
            result.problems.append(f"{name} received no video")
    print("result: " + ("OK" if result.ok else "FAILED: " + "; ".join(result.problems)), file=out)


def main(talk_seconds: float = 4.0) -> int:
    """Entry point of ``callkit demo``."""
    result = asyncio.run(run_demo(talk_seconds))
    return 0 if result.ok else 1


