"""Synthetic media sources: pull-based generators with no pacing of their own.

Audio sources hand out int16 samples (``read(n)`` -> shape ``(n, channels)``); video sources
hand out ``av.VideoFrame`` objects (``read()``). Real-time pacing, resampling and fan-out to
peer connections live in :mod:`media.tracks`. Sources are cheap to read and never block.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
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
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or not lo <= int(value) <= hi
    ):
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


def _check_real(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
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

    When the tone repeats exactly after at most ``MAX_TABLE`` samples (any whole number of Hz
    does: 440 Hz at 48 kHz repeats every 1200 samples), one period is computed once per
    frequency/level change and reads are slices of it; other frequencies compute the sine
    on each read. Both give the same samples (within 1 LSB of rounding).
    """

    #: longest period, in samples, kept as a precomputed table (one second at 48 kHz)
    MAX_TABLE = 48000
    #: reads up to this many samples are one slice of the (repeated) table
    _SLICE = 9600

    def __init__(
        self,
        freq: float = 440.0,
        level_dbfs: float = -20.0,
        sample_rate: int = 48000,
        channels: int = 1,
    ) -> None:
        super().__init__(sample_rate, channels)
        self._phase = 0.0
        self._freq = 0.0
        self._level = 0.0
        self._amplitude = 0.0
        #: one period (repeated) of the current tone starting at ``_phase``, or None
        self._table: np.ndarray | None = None
        self._period = 0
        self._index = 0  # samples read since ``_table`` was built, modulo its period
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
            raise ValueError(
                f"freq must be below sample_rate/2 ({self.sample_rate / 2}), got {value!r}"
            )
        self._sync_phase()
        self._freq = v

    @property
    def level_dbfs(self) -> float:
        """RMS level of the tone in dBFS (<= 0 is meaningful; -inf is silence)."""
        return self._level

    @level_dbfs.setter
    def level_dbfs(self, value: float) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or math.isnan(value)
            or value > 20.0
        ):
            raise ValueError(f"level_dbfs must be a number <= 20 (or -inf), got {value!r}")
        self._sync_phase()
        self._level = float(value)
        amp = 0.0 if math.isinf(self._level) else 32767.0 * 10 ** (self._level / 20) * math.sqrt(2)
        self._amplitude = min(amp, 32767.0)

    def _sync_phase(self) -> None:
        """Fold the samples read from the table into ``_phase`` and drop the table (before
        the frequency or the level changes)."""
        if self._table is not None:
            step = _TWO_PI * self._freq / self.sample_rate
            self._phase = (self._phase + step * self._index) % _TWO_PI
            self._table, self._index = None, 0

    def _build_table(self) -> np.ndarray | None:
        period = (Fraction(self._freq) / self.sample_rate).denominator
        if period > self.MAX_TABLE:
            return None
        reps = -(-(period + self._SLICE) // period)  # so that any slice of _SLICE fits
        mono = self._sine(self._phase, period)
        self._period = period
        return np.ascontiguousarray(np.tile(mono, reps)[:, None].repeat(self.channels, axis=1))

    def _sine(self, phase: float, n: int) -> np.ndarray:
        step = _TWO_PI * self._freq / self.sample_rate
        return np.rint(
            self._amplitude * np.sin(phase + step * np.arange(n, dtype=np.float64))
        ).astype(np.int16)

    def read(self, n: int) -> np.ndarray:
        """Return the next ``n`` samples of the tone."""
        n = max(0, int(n))
        if self._table is None:
            self._table = self._build_table()
            self._index = 0
        table = self._table
        if table is None:  # no short period: compute this read
            step = _TWO_PI * self._freq / self.sample_rate
            mono = self._sine(self._phase, n)
            self._phase = (self._phase + step * n) % _TWO_PI
            if self.channels == 1:
                return mono.reshape(n, 1)
            return np.repeat(mono[:, None], self.channels, axis=1)
        start = self._index
        self._index = (start + n) % self._period
        if start + n <= table.shape[0]:
            return table[start : start + n].copy()
        return table[np.arange(start, start + n) % self._period]

    def __repr__(self) -> str:
        return (
            f"ToneSource(freq={self._freq}, level_dbfs={self._level}, "
            f"sample_rate={self.sample_rate}, channels={self.channels})"
        )


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


# 75 % colour bars: white, yellow, cyan, green, magenta, red, blue, black
_BAR_RGB = np.array(
    [
        [191, 191, 191],
        [191, 191, 0],
        [0, 191, 191],
        [0, 191, 0],
        [191, 0, 191],
        [191, 0, 0],
        [0, 0, 191],
        [0, 0, 0],
    ],
    dtype=np.float64,
)


def _rgb_to_yuv601(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range Y, U, V (uint8) of RGB rows (0..255), as swscale does by default."""
    r, g, b = (rgb / 255.0).T
    y = 16 + 219 * (0.299 * r + 0.587 * g + 0.114 * b)
    u = 128 + 224 * (-0.168736 * r - 0.331264 * g + 0.5 * b)
    v = 128 + 224 * (0.5 * r - 0.418688 * g - 0.081312 * b)
    return np.rint(np.stack([y, u, v], axis=1)).astype(np.uint8)


_BAR_YUV = _rgb_to_yuv601(_BAR_RGB)
_Y_GREY, _Y_ON, _Y_OFF, _C_NEUTRAL = 126, 235, 16, 128


class TestPatternSource(VideoSource):
    """Moving colour bars with the frame counter drawn as a row of black/white blocks.

    The bars scroll left to right, one full width every 4 seconds of frames. The counter
    (``COUNTER_BITS`` bits, most significant first) sits in the top-left corner on a grey
    strip; read it back from a decoded frame with :meth:`decode_counter` (the blocks are
    large enough to survive VP8 at small resolutions).

    Frames are generated directly in yuv420p (the format aiortc's encoders use), from cached
    rows with numpy: no colour conversion per frame, here or in the encoders.
    """

    __test__ = False  # not a pytest test class, despite the name

    COUNTER_BITS = 16

    def __init__(self, width: int = 320, height: int = 240, fps: float = 15) -> None:
        super().__init__(width, height, fps)
        if self.width < self.COUNTER_BITS + 2:
            raise ValueError(
                f"width must be at least {self.COUNTER_BITS + 2} to hold the "
                f"frame counter, got {width!r}"
            )
        self.frames_read = 0
        w = self.width
        bar = np.arange(w) * len(_BAR_YUV) // w
        self._y_row = np.ascontiguousarray(_BAR_YUV[bar, 0])
        self._u_row = np.ascontiguousarray(_BAR_YUV[bar[::2], 1])
        self._v_row = np.ascontiguousarray(_BAR_YUV[bar[::2], 2])
        self._block = self._block_size(self.width, self.height)

    @classmethod
    def _block_size(cls, width: int, height: int) -> int:
        return max(1, min(width // (cls.COUNTER_BITS + 2), height // 4, 16))

    def pattern(self, index: int) -> np.ndarray:
        """Frame number ``index`` as a yuv420p array of shape (height*3/2, width).

        This is the layout ``av.VideoFrame.from_ndarray(arr, format="yuv420p")`` takes:
        the Y plane, then the U and V planes flattened.
        """
        h, w = self.height, self.width
        buf = np.empty((h * 3 // 2, w), dtype=np.uint8)
        chroma = buf[h:].reshape(2, h // 2, w // 2)
        self._draw(index, buf[:h], chroma[0], chroma[1])
        return buf

    def _draw(self, index: int, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        """Draw frame ``index`` into the Y (h, w), U and V (h/2, w/2) planes."""
        w, b, bits = self.width, self._block, self.COUNTER_BITS
        # an even shift keeps the chroma (half horizontal resolution) aligned with luma
        shift = 2 * round(index * w / (8.0 * self.fps)) % w
        y[:] = np.roll(self._y_row, shift)
        u[:] = np.roll(self._u_row, shift // 2)
        v[:] = np.roll(self._v_row, shift // 2)
        # grey strip with a one-block margin, then blocks: white = 1, black = 0
        y[: 3 * b, : (bits + 2) * b] = _Y_GREY
        ch, cw = (3 * b + 1) // 2, ((bits + 2) * b + 1) // 2
        u[:ch, :cw] = _C_NEUTRAL
        v[:ch, :cw] = _C_NEUTRAL
        value = index & ((1 << bits) - 1)
        on = (value >> np.arange(bits - 1, -1, -1)) & 1
        y[b : 2 * b, b : (bits + 1) * b] = np.repeat(np.where(on, _Y_ON, _Y_OFF), b).astype(
            np.uint8
        )

    def read(self) -> av.VideoFrame:
        """Return the next frame (yuv420p) and advance the counter."""
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        y, u, v = (
            np.frombuffer(memoryview(p), dtype=np.uint8).reshape(p.height, p.line_size)[
                :, : p.width
            ]
            for p in frame.planes
        )
        self._draw(self.frames_read, y, u, v)
        self.frames_read += 1
        return frame

    @classmethod
    def decode_counter(cls, frame: av.VideoFrame | np.ndarray) -> int:
        """Read the frame counter back from a (possibly encoded and decoded) pattern frame.

        ``frame`` is an ``av.VideoFrame`` of any format, an RGB array (h, w, 3) or a luma
        array (h, w). The value is taken modulo ``2**COUNTER_BITS``.
        """
        if isinstance(frame, np.ndarray):
            luma = frame.mean(axis=-1) if frame.ndim == 3 else frame
        elif frame.format.name in ("yuv420p", "yuvj420p"):
            luma = frame.to_ndarray()[: frame.height]
        else:
            luma = frame.reformat(format="gray").to_ndarray()
        h, w = luma.shape[:2]
        b = cls._block_size(w, h)
        centres = b + b * np.arange(cls.COUNTER_BITS) + b // 2
        bits = (np.asarray(luma[b + b // 2, centres], dtype=np.float64) > 128).astype(np.int64)
        return int(np.dot(bits, 1 << np.arange(cls.COUNTER_BITS - 1, -1, -1)))
