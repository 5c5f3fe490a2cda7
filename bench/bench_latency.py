"""Audio frame latency before, during and after a 2 % loss episode: aiortc's jitter buffer vs
callkit's AudioJitterBuffer, same run, on loopback.

Two aiortc peers per variant, 127.0.0.1; the sender's track stamps every 20 ms frame with the
time it hands it to aiortc (which then encodes, encrypts and sends it); the receiver reads its
track and takes, per decoded frame, ``now - stamp`` (the same pts comes back: aiortc maps the
first RTP timestamp to 0, like the sender's first pts). That is the delay the stack adds from
capture to decoded audio, without a sound card. Phases: ``--clean`` s, ``--lossy`` s with 2 %
random loss on the sender's datagrams (callkit's NetworkShaper), then 5 s clean; printed: p50
of each phase (the last is the issue's "within 5 s after a 2 % loss episode") per variant and
the ratio. The only difference between the variants is the receiver's jitter buffer (what
callkit's peer sessions install through ``callkit.media._compat.use_jitter_buffer``).

Run from the repo root:  python bench/bench_latency.py [--clean 3] [--lossy 4] [--seed 14]
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import os
import statistics
import sys
import time

import av
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from callkit.media import _compat, icehooks
from callkit.media.jitter import AudioJitterBuffer
from callkit.media.netsim import NetworkConditions, NetworkShaper
from callkit.media.sources import ToneSource

RATE, FRAME = 48000, 960
AFTER = 5.0


class StampedTone(MediaStreamTrack):
    """48 kHz stereo tone, paced every 20 ms; remembers when each pts was handed out."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.source = ToneSource(440.0, -20.0, channels=2)
        self.sent: dict[int, float] = {}
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += FRAME
            wait = self._start + self._pts / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        data = np.ascontiguousarray(self.source.read(FRAME)).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout="stereo")
        frame.sample_rate, frame.pts = RATE, self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self.sent[self._pts] = time.monotonic()
        return frame


async def run(adaptive: bool, clean: float, lossy: float, seed: int) -> list[float]:
    """p50 latency (ms) of the clean, lossy and after phases."""
    shaper = NetworkShaper()
    tone = StampedTone()
    pc1, pc2 = (RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2))
    samples: list[tuple[float, float]] = []  # (arrival, latency ms)
    reader: list[asyncio.Task[None]] = []

    def on_track(track: MediaStreamTrack) -> None:
        async def read() -> None:
            try:
                while True:
                    frame = await track.recv()
                    now = time.monotonic()
                    stamp = tone.sent.get(frame.pts)
                    if stamp is not None:
                        samples.append((now, (now - stamp) * 1000))
            except MediaStreamError:
                pass

        reader.append(asyncio.ensure_future(read()))

    try:
        pc1.addTrack(tone)
        pc2.on("track", on_track)
        icehooks.attach(pc1, host_addresses=["127.0.0.1"], shaper=shaper)
        await pc1.setLocalDescription(await pc1.createOffer())
        await pc2.setRemoteDescription(pc1.localDescription)
        if adaptive:
            _compat.use_jitter_buffer(pc2.getReceivers()[0], AudioJitterBuffer())
        icehooks.attach(pc2, host_addresses=["127.0.0.1"])
        await pc2.setLocalDescription(await pc2.createAnswer())
        await pc1.setRemoteDescription(pc2.localDescription)
        deadline = time.monotonic() + 30
        while not samples:
            if time.monotonic() > deadline:
                raise TimeoutError("no audio within 30 s")
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await asyncio.sleep(clean)
        t1 = time.monotonic()
        shaper.set_conditions(NetworkConditions(loss=0.02, seed=seed))
        await asyncio.sleep(lossy)
        shaper.set_conditions(NetworkConditions())
        t2 = time.monotonic()
        await asyncio.sleep(AFTER)
        t3 = time.monotonic()
        phases = [(t0 + 0.5, t1), (t1, t2), (t2, t3)]
        return [
            statistics.median([lat for at, lat in samples if a <= at < b] or [float("nan")])
            for a, b in phases
        ]
    finally:
        for task in reader:
            task.cancel()
        await pc1.close()
        await pc2.close()


async def main(clean: float, lossy: float, seed: int) -> None:
    aiortc_p50 = await run(False, clean, lossy, seed)
    ours_p50 = await run(True, clean, lossy, seed)
    print(f"{'p50 frame latency, ms':<28} {'aiortc':>8} {'callkit':>8} {'ratio':>6}")
    names = ("clean", "during 2 % loss", f"{AFTER:.0f} s after the loss")
    for name, a, o in zip(names, aiortc_p50, ours_p50, strict=True):
        print(f"{name:<28} {a:>8.1f} {o:>8.1f} {o / a:>6.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", type=float, default=3.0, help="seconds before the loss")
    parser.add_argument("--lossy", type=float, default=4.0, help="seconds of 2 %% loss")
    parser.add_argument("--seed", type=int, default=14, help="seed of the loss pattern")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    asyncio.run(main(args.clean, args.lossy, args.seed))
