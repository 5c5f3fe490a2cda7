"""Bidirectional 1v1 audio calls on one pinned core: raw aiortc peers vs callkit engines.

The whole process (event loop, aiortc's encoder/decoder threads) is pinned to one CPU with
``os.sched_setaffinity``. For each N, the same run first holds N raw-aiortc calls, then N
callkit calls, and measures over a steady window:

* frames delivered: audio frames decoded by the receivers (not counting callkit's concealed
  ones) / frames sent at 50 per second per direction (2 N streams); >= 98 % is the issue's bar;
* CPU per call: process CPU time (all threads) over the window / wall time / N, in % of a core;
* the ratio callkit / raw of both.

raw aiortc: two ``RTCPeerConnection`` per call, each sending a 48 kHz stereo 440 Hz tone
(precomputed, paced every 20 ms like aiortc's ``AudioStreamTrack``) and reading the remote
track in a loop that only counts frames. callkit: two logged-in ``CallEngine`` per call, a
``ToneSource`` each, through a ``SignalingServer`` in the same process, with volume (0.3 s)
and quality (2 s) reports on, as an application gets them; frames are counted by the
engines' own receivers. Both gather ICE on 127.0.0.1 only.

Run from the repo root:  python bench/bench_calls_per_core.py [--quick] [--cpu N]
(--quick: N = 1, 4 and a 3 s window; default N = 1, 4, 8, 16, 24 and a 6 s window).
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import av
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from bench._common import until
from callkit import CallEngine, CallMediaType
from callkit.media import ToneSource, icehooks
from callkit.recorder import EventRecorder
from callkit.signaling import SignalingServer
from callkit.signaling.usersig import gen_user_sig

RATE = 48000
FRAME = RATE // 50  # 20 ms
LOOPBACK = ["127.0.0.1"]
APP_ID, SECRET = 1400000001, "bench-calls-per-core-secret"
SETUP_TIMEOUT = 60.0


@dataclass
class Result:
    n: int
    delivered: float  # fraction of the frames sent that were decoded
    cpu_per_call: float  # % of one core


class RawTone(MediaStreamTrack):
    """A 48 kHz stereo 440 Hz tone, paced like aiortc's AudioStreamTrack."""

    kind = "audio"
    _period = np.repeat(
        np.rint(3276.7 * math.sqrt(2) * np.sin(2 * math.pi * 440 * np.arange(1200) / RATE)),
        2,
    ).astype(np.int16)

    def __init__(self) -> None:
        super().__init__()
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            self._pts += FRAME
            wait = self._start + self._pts / RATE - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
        offset = self._pts % 1200 * 2
        data = np.roll(self._period, -offset)[: FRAME * 2].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout="stereo")
        frame.sample_rate, frame.pts = RATE, self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        return frame


async def _window(
    counts: Callable[[], int], streams: int, warmup: float, seconds: float, n: int
) -> Result:
    await asyncio.sleep(warmup)
    c0, cpu0, t0 = counts(), time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    c1, cpu1, t1 = counts(), time.process_time(), time.monotonic()
    wall = t1 - t0
    return Result(n, (c1 - c0) / (streams * wall * 50), (cpu1 - cpu0) / wall / n * 100)


async def raw_calls(n: int, warmup: float, seconds: float) -> Result:
    """N raw-aiortc calls (2 N peer connections, audio both ways)."""
    pcs: list[RTCPeerConnection] = []
    received: list[int] = []
    readers: list[asyncio.Task[None]] = []

    def on_track(track: MediaStreamTrack) -> None:
        index = len(received)
        received.append(0)

        async def read() -> None:
            try:
                while True:
                    await track.recv()
                    received[index] += 1
            except MediaStreamError:
                pass

        readers.append(asyncio.ensure_future(read()))

    try:
        for _ in range(n):
            a, b = (RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2))
            pcs += [a, b]
            for pc in (a, b):
                pc.addTrack(RawTone())
                pc.on("track", on_track)
            icehooks.attach(a, host_addresses=LOOPBACK)
            await a.setLocalDescription(await a.createOffer())
            await b.setRemoteDescription(a.localDescription)
            icehooks.attach(b, host_addresses=LOOPBACK)
            await b.setLocalDescription(await b.createAnswer())
            await a.setRemoteDescription(b.localDescription)
        await until(lambda: len(received) == 2 * n and all(received), "raw audio flowing")
        return await _window(lambda: sum(received), 2 * n, warmup, seconds, n)
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)


async def callkit_calls(n: int, warmup: float, seconds: float) -> Result:
    """N callkit calls (2 N engines logged into one in-process server)."""
    server = SignalingServer(sdk_app_id=APP_ID, secret_key=SECRET)
    await server.start("127.0.0.1", 0)
    assert server.url is not None
    engines: list[CallEngine] = []
    try:
        for i in range(n):
            pair = []
            for side in ("a", "b"):
                user = f"{side}{i}"
                engine = CallEngine(
                    server.url, audio_source=ToneSource(440.0, -20.0), ice_addresses=LOOPBACK
                )
                engines.append(engine)
                rec = EventRecorder(engine, user)
                await engine.init(APP_ID, user, gen_user_sig(APP_ID, SECRET, user))
                pair.append((engine, rec))
            (a, rec_a), (b, rec_b) = pair
            await a.call(f"b{i}", CallMediaType.AUDIO)
            await rec_b.wait_for("onCallReceived", timeout=SETUP_TIMEOUT)
            await b.accept()
            await rec_a.wait_for("onCallBegin", timeout=SETUP_TIMEOUT)

        def receivers() -> list[int]:
            counts = []
            for engine in engines:
                for session in engine.peers.values():
                    remote = session.remote_audio
                    # decoded frames only: a frame concealing a lost packet is not delivered
                    counts.append(
                        remote.frames_received - remote.frames_concealed
                        if remote is not None
                        else 0
                    )
            return counts

        await until(lambda: len(c := receivers()) == 2 * n and all(c), "callkit audio flowing")
        return await _window(lambda: sum(receivers()), 2 * n, warmup, seconds, n)
    finally:
        await asyncio.gather(*(e.destroy() for e in engines), return_exceptions=True)
        await server.stop()


def pin(cpu: int | None) -> int:
    """Pin this process (and the threads it starts later) to one CPU; return it."""
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[-1] if cpu is None else cpu
    os.sched_setaffinity(0, {chosen})
    return chosen


async def main(ns: Sequence[int], warmup: float, seconds: float) -> None:
    print(
        f"{'N':>3} | {'raw frames':>10} {'raw cpu/call':>12} | {'callkit frames':>14} "
        f"{'callkit cpu/call':>16} | {'cpu ratio':>9} {'frames ratio':>12}"
    )
    for n in ns:
        raw = await raw_calls(n, warmup, seconds)
        await asyncio.sleep(1.0)
        ck = await callkit_calls(n, warmup, seconds)
        await asyncio.sleep(1.0)
        print(
            f"{n:>3} | {raw.delivered:>10.1%} {raw.cpu_per_call:>11.2f}% | "
            f"{ck.delivered:>14.1%} {ck.cpu_per_call:>15.2f}% | "
            f"{ck.cpu_per_call / raw.cpu_per_call:>9.2f} {ck.delivered / raw.delivered:>12.3f}",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 1, 4 and a 3 s window")
    parser.add_argument("--cpu", type=int, default=None, help="the CPU to pin to (default: last)")
    parser.add_argument("--calls", type=int, nargs="*", help="override the list of N")
    args = parser.parse_args()
    core = pin(args.cpu)
    ns = args.calls or ([1, 4] if args.quick else [1, 4, 8, 16, 24])
    warmup, seconds = (1.5, 3.0) if args.quick else (3.0, 6.0)
    print(
        f"pinned to CPU {core}; load average {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} CPUs; window {seconds:.0f} s after {warmup:.1f} s warm-up"
    )
    asyncio.run(main(ns, warmup, seconds))
