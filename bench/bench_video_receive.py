"""CPU of the video receive path: aiortc's decoder thread per receiver vs callkit's VideoReceiver.

N one-way VP8 streams (640x480 test pattern, ``--fps``, default 15) between aiortc peer
connections in one process pinned to one core. The senders share one encoder (callkit's
``EncoderPool``), so the send side is the same small cost in both runs and the difference is
the receivers'. Each receiver's frames are counted by callkit's ``RemoteVideo``:

* ``aiortc path``: aiortc's jitter buffer, its decoder thread (a ``queue.Queue`` in,
  ``run_coroutine_threadsafe`` out), the track queue, ``RemoteVideo`` reading ``recv()``;
* ``callkit path``: :class:`callkit.media.videoreceiver.VideoReceiver` (the same jitter
  buffer and decoder, the decode in the event loop while it is short and within budget,
  ``RemoteVideo.feed``).

The two runs alternate (A B A B); printed: CPU per stream (% of a core), frames decoded per
stream per second, the ratio, and for the callkit path how many frames went to the worker
thread and the longest decode in the loop (CPU time).

Run from the repo root:  python bench/bench_video_receive.py [--streams 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aiortc import RTCConfiguration, RTCPeerConnection
from bench_calls_per_core import LOOPBACK, pin

from callkit.media import TestPatternSource, _compat, icehooks
from callkit.media.encoding import EncoderPool
from callkit.media.tracks import LocalVideo, RemoteVideo
from callkit.media.videoreceiver import VideoReceiver


async def run(
    streams: int, in_loop: bool, fps: float, warmup: float, seconds: float
) -> tuple[float, float, dict[str, float]]:
    """(CPU per stream in % of a core, frames per stream per second, callkit path counters)."""
    video = LocalVideo(TestPatternSource(640, 480, fps))
    pool = EncoderPool()
    pcs: list[RTCPeerConnection] = []
    remotes: list[RemoteVideo] = []
    paths: list[VideoReceiver] = []

    def on_track(track: Any) -> None:
        remote = RemoteVideo(track)
        remotes.append(remote)
        remote.start()

    try:
        for _ in range(streams):
            a, b = (RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2))
            pcs += [a, b]
            pool.attach(a.addTrack(video.subscribe()))
            b.on("track", on_track)
            icehooks.attach(a, host_addresses=LOOPBACK)
            await a.setLocalDescription(await a.createOffer())
            await b.setRemoteDescription(a.localDescription)
            if in_loop:  # the track event came with the offer
                path = VideoReceiver(b.getReceivers()[0], sink=remotes[-1].feed)
                paths.append(path)
                _compat.use_video_receiver(b.getReceivers()[0], path)
            icehooks.attach(b, host_addresses=LOOPBACK)
            await b.setLocalDescription(await b.createAnswer())
            await a.setRemoteDescription(b.localDescription)
        deadline = time.monotonic() + 60
        while not (len(remotes) == streams and all(r.frames_received for r in remotes)):
            if time.monotonic() > deadline:
                raise TimeoutError("video not flowing within 60 s")
            await asyncio.sleep(0.1)
        await asyncio.sleep(warmup)
        f0, c0, t0 = sum(r.frames_received for r in remotes), time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        f1, c1, t1 = sum(r.frames_received for r in remotes), time.process_time(), time.monotonic()
        wall = t1 - t0
        counters = {
            "offloaded": sum(p.decoded_offloaded for p in paths),
            "longest_ms": max((p.longest_inline * 1000 for p in paths), default=0.0),
        }
        return (c1 - c0) / wall / streams * 100, (f1 - f0) / wall / streams, counters
    finally:
        for r in remotes:
            await r.stop()
        for p in paths:
            p.close()
        await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)
        await video.stop()


async def main(streams: int, rounds: int, fps: float, warmup: float, seconds: float) -> None:
    results: dict[bool, list[tuple[float, float, dict[str, float]]]] = {False: [], True: []}
    for _ in range(rounds):
        for in_loop in (False, True):
            results[in_loop].append(await run(streams, in_loop, fps, warmup, seconds))
            await asyncio.sleep(0.5)
    print(f"{streams} one-way 640x480 VP8 streams at {fps:g} fps, {rounds} alternating rounds")
    print(f"{'':14} {'cpu/stream':>10} {'frames/s/stream':>16}   rounds")
    for name, key in (("aiortc path", False), ("callkit path", True)):
        cpu = statistics.median(c for c, _, _ in results[key])
        rate = statistics.median(f for _, f, _ in results[key])
        each = " ".join(f"{c:.2f}%" for c, _, _ in results[key])
        print(f"{name:14} {cpu:>9.2f}% {rate:>16.1f}   {each}")
    old = statistics.median(c for c, _, _ in results[False])
    new = statistics.median(c for c, _, _ in results[True])
    offloaded = sum(k["offloaded"] for _, _, k in results[True])
    longest = max(k["longest_ms"] for _, _, k in results[True])
    print(
        f"ratio callkit/aiortc cpu {new / old:.2f}; callkit path: {offloaded:.0f} frames "
        f"decoded in the worker thread, longest decode in the loop {longest:.2f} ms CPU"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--cpu", type=int, default=None, help="the CPU to pin to (default: last)")
    args = parser.parse_args()
    core = pin(args.cpu)
    print(f"pinned to CPU {core}; load average {os.getloadavg()[0]:.2f}")
    asyncio.run(main(args.streams, args.rounds, args.fps, 1.0, args.seconds))
