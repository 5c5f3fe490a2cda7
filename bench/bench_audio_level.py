"""Per-frame cost of the RFC 6464 audio level: aiortc's Python loop vs media.volume (numpy).

aiortc's RTCRtpSender calls ``rtp.compute_audio_level_dbov`` on the event loop for every
audio frame it sends (50 per second per peer connection). Run:

    python bench/bench_audio_level.py
"""

from __future__ import annotations

import math
import os
import sys
import timeit

import av
import numpy as np
from aiortc.rtp import compute_audio_level_dbov

RATE = 48000
SAMPLES = RATE // 50  # 20 ms


def make_frame(channels: int) -> av.AudioFrame:
    """A 20 ms 48 kHz packed s16 frame of a -20 dBFS 440 Hz tone."""
    t = np.arange(SAMPLES) / RATE
    mono = np.rint(32767 * 0.1 * math.sqrt(2) * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    data = np.repeat(mono, channels).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(
        data, format="s16", layout="mono" if channels == 1 else "stereo"
    )
    frame.sample_rate = RATE
    return frame


def per_call_us(fn, arg) -> float:
    """Best-of-5 mean cost of ``fn(arg)`` in microseconds."""
    timer = timeit.Timer(lambda: fn(arg))
    number, _ = timer.autorange()
    return min(timer.repeat(5, number)) / number * 1e6


def main() -> None:
    """Print the per-frame cost for mono and stereo frames."""
    # runnable as `python bench/bench_audio_level.py` from the repo root, uninstalled
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from callkit.media.volume import audio_level_dbov

    print(f"RFC 6464 level of one 20 ms {RATE} Hz s16 frame ({SAMPLES} samples per channel)")
    print(
        f"{'layout':<8}{'aiortc µs':>12}{'ours(frame) µs':>16}{'ours(ndarray) µs':>18}"
        f"{'speed-up':>10}   levels aiortc/ours"
    )
    for channels in (1, 2):
        frame = make_frame(channels)
        arr = frame.to_ndarray()
        a = per_call_us(compute_audio_level_dbov, frame)
        b = per_call_us(audio_level_dbov, frame)
        c = per_call_us(audio_level_dbov, arr)
        name = "mono" if channels == 1 else "stereo"
        print(
            f"{name:<8}{a:>12.1f}{b:>16.1f}{c:>18.1f}{a / b:>9.1f}x   "
            f"{-compute_audio_level_dbov(frame)}/{audio_level_dbov(frame)}"
        )
    print(
        "(speed-up = aiortc / ours on the same av.AudioFrame; stereo levels differ because "
        "aiortc divides both channels' energy by the per-channel sample count)"
    )


if __name__ == "__main__":
    main()
