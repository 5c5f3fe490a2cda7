"""CPU of the audio receive path: aiortc's decoder thread vs callkit's in-loop AudioReceiver.

N one-way Opus streams between aiortc peer connections in one process pinned to one core
(the senders are the same in both runs, so the difference is the receivers'). Each receiver's
audio is metered by callkit's ``RemoteAudio`` (what volume needs), with no sink attached:

* ``aiortc path``: callkit's jitter buffer, then aiortc's decoder thread (PyAV), the per-frame
  hand-off back to the loop, the track queue, and ``RemoteAudio`` reading ``recv()`` and
  converting each ``AudioFrame`` to int16 (callkit before issue 14's receive path);
* ``callkit path``: :class:`callkit.media.receiver.AudioReceiver` (jitter buffer, libopus
  through ctypes into int16, ``RemoteAudio.feed``), all in the event loop, the packets still
  read through aioice's queue and aiortc's DTLS reader task, parser and receiver coroutine;
* ``callkit direct``: the same, the packets taken from the socket by the direct SRTP path and
  the lean audio RTP handler (``icehooks.deliver_directly``, ``_compat.lean_audio_rtp``), as
  callkit's peer sessions do.

The runs alternate (A B C A B C) and the table gives CPU per stream (% of a core), frames
delivered per stream per second (50 = all), and the ratio. First, the per-frame cost of the
two decode paths alone, in one thread with no network (10 s of real Opus packets of a tone):
PyAV decode + ``AudioFrame`` → int16 + meter vs ``AudioReceiver`` (libopus → int16 + meter);
the thread hand-off and queue of aiortc's path come on top of it and show only in the table.

Run from the repo root:  python bench/bench_receive_path.py [--streams 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpCodecParameters
from aiortc.codecs.opus import OpusDecoder
from bench_calls_per_core import LOOPBACK, RawTone, pin

from callkit.media import _compat, icehooks
from callkit.media.jitter import AudioJitterBuffer
from callkit.media.receiver import AudioReceiver
from callkit.media.tracks import RemoteAudio, _audio_to_int16
from callkit.media.volume import LevelMeter

MODES = ("aiortc path", "callkit path", "callkit direct")


async def run(streams: int, mode: str, warmup: float, seconds: float) -> tuple[float, float]:
    """(CPU per stream in % of a core, frames delivered per stream per second)."""
    in_loop = mode != "aiortc path"
    pcs: list[RTCPeerConnection] = []
    remotes: list[RemoteAudio] = []
    paths: list[AudioReceiver] = []

    def on_track(track: Any) -> None:
        remote = RemoteAudio(track)
        remotes.append(remote)
        remote.start()

    try:
        for _ in range(streams):
            a, b = (RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2))
            pcs += [a, b]
            a.addTrack(RawTone())
            b.on("track", on_track)
            icehooks.attach(a, host_addresses=LOOPBACK)
            await a.setLocalDescription(await a.createOffer())
            await b.setRemoteDescription(a.localDescription)
            receiver = b.getReceivers()[0]
            if in_loop:
                path = AudioReceiver(receiver)
                paths.append(path)
                path.sink = remotes[-1].feed  # the track event came with the offer
                _compat.use_jitter_buffer(receiver, path)
            else:
                _compat.use_jitter_buffer(receiver, AudioJitterBuffer())
            icehooks.attach(b, host_addresses=LOOPBACK)
            if mode == "callkit direct":
                icehooks.deliver_directly(b)
                _compat.lean_audio_rtp(receiver)
            await b.setLocalDescription(await b.createAnswer())
            await a.setRemoteDescription(b.localDescription)
        deadline = time.monotonic() + 60
        while not (len(remotes) == streams and all(r.frames_received for r in remotes)):
            if time.monotonic() > deadline:
                raise TimeoutError("audio not flowing within 60 s")
            await asyncio.sleep(0.1)
        await asyncio.sleep(warmup)
        f0, c0, t0 = (
            sum(r.frames_received - r.frames_concealed for r in remotes),
            time.process_time(),
            time.monotonic(),
        )
        await asyncio.sleep(seconds)
        f1, c1, t1 = (
            sum(r.frames_received - r.frames_concealed for r in remotes),
            time.process_time(),
            time.monotonic(),
        )
        wall = t1 - t0
        return (c1 - c0) / wall / streams * 100, (f1 - f0) / wall / streams
    finally:
        for r in remotes:
            await r.stop()
        await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)


class _Packet:
    def __init__(self, seq: int, data: bytes) -> None:
        self.sequence_number, self.timestamp, self.payload_type = seq, seq * 960, 111
        self._data = data


class _Codecs:  # what AudioReceiver asks an aiortc receiver: the codec of payload type 111
    def __init__(self) -> None:
        self._RTCRtpReceiver__codecs = {
            111: RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2)
        }


def per_frame_us(rounds: int) -> tuple[float, float]:
    """Median µs per frame: (PyAV path, callkit path)."""
    codec = av.CodecContext.create("libopus", "w")  # aiortc's encoder settings
    codec.bit_rate, codec.format, codec.layout = 96000, "s16", "stereo"
    codec.sample_rate, codec.time_base = 48000, fractions.Fraction(1, 48000)
    codec.options = {"application": "voip"}
    tone = np.tile(RawTone._period, 3)  # 440 Hz stereo, interleaved: 2400 values a period
    packets: list[bytes] = []
    for i in range(500):
        start = i * 1920 % 2400
        frame = av.AudioFrame.from_ndarray(
            tone[start : start + 1920].reshape(1, -1).copy(), format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts = 48000, i * 960
        packets += [bytes(p) for p in codec.encode(frame)]

    def old() -> float:
        jitter, decoder, meter = AudioJitterBuffer(), OpusDecoder(), LevelMeter()
        t0 = time.perf_counter()
        for i, data in enumerate(packets):
            _, frame = jitter.add(_Packet(i, data))
            for decoded in decoder.decode(frame):
                meter.add(_audio_to_int16(decoded))
        return (time.perf_counter() - t0) / len(packets) * 1e6

    def new() -> float:
        path, meter = AudioReceiver(_Codecs()), LevelMeter()
        path.sink = lambda samples, rate, concealed: meter.add(samples)
        t0 = time.perf_counter()
        for i, data in enumerate(packets):
            path.add(_Packet(i, data))
        return (time.perf_counter() - t0) / len(packets) * 1e6

    runs = [(old(), new()) for _ in range(rounds)]
    return statistics.median(a for a, _ in runs), statistics.median(b for _, b in runs)


async def main(streams: int, rounds: int, warmup: float, seconds: float) -> None:
    old_us, new_us = per_frame_us(5)
    print(
        f"per frame, one thread: PyAV decode + AudioFrame -> int16 + meter {old_us:.1f} us, "
        f"AudioReceiver {new_us:.1f} us, ratio {new_us / old_us:.2f}"
    )
    results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode in MODES:
            results[mode].append(await run(streams, mode, warmup, seconds))
            await asyncio.sleep(0.5)
    cpu = {m: statistics.median(c for c, _ in results[m]) for m in MODES}
    print(f"{streams} one-way streams, median of {rounds} alternating rounds")
    print(f"{'':14} {'cpu/stream':>10} {'frames/s/stream':>16} {'cpu / aiortc':>12}")
    for mode in MODES:
        fps = statistics.median(f for _, f in results[mode])
        ratio = cpu[mode] / cpu["aiortc path"]
        print(f"{mode:14} {cpu[mode]:>9.2f}% {fps:>16.1f} {ratio:>12.2f}")
    print(
        f"ratio callkit direct / callkit path cpu {cpu['callkit direct'] / cpu['callkit path']:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--cpu", type=int, default=None, help="the CPU to pin to (default: last)")
    args = parser.parse_args()
    core = pin(args.cpu)
    print(f"pinned to CPU {core}; load average {os.getloadavg()[0]:.2f}")
    asyncio.run(main(args.streams, args.rounds, 1.0, args.seconds))
