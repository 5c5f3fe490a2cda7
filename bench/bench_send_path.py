"""Per-frame cost of sending one 20 ms audio frame: before vs after the audio-level hook.

For every audio frame, per peer connection, aiortc's RTCRtpSender calls
``rtp.compute_audio_level_dbov(frame)`` on the event loop (a Python loop over all 1920
samples of our stereo frame) and then encodes the frame with Opus in a worker thread.
LocalAudio also meters the frame for the local volume.

before: LocalAudio (as of git 72e1a68) metered the frame (LevelMeter.add) and computed
        its level (audio_level_dbov) in two numpy passes; aiortc's sender recomputed the level with
        its Python loop; Opus encode.
after:  LocalAudio makes one numpy pass for both and attaches the level to the frame
        (frame.opaque = FrameLevel); aiortc's sender gets it back from our replacement of
        compute_audio_level_dbov; Opus encode.

Run from the repo root:  python bench/bench_send_path.py  [peers]
"""

from __future__ import annotations

import fractions
import os
import sys
import timeit
from collections.abc import Callable

import av
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from callkit.media.sources import ToneSource
from callkit.media.tracks import LocalAudio
from callkit.media.volume import (
    aiortc_compute_audio_level_dbov,
    audio_level_dbov,
    compute_audio_level_dbov,
)

RATE = 48000
N = RATE // 50  # 20 ms
TB = fractions.Fraction(1, RATE)


def per_call_us(fn: Callable[[], object]) -> float:
    """Best-of-7 mean cost of ``fn()`` in microseconds."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    return min(timer.repeat(7, number)) / number * 1e6


class _OldLocalAudio(LocalAudio):
    """LocalAudio with the per-frame tick before the change: two numpy passes (meter, then
    the RFC 6464 level) and no level attached to the frame."""

    def _tick(self, deadline: float) -> None:
        n = self.samples_per_frame
        samples = self._converter.read(n) if self._converter is not None else None
        if self._muted or samples is None:
            samples = np.zeros(n, dtype=np.int16)
            self._meter.add_silence(n)
            self.last_level_dbov = 127
        else:
            self._meter.add(samples)
            self.last_level_dbov = audio_level_dbov(samples)
        data = (
            samples.reshape(1, n)
            if self.channels == 1
            else np.repeat(samples, self.channels).reshape(1, n * self.channels)
        )
        pts, rate, tb, layout = self._pts, self.sample_rate, self._time_base, self._layout

        def make(_: int) -> av.AudioFrame:
            frame = av.AudioFrame.from_ndarray(data, format="s16", layout=layout)
            frame.sample_rate = rate
            frame.pts = pts
            frame.time_base = tb
            return frame

        self._push(make)
        self._pts += n
        self.frames_sent += 1


def main() -> None:
    peers = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    opus = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2)
    encoder = get_encoder(opus)

    # -- before: LocalAudio with the tick as it was (git 72e1a68), one subscriber
    old_local = _OldLocalAudio(ToneSource(440, level_dbfs=-20))
    old_track = old_local.subscribe()  # no running loop: no pump; we drive _tick by hand

    def old_tick() -> av.AudioFrame:
        old_local._tick(0.0)
        return old_track._queue.get_nowait()

    # -- after: the real LocalAudio tick, one subscriber
    local = LocalAudio(ToneSource(440, level_dbfs=-20))
    track = local.subscribe()

    def new_tick() -> av.AudioFrame:
        local._tick(0.0)
        return track._queue.get_nowait()

    old_frame, new_frame = old_tick(), new_tick()
    assert -aiortc_compute_audio_level_dbov(old_frame) == 17  # 3 dB off for stereo
    assert -compute_audio_level_dbov(new_frame) == 20

    # Opus encode: the same work before and after; measured once over a pool of real frames
    pool = [new_tick() for _ in range(500)]
    encode_us = (
        min(timeit.repeat(lambda: [encoder.encode(f) for f in pool], number=1, repeat=5))
        / len(pool)
        * 1e6
    )

    rows = {
        "LocalAudio tick (meter + level + frame)": (per_call_us(old_tick), per_call_us(new_tick)),
        "RTP header level, per peer (event loop)": (
            per_call_us(lambda: aiortc_compute_audio_level_dbov(old_frame)),
            per_call_us(lambda: compute_audio_level_dbov(new_frame)),
        ),
        "  (ours without an attached level)": (
            float("nan"),
            per_call_us(lambda: compute_audio_level_dbov(old_frame)),
        ),
        "Opus encode, per peer (worker thread)": (encode_us, encode_us),
    }
    tick_b, tick_a = rows["LocalAudio tick (meter + level + frame)"]
    lvl_b, lvl_a = rows["RTP header level, per peer (event loop)"]
    enc_b, enc_a = rows["Opus encode, per peer (worker thread)"]
    total_b = tick_b + peers * (lvl_b + enc_b)
    total_a = tick_a + peers * (lvl_a + enc_a)
    loop_b = tick_b + peers * lvl_b
    loop_a = tick_a + peers * lvl_a

    print(
        f"Sending one 20 ms 48 kHz stereo s16 frame ({N} samples/channel) to {peers} "
        f"peer connection(s)"
    )
    print(f"{'step':<42}{'before µs':>11}{'after µs':>11}{'ratio':>8}")
    for name, (b, a) in rows.items():
        ratio = f"{b / a:7.1f}x" if b == b and b != a else ""
        b_txt = f"{b:11.1f}" if b == b else f"{'-':>11}"
        print(f"{name:<42}{b_txt}{a:11.1f}{ratio}")
    print(
        f"{'whole send path per frame':<42}{total_b:11.1f}{total_a:11.1f}{total_b / total_a:7.2f}x"
    )
    print(
        f"{'  of which on the event loop':<42}{loop_b:11.1f}{loop_a:11.1f}{loop_b / loop_a:7.1f}x"
    )
    print(
        f"event-loop time per second of audio (50 frames): before {loop_b * 50 / 1000:.1f} "
        f"ms, after {loop_a * 50 / 1000:.1f} ms"
    )
    print(
        f"header level of this -20 dBFS stereo frame: aiortc "
        f"{-aiortc_compute_audio_level_dbov(old_frame)} dBov (3 dB off), ours "
        f"{-compute_audio_level_dbov(new_frame)} dBov"
    )


if __name__ == "__main__":
    main()
