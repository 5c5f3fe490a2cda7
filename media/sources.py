"""Synthetic media sources: pull-based generators with no pacing of their own.

Audio sources hand out int16 samples (``read(n)`` -> shape ``(n, channels)``); video sources
hand out ``av.VideoFrame`` objects (``read()``). Real-time pacing, resampling and fan-out to
peer connections live in :mod:`media.tracks`. Sources are cheap to read and never block.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import av
import numpy as np

__all__ = [
    "AudioSource",
    "SilenceSource",
    "TestPatternSource",
    "ToneSource",
    "VideoSource",
]

_TWO_PI = 2.0 * math.pi


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


def _check_real(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")  # noqa: TRY004 (documented)
    v = float(value)
    if math.isnan(v) or v > hi or v < lo or (lo_open and v == lo):
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise ValueError(f"{name} must be in {bound}, got {value!r}")
    return v


class AudioSource:
    """Base class of audio sources: ``read(n)`` returns the next ``n`` samples.

    Subclasses set ``sample_rate`` and ``channels`` and implement ``read``; the result is an
    int16 array of shape ``(n, channels)``.
    """

    sample_rate: int = 48000
    channels: int = 1

    def __init__(self, sample_rate: int = 48000, channels: int = 1) -> None:
        self.sample_rate = _check_int("sample_rate", sample_rate, 8000, 384000)
        self.channels = _check_int("channels", channels, 1, 8)
        self.closed = False

    def read(self, n: int) -> np.ndarray:
        """Return the next ``n`` samples as int16 of shape ``(n, channels)``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release resources; further reads are not expected. Idempotent."""
        self.closed = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sample_rate={self.sample_rate}, channels={self.channels})"


class SilenceSource(AudioSource):
    """Digital silence."""

    def read(self, n: int) -> np.ndarray:
        """Return ``n`` zero samples."""
        return np.zeros((max(0, int(n)), self.channels), dtype=np.int16)


class ToneSource(AudioSource):
    """A sine tone whose RMS level is ``level_dbfs``; phase-continuous across reads.

    The amplitude is ``32767 * 10**(level_dbfs/20) * sqrt(2)``, clipped to 32767 (so levels
    above about -3 dBFS saturate). ``freq`` and ``level_dbfs`` may be changed at any time,
    e.g. mid-call; the waveform stays continuous. All channels carry the same tone.
    ``level_dbfs=-inf`` gives silence.
    """

    def __init__(self, freq: float = 440.0, level_dbfs: float = -20.0,
                 sample_rate: int = 48000, channels: int = 1) -> None:
        super().__init__(sample_rate, channels)
        self._phase = 0.0
        self.freq = freq
        self.level_dbfs = level_dbfs

    @property
    def freq(self) -> float:
        """Tone frequency in Hz, in (0, sample_rate/2)."""
        return self._freq

    @freq.setter
    def freq(self, value: float) -> None:
        v = _check_real("freq", value, 0.0, self.sample_rate / 2, lo_open=True)
        if v >= self.sample_rate / 2:
            raise ValueError(f"freq must be below sample_rate/2 ({self.sample_rate / 2}), "
                             f"got {value!r}")
        self._freq = v

    @property
    def level_dbfs(self) -> float:
        """RMS level of the tone in dBFS (<= 0 is meaningful; -inf is silence)."""
        return self._level

    @level_dbfs.setter
    def level_dbfs(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) \
                or value > 20.0:
            raise ValueError(f"level_dbfs must be a number <= 20 (or -inf), got {value!r}")
        self._level = float(value)
        amp = 0.0 if math.isinf(self._level) else 32767.0 * 10 ** (self._level / 20) * math.sqrt(2)
        self._amplitude = min(amp, 32767.0)

    def read(self, n: int) -> np.ndarray:
        """Return the next ``n`` samples of the tone."""
        n = max(0, int(n))
        step = _TWO_PI * self._freq / self.sample_rate
        phase = self._phase + step * np.arange(n, dtype=np.float64)
        self._phase = (self._phase + step * n) % _TWO_PI
        mono = np.rint(self._amplitude * np.sin(phase)).astype(np.int16)
        if self.channels == 1:
            return mono.reshape(n, 1)
        return np.repeat(mono[:, None], self.channels, axis=1)

    def __repr__(self) -> str:
        return (f"ToneSource(freq={self._freq}, level_dbfs={self._level}, "
                f"sample_rate={self.sample_rate}, channels={self.channels})")


class VideoSource:
    """Base class of video sources: ``read()`` returns the next ``av.VideoFrame``.

    ``width``, ``height`` and ``fps`` describe the frames; the caller sets timestamps.
    """

    width: int
    height: int
    fps: float

    def __init__(self, width: int = 320, height: int = 240, fps: float = 15) -> None:
        self.width = _check_int("width", width, 16, 4096)
        self.height = _check_int("height", height, 16, 4096)
        if self.width % 2 or self.height % 2:
            raise ValueError(f"width and height must be even (yuv420p), got {width}x{height}")
        self.fps = _check_real("fps", fps, 0.0, 120.0, lo_open=True)
        self.closed = False

    def read(self) -> av.VideoFrame:
        """Return the next frame (no pts set)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release resources. Idempotent."""
        self.closed = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(width={self.width}, height={self.height}, fps={self.fps})"


# SMPTE-like bars: white, yellow, cyan, green, magenta, red, blue, black
_BAR_COLOURS = np.array([
    [235, 235, 235], [235, 235, 16], [16, 235, 235], [16, 235, 16],
    [235, 16, 235], [235, 16, 16], [16, 16, 235], [16, 16, 16],
], dtype=np.uint8)


class TestPatternSource(VideoSource):
    """Moving colour bars with the frame counter drawn as a row of black/white blocks.

    The bars scroll left to right, one full width every 4 seconds of frames. The counter
    (``COUNTER_BITS`` bits, most significant first) sits in the top-left corner on a grey
    strip; read it back from a decoded frame with :meth:`decode_counter` (the blocks are
    large enough to survive VP8 at small resolutions).
    """

    __test__ = False  # not a pytest test class, despite the name

    COUNTER_BITS = 16

    def __init__(self, width: int = 320, height: int = 240, fps: float = 15) -> None:
        super().__init__(width, height, fps)
        self.frames_read = 0
        bar = np.arange(self.width) * len(_BAR_COLOURS) // self.width
        self._base = np.ascontiguousarray(
            np.broadcast_to(_BAR_COLOURS[bar][None, :, :], (self.height, self.width, 3)))
        self._block = self._block_size(self.width, self.height)

    @classmethod
    def _block_size(cls, width: int, height: int) -> int:
        return max(1, min(width // (cls.COUNTER_BITS + 2), height // 4, 16))

    def pattern(self, index: int) -> np.ndarray:
        """The rgb24 array (height, width, 3) of frame number ``index``."""
        shift = round(index * self.width / (4.0 * self.fps)) % self.width
        arr = np.roll(self._base, shift, axis=1)
        b = self._block
        bits = self.COUNTER_BITS
        # grey strip with a block margin, then blocks: white = 1, black = 0
        arr[: 3 * b, : (bits + 2) * b] = 128
        value = index & ((1 << bits) - 1)
        on = (value >> np.arange(bits - 1, -1, -1)) & 1
        row = np.repeat(np.where(on, 255, 0).astype(np.uint8), b)
        arr[b:2 * b, b:(bits + 1) * b] = row[None, :, None]
        return arr

    def read(self) -> av.VideoFrame:
        """Return the next frame (rgb24) and advance the counter."""
        arr = self.pattern(self.frames_read)
        self.frames_read += 1
        return av.VideoFrame.from_ndarray(arr, format="rgb24")

    @classmethod
    def decode_counter(cls, frame: av.VideoFrame | np.ndarray) -> int:
        """Read the frame counter back from a (possibly decoded) pattern frame.

        The value is taken modulo ``2**COUNTER_BITS``.
        """
        if isinstance(frame, np.ndarray):
            arr = frame
        else:
            arr = frame.to_ndarray(format="rgb24")
        h, w = arr.shape[:2]
        b = cls._block_size(w, h)
        centres = b + b * np.arange(cls.COUNTER_BITS) + b // 2
        lum = arr[b + b // 2, centres].astype(np.int32)
        lum = lum.mean(axis=-1) if lum.ndim == 2 else lum
        bits = (lum > 128).astype(np.int64)
        return int(np.dot(bits, 1 << np.arange(cls.COUNTER_BITS - 1, -1, -1)))
