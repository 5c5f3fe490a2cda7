"""Mouth-to-ear audio latency before, during and after a 2 % loss episode, with a playout
clock: raw aiortc vs callkit's receive path, same run, N streams at once, on loopback.

Per variant, N pairs of aiortc peers on 127.0.0.1; each sender's track stamps every 20 ms
frame with the time it hands it to aiortc (which encodes, encrypts and sends it). Each
receiver feeds a simulated sound card: a FIFO of 20 ms frames that a clock pulls one frame
from every 20 ms, starting ``--prebuffer-ms`` after the first frame arrived, and plays
silence when the FIFO is empty (an underrun: everything after it plays 20 ms later, as on a
real device that never skips). Mouth-to-ear of a frame = when the card plays it - when it was
captured. Also printed: frame latency (decoded frame - capture, no sound card).

* raw aiortc: aiortc's receiver as it is (jitter buffer with prefetch 4 and capacity 16,
  decoder thread); the card gets the frames ``track.recv()`` returns (a lost packet is a
  missing frame);
* callkit: the receive path callkit's peer sessions install
  (:class:`callkit.media.receiver.AudioReceiver`: adaptive jitter buffer, libopus in the event
  loop, a concealed frame for every packet given up).

Phases: ``--clean`` s, ``--lossy`` s with 2 % random loss on every sender's datagrams
(callkit's NetworkShaper), then 5 s clean. Printed per N: the p50 of each phase (the last is
the issue's "within 5 s after a 2 % loss episode") per variant and the ratio, plus underruns.

Run from the repo root:  python bench/bench_latency.py [--calls 1 4 8 16 24] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import fractions
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import av
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from callkit.media import _compat, icehooks
from callkit.media.netsim import NetworkConditions, NetworkShaper
from callkit.media.receiver import AudioReceiver
from callkit.media.sources import ToneSource

RATE, FRAME = 48000, 960
PERIOD = FRAME / RATE
AFTER = 5.0
#: most frames a simulated sound card holds (bounded; never reached on loopback)
MAX_FIFO = 500


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


class SoundCard:
    """Plays one 20 ms frame every 20 ms from a FIFO, from ``prebuffer`` s after the first
    frame; records ``(played_at, mouth_to_ear_ms)`` per frame and the times of underruns."""

    def __init__(self, sent: dict[int, float], prebuffer: float) -> None:
        self.sent = sent
        self.prebuffer = prebuffer
        self.fifo: collections.deque[int] = collections.deque(maxlen=MAX_FIFO)
        self.played: list[tuple[float, float]] = []
        self.decoded: list[tuple[float, float]] = []
        self.underruns: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def push(self, pts: int) -> None:
        now = time.monotonic()
        stamp = self.sent.get(pts)
        if stamp is not None:
            self.decoded.append((now, (now - stamp) * 1000))
        self.fifo.append(pts)
        if self._task is None:
            self._task = asyncio.ensure_future(self._run(now + self.prebuffer))

    async def _run(self, start: float) -> None:
        tick = 0
        while True:
            wait = start + tick * PERIOD - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            tick += 1
            now = time.monotonic()
            if not self.fifo:
                self.underruns.append(now)
                continue
            stamp = self.sent.get(self.fifo.popleft())
            if stamp is not None:
                self.played.append((now, (now - stamp) * 1000))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _callkit_feed(path: AudioReceiver, card: SoundCard) -> None:
    """Label what the receive path decodes with the sender's pts: a decoded frame is the packet
    the jitter buffer handed out; the concealed frames just before it stand for the packets
    right before that one."""
    push = path.jitter.push
    state: dict[str, Any] = {"first": None, "out": None, "pending": 0}

    def labelled_push(packet: Any) -> tuple[int, Any]:
        given_up, out = push(packet)
        if out is not None:
            if state["first"] is None:
                state["first"] = out.timestamp
            state["out"] = (out.timestamp - state["first"]) % (1 << 32)
        return given_up, out

    def sink(samples: np.ndarray, rate: int, concealed: bool) -> None:
        if concealed:
            state["pending"] += 1
            return
        pts = state["out"]
        for back in range(state["pending"], 0, -1):
            card.push(pts - back * FRAME)
        state["pending"] = 0
        card.push(pts)

    path.jitter.push = labelled_push  # type: ignore[method-assign]
    path.sink = sink


async def run(
    calls: int, callkit: bool, clean: float, lossy: float, seed: int, prebuffer: float
) -> tuple[list[float], list[float], list[int]]:
    """Per phase: p50 mouth-to-ear (ms), p50 frame latency (ms), underruns (all streams)."""
    shaper = NetworkShaper()
    pcs: list[RTCPeerConnection] = []
    cards: list[SoundCard] = []
    readers: list[asyncio.Task[None]] = []

    def reader(card: SoundCard) -> Callable[[MediaStreamTrack], None]:
        def on_track(track: MediaStreamTrack) -> None:
            async def read() -> None:
                try:
                    while True:
                        card.push((await track.recv()).pts)
                except MediaStreamError:
                    pass

            readers.append(asyncio.ensure_future(read()))

        return on_track

    try:
        for _ in range(calls):
            tone = StampedTone()
            card = SoundCard(tone.sent, prebuffer)
            cards.append(card)
            pc1, pc2 = (RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2))
            pcs += [pc1, pc2]
            pc1.addTrack(tone)
            if not callkit:
                pc2.on("track", reader(card))
            icehooks.attach(pc1, host_addresses=["127.0.0.1"], shaper=shaper)
            await pc1.setLocalDescription(await pc1.createOffer())
            await pc2.setRemoteDescription(pc1.localDescription)
            if callkit:
                receiver = pc2.getReceivers()[0]
                path = AudioReceiver(receiver)
                _callkit_feed(path, card)
                _compat.use_jitter_buffer(receiver, path)
            icehooks.attach(pc2, host_addresses=["127.0.0.1"])
            await pc2.setLocalDescription(await pc2.createAnswer())
            await pc1.setRemoteDescription(pc2.localDescription)
        deadline = time.monotonic() + 60
        while not all(card.played for card in cards):
            if time.monotonic() > deadline:
                raise TimeoutError("no audio played within 60 s")
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

        def p50(series: str, a: float, b: float) -> float:
            values = [v for c in cards for at, v in getattr(c, series) if a <= at < b]
            return statistics.median(values) if values else float("nan")

        return (
            [p50("played", a, b) for a, b in phases],
            [p50("decoded", a, b) for a, b in phases],
            [sum(a <= t < b for c in cards for t in c.underruns) for a, b in phases],
        )
    finally:
        for card in cards:
            card.stop()
        for task in readers:
            task.cancel()
        await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)


async def main(ns: Sequence[int], clean: float, lossy: float, seed: int, prebuffer: float) -> None:
    names = ("clean", "during 2 % loss", f"{AFTER:.0f} s after")
    print(
        f"{'N':>3} {'phase':<16} | {'mouth-to-ear p50 ms: aiortc':>27} {'callkit':>8} "
        f"{'ratio':>6} | {'frame p50 ms: aiortc':>20} {'callkit':>8} | "
        f"{'underruns: aiortc':>17} {'callkit':>8}"
    )
    for n in ns:
        raw = await run(n, False, clean, lossy, seed, prebuffer)
        ours = await run(n, True, clean, lossy, seed, prebuffer)
        for i, name in enumerate(names):
            print(
                f"{n:>3} {name:<16} | {raw[0][i]:>27.1f} {ours[0][i]:>8.1f} "
                f"{ours[0][i] / raw[0][i]:>6.2f} | {raw[1][i]:>20.1f} {ours[1][i]:>8.1f} | "
                f"{raw[2][i]:>17} {ours[2][i]:>8}",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="*", help="the list of N (streams at once)")
    parser.add_argument("--quick", action="store_true", help="N = 1 only")
    parser.add_argument("--clean", type=float, default=3.0, help="seconds before the loss")
    parser.add_argument("--lossy", type=float, default=4.0, help="seconds of 2 %% loss")
    parser.add_argument("--seed", type=int, default=14, help="seed of the loss pattern")
    parser.add_argument(
        "--prebuffer-ms", type=float, default=20.0, help="sound card start after 1st frame"
    )
    args = parser.parse_args()
    ns = args.calls or ([1] if args.quick else [1, 4, 8, 16, 24])
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    asyncio.run(main(ns, args.clean, args.lossy, args.seed, args.prebuffer_ms / 1000))
