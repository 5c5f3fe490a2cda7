"""Conversions shared by devices, files and bots: PCM format, a sample FIFO, frame helpers.

:class:`PcmConverter` turns int16 (or float) samples of any rate and channel count into
int16 ``(n, channels)`` at one output rate (numpy for channels, libswresample for the rate).
:class:`SampleFifo` is a bounded, thread-safe FIFO of samples (numpy ring buffer) for the
hand-over between an audio device's callback thread and the event loop.
:func:`black_frame` and :func:`fresh_frame` serve the video sources.
"""

from __future__ import annotations

import threading
from typing import Any

import av
import numpy as np

__all__ = [
    "PcmConverter",
    "SampleFifo",
    "as_int16",
    "black_frame",
    "fresh_frame",
    "remix",
]


def as_int16(samples: Any) -> np.ndarray:
    """``samples`` as int16 of shape (n, channels): 1-D means mono; floats are in [-1, 1]."""
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    elif x.ndim != 2:
        raise ValueError(f"samples must have shape (n,) or (n, channels), got {x.shape}")
    if x.dtype.kind == "f":
        x = np.clip(np.rint(x * 32767.0), -32768, 32767).astype(np.int16)
    elif x.dtype != np.int16:
        if x.dtype.kind not in "iu":
            raise ValueError(f"samples must be int16 or float, got dtype {x.dtype}")
        x = np.clip(x, -32768, 32767).astype(np.int16)
    return x


def remix(x: np.ndarray, channels: int) -> np.ndarray:
    """int16 (n, c) -> int16 (n, channels): average to mono, or repeat mono, as needed."""
    c = x.shape[1]
    if c == channels:
        return x
    if c > 1:
        x = np.rint(x.mean(axis=1, dtype=np.float64)).astype(np.int16).reshape(-1, 1)
    if channels == 1:
        return x
    return np.repeat(x, channels, axis=1)


class PcmConverter:
    """Converts chunks of samples to int16 ``(n, channels)`` at ``sample_rate``.

    Input chunks may change rate between calls (the resampler is rebuilt); its state carries
    over between chunks of one rate, so a stream of chunks resamples seamlessly. Channels are
    converted first (mean to mono, or repeat mono).
    """

    def __init__(self, sample_rate: int = 48000, channels: int = 1) -> None:
        if not 1 <= int(channels) <= 8:
            raise ValueError(f"channels must be in [1, 8], got {channels!r}")
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self._in_rate: int | None = None
        self._resampler: av.AudioResampler | None = None

    def convert(self, samples: Any, sample_rate: int) -> np.ndarray:
        """Return ``samples`` (recorded at ``sample_rate``) converted; may be empty."""
        x = as_int16(samples)
        sample_rate = int(sample_rate)
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate!r}")
        if sample_rate == self.sample_rate:
            self._in_rate, self._resampler = sample_rate, None
            return remix(x, self.channels)
        # resample mono or stereo with libswresample, then fan out to the wanted channels
        work = 1 if self.channels == 1 else 2
        x = remix(x, work)
        if self._resampler is None or self._in_rate != sample_rate:
            self._in_rate = sample_rate
            self._resampler = av.AudioResampler(
                format="s16", layout="mono" if work == 1 else "stereo", rate=self.sample_rate
            )
        if not len(x):
            return np.zeros((0, self.channels), dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(x).reshape(1, -1),
            format="s16",
            layout="mono" if work == 1 else "stereo",
        )
        frame.sample_rate = sample_rate
        out = [f.to_ndarray().reshape(-1, work) for f in self._resampler.resample(frame)]
        y = np.concatenate(out) if out else np.zeros((0, work), dtype=np.int16)
        return remix(y, self.channels) if work != self.channels else y


class SampleFifo:
    """A bounded FIFO of int16 frames ``(n, channels)``; thread-safe; oldest dropped when full.

    ``read(n)`` always returns ``n`` samples, zero-filled on underrun. With ``prebuffer`` > 0,
    after running dry the FIFO plays silence until that many samples are queued again, so a
    stream that arrives in bursts plays in whole pieces instead of crackling.
    """

    def __init__(self, capacity: int, channels: int = 1, *, prebuffer: int = 0) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity!r}")
        self.capacity = int(capacity)
        self.channels = int(channels)
        self.prebuffer = min(int(prebuffer), self.capacity)
        self._buf = np.zeros((self.capacity, self.channels), dtype=np.int16)
        self._start = 0
        self._size = 0
        self._primed = self.prebuffer == 0
        self._lock = threading.Lock()
        self.dropped = 0
        """Samples dropped because the FIFO was full."""
        self.underruns = 0
        """Reads that found fewer samples queued than asked for."""

    def __len__(self) -> int:
        return self._size

    def write(self, samples: np.ndarray) -> None:
        """Append int16 ``(n, channels)`` samples, dropping the oldest if over capacity."""
        x = samples
        n = len(x)
        if n == 0:
            return
        cap = self.capacity
        with self._lock:
            if n >= cap:
                self.dropped += self._size + n - cap
                x, n = x[n - cap :], cap
                self._start, self._size = 0, 0
            over = self._size + n - cap
            if over > 0:
                self.dropped += over
                self._start = (self._start + over) % cap
                self._size -= over
            end = (self._start + self._size) % cap
            first = min(n, cap - end)
            self._buf[end : end + first] = x[:first]
            if first < n:
                self._buf[: n - first] = x[first:]
            self._size += n
            if not self._primed and self._size >= self.prebuffer:
                self._primed = True

    def read(self, n: int) -> np.ndarray:
        """Take ``n`` samples (zero-filled after the queued ones)."""
        out = np.zeros((n, self.channels), dtype=np.int16)
        self.read_into(out)
        return out

    def read_into(self, out: np.ndarray) -> int:
        """Fill ``out`` (shape (n, channels)) from the FIFO; returns how many were queued."""
        n = len(out)
        cap = self.capacity
        with self._lock:
            if not self._primed:
                out[:] = 0
                return 0
            got = min(n, self._size)
            first = min(got, cap - self._start)
            out[:first] = self._buf[self._start : self._start + first]
            if first < got:
                out[first:got] = self._buf[: got - first]
            out[got:] = 0
            self._start = (self._start + got) % cap
            self._size -= got
            if got < n:
                self.underruns += 1
                if self.prebuffer:
                    self._primed = False
            return got

    def clear(self) -> None:
        """Drop everything queued."""
        with self._lock:
            self._start = self._size = 0
            self._primed = self.prebuffer == 0


def black_frame(width: int, height: int) -> av.VideoFrame:
    """A black yuv420p frame (limited range: Y=16, U=V=128)."""
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane, value in zip(frame.planes, (16, 128, 128), strict=True):
        np.frombuffer(memoryview(plane), dtype=np.uint8)[:] = value
    return frame


def fresh_frame(frame: av.VideoFrame) -> av.VideoFrame:
    """A new yuv420p frame object with a copy of ``frame``'s pixels.

    The engine stamps ``pts`` on every frame a source returns, so a source that repeats an
    image must hand out a new object each time.
    """
    return av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
